"""One self-contained HTML page: every table sortable by clicking a header (a few lines of
inline JavaScript), the pairwise comparison matrix under each table, plots embedded as
``data:`` URIs, no external resource of any kind."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from cmbbench.leaderboard.plots import plotting_version
from cmbbench.leaderboard.render_md import (
    LEGEND,
    froc_line,
    order_line,
    rankings_line,
    rule_line,
)
from cmbbench.leaderboard.significance import ALPHA, significance_text
from cmbbench.leaderboard.table import Table, display_cells, display_headers, fmt, interval_text
from cmbbench.scoring.metrics import EDGE_CASE_POLICY

SORT_SCRIPT = """\
function sortTable(th) {
  const table = th.closest("table"), body = table.tBodies[0];
  const col = Array.from(th.parentNode.children).indexOf(th);
  const asc = th.dataset.dir !== "asc";
  th.parentNode.querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? "asc" : "desc";
  const key = tr => {
    const v = tr.children[col].dataset.v;
    return v === "" ? null : (isNaN(Number(v)) ? v : Number(v));
  };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return asc ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll("table.lb th").forEach(th => th.addEventListener("click", () => sortTable(th)));
"""

STYLE = """\
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 110em; color: #222; }
table.lb { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
table.lb th, table.lb td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; }
table.lb td:nth-child(2), table.lb td:nth-child(3), table.lb td:nth-child(4) { text-align: left; }
table.lb th { background: #f0f0f0; cursor: pointer; user-select: none; }
table.lb th[data-dir="asc"]::after { content: " \\25B2"; }
table.lb th[data-dir="desc"]::after { content: " \\25BC"; }
table.pairs { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0 1em; }
table.pairs th, table.pairs td { border: 1px solid #ddd; padding: 0.2em 0.4em; text-align: right; }
table.pairs th { background: #f6f6f6; font-weight: normal; }
table.pairs td.sig { font-weight: bold; background: #eef5ee; }
.policy { background: #fafafa; border-left: 3px solid #999; padding: 0.2em 1em; font-size: 0.9em; }
img { max-width: 48em; display: block; margin: 1em 0; }
"""


def _inline(text: str) -> str:
    """Escape HTML, then the few Markdown marks our texts use: **b**, `code`, *em*."""
    t = html.escape(text, quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return re.sub(r"(?<![\w*])\*(\S[^*]*?)\*(?![\w*])", r"<em>\1</em>", t)


def markdown_block(text: str) -> str:
    """Paragraphs and ``- `` bullet lists (continuation lines indented) to HTML."""
    out: list[str] = []
    items: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.strip().splitlines():
        if line.startswith("- "):
            if para:
                flush()
            items.append(line[2:].strip())
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
        elif not line.strip():
            flush()
        else:
            if items:
                flush()
            para.append(line.strip())
    flush()
    return "\n".join(out)


def _value_attr(v: float | str | None) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 9))
    return html.escape(str(v))


def pairs_html(table: Table) -> str:
    """The pairwise matrix of a table: cell (row, column) = ΔF1 (row - column) and the
    Holm-adjusted paired bootstrap p; the interval and the raw p in the cell's title."""
    r = table.rankings
    if r is None or len(table.rows) < 2:
        return ""
    labels = [f"{k} {row.model}" for k, row in enumerate(table.rows, start=1)]
    head = "".join(f"<th>{html.escape(x)}</th>" for x in labels)
    body = []
    for a, label in enumerate(labels):
        tds = []
        for b in range(len(labels)):
            pair = r.pair(a, b)
            if pair is None:
                tds.append("<td>—</td>")
                continue
            d = r.diff(a, b)
            diff = "n/a" if d is None else f"{d:+.3f}"
            ci = pair.ci if a < b or pair.ci is None else [-pair.ci[1], -pair.ci[0]]
            title = (
                f"ΔF1 ({labels[a]} − {labels[b]}) {diff}, 95% CI {interval_text(ci)}, "
                f"bootstrap p {fmt(pair.p)}, Holm p {fmt(pair.p_holm)}"
            )
            sig = pair.p_holm is not None and pair.p_holm < ALPHA
            text = f"{diff}<br>p={fmt(pair.p_holm)}"
            cls = ' class="sig"' if sig else ""
            tds.append(f'<td{cls} title="{html.escape(title)}">{text}</td>')
        body.append(f"<tr><th>{html.escape(label)}</th>{''.join(tds)}</tr>")
    caption = (
        "Pairwise comparisons: ΔF1 pooled (row − column) and the paired bootstrap p, "
        f"Holm-adjusted over the {len(r.pairs)} pairs (bold: p < {ALPHA:g}; hover a cell for "
        "its 95% interval and the unadjusted p)."
    )
    return (
        f"<p>{html.escape(caption)}</p>\n"
        f'<table class="pairs"><thead><tr><th></th>{head}</tr></thead><tbody>\n'
        + "\n".join(body)
        + "\n</tbody></table>"
    )


def render_table_html(table: Table, images: Mapping[str, Path] | None = None) -> str:
    """The HTML section of one table; ``images`` maps a caption to a PNG file to embed."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in display_headers(table))
    body = []
    for rank, row in enumerate(table.rows, start=1):
        cells = display_cells(rank, row, significance_text(row), table)
        tds = "".join(
            f'<td data-v="{_value_attr(v)}">{html.escape(text)}</td>' for text, v in cells
        )
        body.append(f"<tr>{tds}</tr>")
    parts = [
        f"<h2>{html.escape(table.key.title)}</h2>",
        markdown_block(rule_line(table)),
        markdown_block(rankings_line(table)),
        markdown_block(froc_line(table)),
        markdown_block(order_line(table)),
        f'<div class="policy">{markdown_block(EDGE_CASE_POLICY)}</div>',
        f'<table class="lb"><thead><tr>{head}</tr></thead><tbody>',
        *body,
        "</tbody></table>",
        markdown_block(LEGEND),
        pairs_html(table),
    ]
    for caption, path in (images or {}).items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">')
    return "\n".join(parts)


def render_html(
    tables: Sequence[Table], images: Mapping[str, Mapping[str, Path]] | None = None
) -> str:
    """The whole page; ``images[slug]`` holds the PNGs of table ``slug``."""
    sections = [render_table_html(t, (images or {}).get(t.key.slug)) for t in tables]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>cmbbench leaderboard</title>\n"
        f"<style>\n{STYLE}</style>\n</head>\n<body>\n<h1>cmbbench leaderboard</h1>\n"
        "<p>Generated by <code>cmbbench leaderboard</code> from the run records alone. "
        "Click a column header to sort.</p>\n"
        f"<p>Plots drawn with {html.escape(plotting_version())}.</p>\n"
        + "\n".join(sections)
        + f"\n<script>\n{SORT_SCRIPT}</script>\n</body>\n</html>\n"
    )
