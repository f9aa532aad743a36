"""README-ready Markdown: one section per table, the scoring rule and the edge-case policy
printed above each table, the plots linked below it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cmbbench.leaderboard.plots import plotting_version
from cmbbench.leaderboard.rankings import DETECTABLE_SE_FACTOR
from cmbbench.leaderboard.significance import ALPHA, significance_text
from cmbbench.leaderboard.table import Table, display_cells, display_headers, fmt
from cmbbench.leaderboard.valdo_ranking import MIN_CASES_WILCOXON, VALDO_METRICS
from cmbbench.scoring.metrics import EDGE_CASE_POLICY

LEGEND = (
    "Values are the mean over seeds, `± sd` the sample standard deviation across seeds (with "
    "several seeds) and `[lo, hi]` the mean over seeds of each run's 95% case-bootstrap "
    "interval. F1, recall and precision are pooled over all CMBs (micro); FP/scan counts every "
    "scan, negatives included; DiceTP is the mean Dice over matched pairs; Subject F1 (≥1) "
    "treats a scan as positive with at least one CMB; FROC CPM is the mean sensitivity at "
    "1/8–8 FP per scan. Times are seconds (means over seeds). The ranking columns use F1 "
    "pooled over a row's seeds and the shared case resamples named above the table: *F1 "
    "seeds+cases* is the 95% interval with seeds and cases resampled together (per resample "
    "the row's seeds drawn with replacement, then the shared case resample); *Rank [95%]* the "
    "observed rank and its 95% bootstrap rank interval (ties share the average rank); *P(rank "
    "1)* the share of resamples in which the row is best; *vs top* the difference in pooled "
    "F1 to the top row with its paired bootstrap p, Holm-adjusted over all pairs; `*` marks "
    f"p < {ALPHA:g}."
)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rule_line(table: Table) -> str:
    """One line naming the scoring rule, its parameters and the bootstrap settings."""
    k = table.key
    return (
        f"Scoring rule: `{k.rule}` with parameters `{k.params}`; dataset `{k.dataset}` "
        f"version `{k.version}`, split `{k.split}` ({table.n_cases} cases); confidence "
        f"intervals from {table.n_bootstrap} case-bootstrap resamples (seed {table.bootstrap_seed})."
    )


FROC_NOTES = {
    "candidates": (
        "**FROC** from every candidate the models emitted (down to each record's candidate "
        "floor); counting metrics at each model's operating point."
    ),
    "operating_point": (
        "**FROC at the operating point only**: these records hold no candidate lists, so each "
        "curve ends at the model's tuned operating point; sensitivities past a curve's end, and "
        "the CPM, are not reached (n/a) rather than the last value repeated."
    ),
    "mixed": (
        "**FROC** from every candidate for the runs that recorded them and at the operating "
        "point for the others: the CPM of the two kinds is not comparable."
    ),
}


def froc_line(table: Table) -> str:
    """What the table's FROC curves and CPM are computed from."""
    return FROC_NOTES[table.froc_source]


def rankings_line(table: Table) -> str:
    """The rankings' settings, the smallest detectable paired ΔF1 and the rank stability."""
    r = table.rankings
    if r is None:
        return "**Rankings**: not available (no case is common to every row)."
    n_pairs = len(r.pairs)
    text = (
        f"**Rankings** by micro F1 pooled over each row's seeds, from {r.n_resamples} shared "
        f"case resamples (seed {r.seed}) of the {r.n_cases} cases every row holds"
    )
    if r.n_resamples > table.n_bootstrap > 0:
        text += (
            f" (raised from {table.n_bootstrap} so that a Holm-adjusted p over {n_pairs} pairs "
            f"can fall below {ALPHA:g})"
        )
    if r.detectable_diff is not None:
        text += (
            f": smallest detectable paired ΔF1 **{fmt(r.detectable_diff)}** "
            f"({DETECTABLE_SE_FACTOR:g} × the median paired-bootstrap SE of ΔF1 over the "
            f"{n_pairs} pairs)"
        )
    if r.kendall_tau is not None:
        text += (
            f"; rank stability: mean Kendall τ {fmt(r.kendall_tau, 2)} between resampled and "
            "observed orders"
        )
    if n_pairs:
        text += f"; p-values Holm-adjusted over the {n_pairs} pairs"
    return text + "."


def order_line(table: Table) -> str:
    """How the rows are ordered: mean F1, or VALDO 2021's significance-count ranking."""
    v = table.valdo
    if table.ranking != "valdo" or v is None:
        return "Rows are ordered by mean F1 (`--ranking bootstrap`)."
    names = ", ".join(VALDO_METRICS[m][0] for m in v.metrics)
    text = (
        "Rows are ordered by VALDO 2021's significance-count ranking (`--ranking valdo`) over "
        f"the {v.n_cases} shared cases: per metric ({names}; per case), one-sided paired tests "
        f"between every pair of rows (Wilcoxon signed-rank with ≥ {MIN_CASES_WILCOXON} cases, "
        f"the exact signed-rank test below), a row's metric rank from the number of rows it "
        f"beats at p < {ALPHA:g}, its VALDO rank the mean of its metric ranks (lower is better)"
    )
    for m, why in v.skipped.items():
        text += f"; {VALDO_METRICS[m][0]} left out: {why}"
    return text + "."


def notes_block(table: Table) -> str:
    """The board notes on the table's rows as a Markdown list (empty without notes)."""
    if not table.notes:
        return ""
    return "\n".join(
        ["**Notes** on rows of this table:", ""] + [f"- `{m}`: {t}" for m, t in table.notes]
    )


def render_table_md(table: Table, plots: Mapping[str, str] | None = None) -> str:
    """The Markdown section of one table; ``plots`` maps a caption to a relative image path."""
    headers = display_headers(table)
    lines = [
        f"## {table.key.title}",
        "",
        rule_line(table),
        "",
        rankings_line(table),
        "",
        froc_line(table),
        "",
        order_line(table),
        "",
        EDGE_CASE_POLICY.strip(),
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if i == 0 else "---" for i in range(len(headers))) + "|",
    ]
    for rank, row in enumerate(table.rows, start=1):
        cells = display_cells(rank, row, significance_text(row), table)
        lines.append("| " + " | ".join(_escape(text) for text, _ in cells) + " |")
    lines += ["", LEGEND, ""]
    if table.notes:
        lines += [notes_block(table), ""]
    for caption, rel in (plots or {}).items():
        lines += [f"![{caption}]({rel})", ""]
    return "\n".join(lines)


def render_markdown(
    tables: Sequence[Table], plots: Mapping[str, Mapping[str, str]] | None = None
) -> str:
    """The whole leaderboard page; ``plots[slug]`` holds the images of table ``slug``."""
    parts = [
        "# cmbbench leaderboard",
        "",
        "Generated by `cmbbench leaderboard` from the run records alone (per-case results); "
        "regenerating gives identical files.",
        "",
        f"Plots drawn with {plotting_version()}.",
        "",
    ]
    for t in tables:
        parts.append(render_table_md(t, (plots or {}).get(t.key.slug)))
    return "\n".join(parts).rstrip("\n") + "\n"
