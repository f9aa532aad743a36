"""Leaderboard rows: one per model + recipe + hardware, seeds aggregated.

Every number is recomputed from the stored per-case records with
:func:`cmbbench.scoring.metrics.aggregate` (fixed bootstrap settings, so all rows are
comparable), never read from a record's own summary.

Several seeds of one model form one row:

* **value**: the mean over seeds of each seed's metric;
* **spread**: the sample standard deviation over seeds (0 with one seed), plus min and max
  in the CSV;
* **95% CI**: the mean over seeds of each seed's case-bootstrap interval bounds. It shows the
  uncertainty that comes from the finite test set for one run (the case bootstrap), while
  the spread shows the seed-to-seed variation; the two are reported side by side. The one
  interval that holds both (seeds and cases resampled together) is the rankings' seed + case
  interval (:mod:`cmbbench.leaderboard.rankings`), shown in its own column.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cmbbench.errors import InputError
from cmbbench.leaderboard.store import GroupKey, RunEntry
from cmbbench.scoring.metrics import aggregate

if TYPE_CHECKING:
    from cmbbench.leaderboard.rankings import RowRank, TableRankings
    from cmbbench.leaderboard.valdo_ranking import ValdoRanking

# headline metric key of aggregate() -> (column label, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "f1_micro": ("F1", True),
    "recall_micro": ("Recall", True),
    "precision_micro": ("Precision", True),
    "fp_per_scan": ("FP/scan", False),
    "fp_per_cmb": ("FP/CMB", False),
    "dice_tp_macro": ("DiceTP", True),
    "subject_f1_at_1": ("Subject F1 (≥1)", True),
    "cpm": ("FROC CPM", True),
    "valdo_f1_mean": ("VALDO F1 (mean per case)", True),
}
# metrics shown only in tables of one rule (the CSV always has every column)
RULE_ONLY: dict[str, str] = {"valdo_f1_mean": "valdo"}
# metrics shown with their 95% CI in the Markdown/HTML tables
WITH_CI: tuple[str, ...] = ("f1_micro", "recall_micro", "precision_micro")
TIMINGS: dict[str, str] = {
    "train_s": "Train (s)",
    "step_s": "s/step",
    "infer_case_s": "Infer s/case",
}
# recorded but only in the CSV
CSV_TIMINGS: dict[str, str] = {"peak_memory_mb": "peak memory (MiB)"}
SORT_KEY = "f1_micro"


@dataclass(frozen=True)
class Stat:
    """A metric across seeds: mean, sample sd, min, max, mean CI bounds, defined seeds."""

    mean: float | None
    sd: float | None
    lo: float | None
    hi: float | None
    ci_lo: float | None
    ci_hi: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None], cis: Sequence[Sequence[float] | None] = ()) -> Stat:
        v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
        if not v:
            return cls(None, None, None, None, None, None, 0)
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        good = [c for c in cis if c is not None and len(c) == 2]
        ci_lo = statistics.fmean(c[0] for c in good) if good and len(good) == len(v) else None
        ci_hi = statistics.fmean(c[1] for c in good) if good and len(good) == len(v) else None
        return cls(statistics.fmean(v), sd, min(v), max(v), ci_lo, ci_hi, len(v))


@dataclass
class Row:
    """One leaderboard row (a model + recipe + hardware, its seeds aggregated)."""

    model: str
    recipe: str
    hardware: str
    runs: list[RunEntry]
    metrics: dict[str, Stat]
    timings: dict[str, Stat]
    per_run: list[dict[str, Any]] = field(default_factory=list)  # aggregate() per seed
    significance: dict[str, Any] | None = None  # filled by significance.add_significance
    rank: RowRank | None = None  # shared-resample ranking (significance.add_significance)
    valdo: dict[str, Any] | None = None  # VALDO ranking: final, ranks and wins per metric

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


@dataclass
class Table:
    """One leaderboard table: a group key, its rows (best F1 first, or in VALDO order),
    bootstrap settings and, once ranked, the rankings."""

    key: GroupKey
    rows: list[Row]
    n_cases: int
    n_bootstrap: int
    bootstrap_seed: int
    ranking: str = "bootstrap"  # the ranking that orders the rows
    #: what the FROC and CPM are computed from: "candidates" (every run records every
    #: candidate), "operating_point" (none does: curves end at each model's operating point)
    #: or "mixed"
    froc_source: str = "operating_point"
    rankings: TableRankings | None = None
    valdo: ValdoRanking | None = None  # only with ranking "valdo"
    #: ``(model, text)`` of the board notes on its rows (:mod:`cmbbench.leaderboard.notes`)
    notes: list[tuple[str, str]] = field(default_factory=list)


def _headline(metrics: Mapping[str, Any], name: str) -> tuple[float | None, list[float] | None]:
    item = metrics.get("headline", {}).get(name)
    if not isinstance(item, Mapping):
        return None, None
    return item.get("value"), item.get("ci")


def build_row(
    runs: Sequence[RunEntry], *, n_bootstrap: int, seed: int, recipe: str | None = None
) -> Row:
    """Aggregate the seeds ``runs`` (same model, recipe, hardware) into one :class:`Row`;
    ``recipe`` overrides the row's recipe label (default: the runs' preset and overrides)."""
    per_run = []
    for r in runs:
        try:
            per_run.append(aggregate(r.cases, n_bootstrap=n_bootstrap, seed=seed))
        except InputError as err:
            raise InputError(err.problem, case=err.case, path=str(r.path)) from None
    metrics = {}
    for name in METRICS:
        pairs = [_headline(m, name) for m in per_run]
        metrics[name] = Stat.of([p[0] for p in pairs], [p[1] for p in pairs])
    timings = {
        name: Stat.of([r.timings.get(name) for r in runs]) for name in (*TIMINGS, *CSV_TIMINGS)
    }
    first = runs[0]
    return Row(
        model=first.model,
        recipe=recipe if recipe is not None else first.recipe_label,
        hardware=first.hardware,
        runs=list(runs),
        metrics=metrics,
        timings=timings,
        per_run=per_run,
    )


def build_table(key: GroupKey, runs: Sequence[RunEntry], *, n_bootstrap: int, seed: int) -> Table:
    """The rows of one group, sorted by mean F1 (best first; undefined last), then name."""
    by_row: dict[tuple[str, str, str, str], list[RunEntry]] = {}
    for r in runs:
        by_row.setdefault(r.row_key, []).append(r)
    # rows that would read alike (same model, preset + overrides, hardware) but were trained
    # with different recipes say which recipe: "quick [recipe 1a2b3c4d]"
    label_count = Counter(k[:3] for k in by_row)
    rows = [
        build_row(
            v,
            n_bootstrap=n_bootstrap,
            seed=seed,
            recipe=f"{k[1]} [recipe {k[3]}]" if label_count[k[:3]] > 1 else None,
        )
        for k, v in sorted(by_row.items())
    ]

    def order(row: Row) -> tuple[Any, ...]:
        v = row.metrics[SORT_KEY].mean
        return (v is None, -(v or 0.0), row.model, row.recipe, row.hardware)

    rows.sort(key=order)
    n_cases = max((len(r.cases) for r in runs), default=0)
    full = {all(c.candidates is not None for c in r.cases) for r in runs}
    source = "mixed" if len(full) > 1 else ("candidates" if full == {True} else "operating_point")
    return Table(
        key=key,
        rows=rows,
        n_cases=n_cases,
        n_bootstrap=n_bootstrap,
        bootstrap_seed=seed,
        froc_source=source,
    )


# ---------------------------------------------------------------------------- formatting
def fmt(x: float | None, digits: int = 3) -> str:
    """Fixed-point text; ``None`` -> ``"n/a"``."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_stat(s: Stat, *, ci: bool = False, digits: int = 3) -> str:
    """``"0.612 ± 0.021 [0.550, 0.670]"`` (sd only with several seeds, CI when asked)."""
    if s.mean is None:
        return "n/a"
    text = fmt(s.mean, digits)
    if s.n > 1:
        text += f" ± {fmt(s.sd, digits)}"
    if ci and s.ci_lo is not None and s.ci_hi is not None:
        text += f" [{fmt(s.ci_lo, digits)}, {fmt(s.ci_hi, digits)}]"
    return text


def fmt_time(s: Stat) -> str:
    """Seconds with 3 significant digits (``"n/a"`` when not recorded)."""
    if s.mean is None:
        return "n/a"
    return f"{s.mean:.3g}"


def seeds_text(row: Row) -> str:
    return f"{len(row.runs)} ({', '.join(str(s) for s in row.seeds)})"


# ---------------------------------------------------------------------------- display cells
def shown_metrics(rule: str) -> list[str]:
    """The metric columns of a Markdown/HTML table scored under ``rule``."""
    return [k for k in METRICS if RULE_ONLY.get(k, rule) == rule]


def fmt_rank(x: float) -> str:
    """A rank: ``"2"``, or ``"1.5"`` for a tie."""
    return f"{x:g}"


def rank_text(row: Row) -> str:
    """``"2 [1–3]"``: the observed rank by pooled F1 and the 95% bootstrap rank interval."""
    r = row.rank
    if r is None:
        return "n/a"
    if r.rank_ci is None:
        return fmt_rank(r.rank)
    return f"{fmt_rank(r.rank)} [{fmt_rank(r.rank_ci[0])}–{fmt_rank(r.rank_ci[1])}]"


def interval_text(ci: Sequence[float] | None, digits: int = 3) -> str:
    """``"[0.512, 0.820]"``; ``"n/a"`` when undefined."""
    if ci is None:
        return "n/a"
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def valdo_text(row: Row) -> str:
    """``"1.75 (1, 2.5, 2, 1.5)"``: the VALDO final rank and its metric ranks."""
    v = row.valdo
    if not v:
        return "n/a"
    parts = ", ".join(fmt_rank(x) for x in v["ranks"].values())
    return f"{v['final']:.3g} ({parts})"


def display_headers(table: Table) -> list[str]:
    """Column headers of the Markdown and HTML tables (the CSV has more columns)."""
    rule = table.key.rule
    heads = ["#", "Model", "Recipe", "Hardware", "Seeds"]
    if table.ranking == "valdo" and table.valdo is not None:
        from cmbbench.leaderboard.valdo_ranking import VALDO_METRICS

        names = ", ".join(VALDO_METRICS[m][0] for m in table.valdo.metrics)
        heads.append(f"VALDO rank ({names})")
    for k in shown_metrics(rule):
        heads.append(f"{METRICS[k][0]} [95% CI]" if k in WITH_CI else METRICS[k][0])
        if k == SORT_KEY:
            heads += ["F1 seeds+cases [95%]", "Rank [95%]", "P(rank 1)"]
    return [*heads, *TIMINGS.values(), "vs top (Holm)"]


def display_cells(
    position: int, row: Row, significance: str, table: Table
) -> list[tuple[str, float | str | None]]:
    """``(text, sort value)`` per column of :func:`display_headers` for the row at
    ``position`` (1-based) of ``table``; the sort value is a number (``None`` when
    undefined) or the text itself."""
    cells: list[tuple[str, float | str | None]] = [
        (str(position), float(position)),
        (row.model, row.model),
        (row.recipe, row.recipe),
        (row.hardware, row.hardware),
        (seeds_text(row), float(len(row.runs))),
    ]
    if table.ranking == "valdo" and table.valdo is not None:
        cells.append((valdo_text(row), (row.valdo or {}).get("final")))
    r = row.rank
    for k in shown_metrics(table.key.rule):
        s = row.metrics[k]
        cells.append((fmt_stat(s, ci=k in WITH_CI), s.mean))
        if k == SORT_KEY:
            p1 = None if r is None else r.p_first
            cells += [
                (interval_text(None if r is None else r.seed_case_ci), None if r is None else r.f1),
                (rank_text(row), None if r is None else r.rank),
                (fmt(p1, 2), p1),
            ]
    for k in TIMINGS:
        s = row.timings[k]
        cells.append((fmt_time(s), s.mean))
    sig = row.significance or {}
    cells.append((significance, -1.0 if sig.get("reference") else sig.get("p_holm")))
    return cells
