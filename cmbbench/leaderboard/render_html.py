"""One self-contained HTML page: every table sortable by clicking a header (a few lines of
inline JavaScript), compact cells (a value, its interval as a small inline bar and, with the
spread over seeds, in the cell's hover title), a forest plot of F1 and CPM per table (inline
SVG, :func:`cmbbench.leaderboard.plots.forest_svg`), the pairwise comparison matrix under each
table, plots embedded as ``data:`` URIs, no external resource of any kind (not even a
favicon request)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from cmbbench.leaderboard.plots import cpm_missing, forest_svg, plotting_version
from cmbbench.leaderboard.render_md import (
    LEGEND,
    froc_line,
    notes_block,
    order_line,
    rankings_line,
    rule_line,
)
from cmbbench.leaderboard.significance import ALPHA, significance_text
from cmbbench.leaderboard.table import (
    METRICS,
    TIMINGS,
    WITH_CI,
    Row,
    Stat,
    Table,
    display_cells,
    display_headers,
    fmt,
    fmt_rank,
    interval_text,
)
from cmbbench.scoring.froc import FP_RATES
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
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; line-height: 1.4; }
p, ul { max-width: 75em; }
.scroll { overflow-x: auto; }
table.lb { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0; white-space: nowrap;
  font-variant-numeric: tabular-nums; }
table.lb th, table.lb td { border: 1px solid #ccc; padding: 0.25em 0.35em; text-align: right; }
table.lb th { background: #f0f0f0; cursor: pointer; user-select: none; white-space: normal;
  vertical-align: bottom; }
table.lb th:hover { background: #e4e4e4; }
table.lb th[data-dir="asc"]::after { content: "\\00a0\\25B2"; }
table.lb th[data-dir="desc"]::after { content: "\\00a0\\25BC"; }
table.lb tbody tr:nth-child(even) { background: #fafafa; }
table.lb tbody tr:hover { background: #eef4fb; }
table.lb td.txt, table.lb th.txt { text-align: left; }
table.lb td[title] { cursor: help; }
.clip { display: inline-block; max-width: 10em; overflow: hidden; text-overflow: ellipsis;
  vertical-align: bottom; }
.bar { display: inline-block; position: relative; width: 3em; height: 0.55em;
  margin-left: 0.35em; background: #e8e8e8; border-radius: 2px; vertical-align: middle; }
.bar .ci { position: absolute; top: 0; bottom: 0; background: #9dbbe0; border-radius: 2px; }
.bar .pt { position: absolute; top: -0.15em; bottom: -0.15em; width: 2px; margin-left: -1px;
  background: #1f4e89; }
.sub { color: #666; font-size: 0.9em; }
.na { color: #888; font-style: italic; }
table.pairs { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0 1em; }
table.pairs th, table.pairs td { border: 1px solid #ddd; padding: 0.2em 0.4em; text-align: right; }
table.pairs th { background: #f6f6f6; font-weight: normal; }
table.pairs td.sig { font-weight: bold; background: #eef5ee; }
details.policy { background: #fafafa; border-left: 3px solid #999; padding: 0.3em 1em;
  font-size: 0.9em; margin: 0.5em 0; }
details.policy summary { cursor: pointer; font-weight: bold; }
svg.forest { display: block; margin: 0.5em 0 0.2em; font-family: system-ui, sans-serif; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots img { max-width: 48em; display: block; }
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


def _bar(value: float | None, ci: Sequence[float] | None) -> str:
    """A small inline bar on a 0–1 scale: the interval ``ci`` shaded, ``value`` a tick."""
    if value is None:
        return ""
    parts = ['<span class="bar" aria-hidden="true">']
    if ci is not None:
        lo, hi = (min(max(float(c), 0.0), 1.0) for c in ci)
        parts.append(f'<span class="ci" style="left:{lo * 100:.1f}%;width:{(hi - lo) * 100:.1f}%">')
        parts.append("</span>")
    v = min(max(float(value), 0.0), 1.0)
    parts.append(f'<span class="pt" style="left:{v * 100:.1f}%"></span></span>')
    return "".join(parts)


def _stat_title(label: str, s: Stat, *, ci: bool, digits: int = 3) -> str:
    """The hover text of a metric cell: the mean, the seeds' sd and range, the interval."""
    if s.mean is None:
        return f"{label}: not defined"
    text = f"{label}: {fmt(s.mean, digits)}"
    if s.n > 1:
        text += (
            f" (mean of {s.n} seeds; sd {fmt(s.sd, digits)}, range "
            f"{fmt(s.lo, digits)}–{fmt(s.hi, digits)})"
        )
    if ci and s.ci_lo is not None and s.ci_hi is not None:
        what = "mean of the seeds' case-bootstrap intervals" if s.n > 1 else "case bootstrap"
        text += f"; 95% CI {interval_text([s.ci_lo, s.ci_hi], digits)} ({what})"
    return text


def _td(inner: str, value: float | str | None, *, title: str = "", cls: str = "") -> str:
    attrs = f' data-v="{_value_attr(value)}"'
    if cls:
        attrs += f' class="{cls}"'
    if title:
        attrs += f' title="{html.escape(title)}"'
    return f"<td{attrs}>{inner}</td>"


TEXT_COLUMNS = ("Model", "Recipe", "Hardware")  # left-aligned


def _metric_columns() -> dict[str, str]:
    """Display header -> metric key, as :func:`display_headers` names the metric columns."""
    return {(f"{lab} [95% CI]" if k in WITH_CI else lab): k for k, (lab, _) in METRICS.items()}


def _cells_html(position: int, row: Row, table: Table) -> list[str]:
    """The ``<td>`` cells of one row, one per :func:`display_headers` column: compact text
    (a value, its interval as a small bar or on hover) with the sort value in ``data-v``."""
    headers = display_headers(table)
    cells = display_cells(position, row, significance_text(row), table)
    metric_of = _metric_columns()
    timing_of = {lab: k for k, lab in TIMINGS.items()}
    r = row.rank
    out = []
    for head, (text, value) in zip(headers, cells, strict=True):
        esc = html.escape(text)
        if head == "Model":
            out.append(_td(esc, value, cls="txt"))
        elif head == "Recipe":
            out.append(_td(f'<span class="clip">{esc}</span>', value, title=text, cls="txt"))
        elif head == "Hardware":
            # the class ("cpu", "cuda") in the cell, the device name on hover
            short = html.escape(text.split(" (", 1)[0])
            out.append(_td(short, value, title=text, cls="txt"))
        elif head == "Seeds":
            seeds = ", ".join(str(x) for x in row.seeds)
            out.append(_td(str(len(row.runs)), value, title=f"seeds {seeds}"))
        elif head in metric_of:
            k = metric_of[head]
            s = row.metrics[k]
            label = METRICS[k][0]
            missing = cpm_missing(row) if k == "cpm" else None
            if s.mean is None and missing is not None:
                short = "not reached" if missing.startswith("not reached") else "n/a"
                title = (
                    f"{label} {missing} (the CPM needs the sensitivity at every rate up to "
                    f"{max(FP_RATES):g} FP/scan)"
                )
                out.append(_td(f'<span class="na">{short}</span>', value, title=title))
                continue
            if s.mean is None:
                out.append(_td('<span class="na">n/a</span>', value, title=f"{label}: n/a"))
                continue
            inner = fmt(s.mean)
            title = _stat_title(label, s, ci=k in WITH_CI)
            if s.n < len(row.runs):  # e.g. a CPM that some seeds' curves do not reach
                inner += f' <span class="sub">{s.n}/{len(row.runs)}</span>'
                title += f"; defined for {s.n} of the {len(row.runs)} seeds"
            if k in WITH_CI:
                ci = None if s.ci_lo is None or s.ci_hi is None else [s.ci_lo, s.ci_hi]
                inner += _bar(s.mean, ci)
            out.append(_td(inner, value, title=title))
        elif head == "F1 seeds+cases [95%]" and r is not None and r.seed_case_ci is not None:
            lo, hi = r.seed_case_ci
            title = (
                f"F1 pooled over seeds {fmt(r.f1)}; 95% interval {interval_text(r.seed_case_ci)} "
                "with seeds and cases resampled together"
            )
            inner = f'<span class="sub">{fmt(lo)}–{fmt(hi)}</span>{_bar(r.f1, r.seed_case_ci)}'
            out.append(_td(inner, value, title=title))
        elif head == "Rank [95%]" and r is not None:
            inner = fmt_rank(r.rank)
            title = f"observed rank {fmt_rank(r.rank)}"
            if r.rank_ci is not None:
                a, b = (fmt_rank(x) for x in r.rank_ci)
                inner += f' <span class="sub">[{a}–{b}]</span>'
                title += f"; 95% bootstrap rank interval {a}–{b}"
            if r.mean_rank is not None:
                title += f"; mean rank {r.mean_rank:.2f}"
            out.append(_td(inner, value, title=title))
        elif head == "vs top (Holm)":
            out.append(_td(_vs_top_html(row, esc), value, title=_vs_top_title(row)))
        elif head in timing_of:
            s = row.timings[timing_of[head]]
            title = _stat_title(head, s, ci=False) if s.n > 1 else ""
            out.append(_td(esc, value, title=title))
        else:
            out.append(_td(esc, value))
    return out


def _vs_top_html(row: Row, text: str) -> str:
    """``-0.060 p=1.000``: the column's text without the ``ΔF1`` its header implies."""
    s = row.significance or {}
    if s.get("reference") or s.get("diff_f1") is None:
        return text
    p = s.get("p_holm")
    mark = " *" if s.get("significant") else ""
    return f'{s["diff_f1"]:+.3f} <span class="sub">p={fmt(p)}</span>{mark}'


def _vs_top_title(row: Row) -> str:
    s = row.significance or {}
    if s.get("reference"):
        return "the top row: every other row is compared with it"
    if s.get("diff_f1") is None:
        return ""
    return (
        f"ΔF1 (this row − top row) {s['diff_f1']:+.3f}, 95% CI {interval_text(s.get('ci'))}; "
        f"paired bootstrap p {fmt(s.get('p_bootstrap'))}, Holm-adjusted p {fmt(s.get('p_holm'))}"
    )


def _policy_html(text: str) -> str:
    """The edge-case policy, folded: its bold first line is the summary."""
    head, _, rest = text.strip().partition("\n")
    summary = "Edge-case policy"
    if head.startswith("**") and head.endswith("**"):
        summary, text = head.strip("*"), rest
    return (
        f'<details class="policy"><summary>{html.escape(summary)}</summary>\n'
        f"{markdown_block(text)}\n</details>"
    )


FOREST_CAPTION = (
    "Forest plot, rows in the table's order: *F1* pooled over each row's seeds with its 95% "
    "seeds + cases interval (bar), each seed's F1 (ticks) and the top row's F1 (dashed); "
    "*FROC CPM* the mean over seeds with the mean of the seeds' 95% case-bootstrap intervals; "
    f"a row whose FROC does not reach {max(FP_RATES):g} FP/scan has no CPM and says so. Hover a "
    "mark for its numbers."
)


def render_table_html(table: Table, images: Mapping[str, Path] | None = None) -> str:
    """The HTML section of one table; ``images`` maps a caption to a PNG file to embed."""
    head = "".join(
        ('<th class="txt">' if h in TEXT_COLUMNS else "<th>") + f"{html.escape(h)}</th>"
        for h in display_headers(table)
    )
    body = [
        f"<tr>{''.join(_cells_html(k, row, table))}</tr>"
        for k, row in enumerate(table.rows, start=1)
    ]
    parts = [
        f"<h2>{html.escape(table.key.title)}</h2>",
        markdown_block(rule_line(table)),
        markdown_block(rankings_line(table)),
        markdown_block(froc_line(table)),
        markdown_block(order_line(table)),
        '<div class="scroll">',
        f'<table class="lb"><thead><tr>{head}</tr></thead><tbody>',
        *body,
        "</tbody></table>",
        "</div>",
        markdown_block(
            LEGEND + " In this page a cell shows the value; hover it for the spread over "
            "seeds and the interval, drawn as the small bar (0 to 1) where there is one."
        ),
        markdown_block(notes_block(table)),
        forest_svg(table),
        markdown_block(FOREST_CAPTION),
        _policy_html(EDGE_CASE_POLICY),
        pairs_html(table),
    ]
    imgs = []
    for caption, path in (images or {}).items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        imgs.append(f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">')
    if imgs:
        parts += ['<div class="plots">', *imgs, "</div>"]
    return "\n".join(p for p in parts if p)


def render_html(
    tables: Sequence[Table], images: Mapping[str, Mapping[str, Path]] | None = None
) -> str:
    """The whole page; ``images[slug]`` holds the PNGs of table ``slug``."""
    sections = [render_table_html(t, (images or {}).get(t.key.slug)) for t in tables]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>cmbbench leaderboard</title>\n"
        # no favicon request: the page loads nothing but itself
        '<link rel="icon" href="data:,">\n'
        f"<style>\n{STYLE}</style>\n</head>\n<body>\n<h1>cmbbench leaderboard</h1>\n"
        "<p>Generated by <code>cmbbench leaderboard</code> from the run records alone. "
        "Click a column header to sort; hover a value for its spread and interval.</p>\n"
        f"<p>Plots drawn with {html.escape(plotting_version())}.</p>\n"
        + "\n".join(sections)
        + f"\n<script>\n{SORT_SCRIPT}</script>\n</body>\n</html>\n"
    )
