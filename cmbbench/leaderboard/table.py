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
  the spread shows the seed-to-seed variation; the two are reported side by side rather than
  mixed into one interval.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cmbbench.errors import InputError
from cmbbench.leaderboard.store import GroupKey, RunEntry
from cmbbench.scoring.metrics import aggregate

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

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


@dataclass
class Table:
    """One leaderboard table: a group key, its rows (best F1 first), bootstrap settings."""

    key: GroupKey
    rows: list[Row]
    n_cases: int
    n_bootstrap: int
    bootstrap_seed: int


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
    return Table(key=key, rows=rows, n_cases=n_cases, n_bootstrap=n_bootstrap, bootstrap_seed=seed)


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


def display_headers(rule: str) -> list[str]:
    """Column headers of the Markdown and HTML tables (the CSV has more columns)."""
    return [
        "#",
        "Model",
        "Recipe",
        "Hardware",
        "Seeds",
        *(
            f"{METRICS[k][0]} [95% CI]" if k in WITH_CI else METRICS[k][0]
            for k in shown_metrics(rule)
        ),
        *TIMINGS.values(),
        "vs top (paired)",
    ]


def display_cells(
    rank: int, row: Row, significance: str, rule: str
) -> list[tuple[str, float | str | None]]:
    """``(text, sort value)`` per column of :func:`display_headers` for one row of a table
    scored under ``rule``; the sort
    value is a number (``None`` when undefined) or the text itself."""
    cells: list[tuple[str, float | str | None]] = [
        (str(rank), float(rank)),
        (row.model, row.model),
        (row.recipe, row.recipe),
        (row.hardware, row.hardware),
        (seeds_text(row), float(len(row.runs))),
    ]
    for k in shown_metrics(rule):
        s = row.metrics[k]
        cells.append((fmt_stat(s, ci=k in WITH_CI), s.mean))
    for k in TIMINGS:
        s = row.timings[k]
        cells.append((fmt_time(s), s.mean))
    p = (row.significance or {}).get("p_bootstrap")
    cells.append((significance, -1.0 if (row.significance or {}).get("reference") else p))
    return cells
