"""CSV: one line per leaderboard row of every table, all numbers in fixed formatting."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from cmbbench.leaderboard.table import CSV_TIMINGS, METRICS, TIMINGS, Stat, Table, fmt

_STAT_FIELDS = ("mean", "sd", "min", "max", "ci_lo", "ci_hi")


def csv_headers() -> list[str]:
    head = [
        "dataset",
        "version",
        "split",
        "rule",
        "rule_params",
        "track",
        "rank",
        "model",
        "recipe",
        "hardware",
        "n_seeds",
        "seeds",
        "n_cases",
    ]
    for k in METRICS:
        head += [f"{k}_{f}" for f in _STAT_FIELDS]
    for k in (*TIMINGS, *CSV_TIMINGS):
        head.append(f"{k}_mean")
    head += [
        "vs_top_diff_f1",
        "vs_top_ci_lo",
        "vs_top_ci_hi",
        "vs_top_p_bootstrap",
        "vs_top_p_wilcoxon",
        "vs_top_significant",
    ]
    return head


def _stat_cells(s: Stat) -> list[str]:
    return [fmt(v, 6) for v in (s.mean, s.sd, s.lo, s.hi, s.ci_lo, s.ci_hi)]


def render_csv(tables: Sequence[Table]) -> str:
    """CSV text (``\\n`` line ends) of every row of every table."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(csv_headers())
    for t in tables:
        k = t.key
        for rank, row in enumerate(t.rows, start=1):
            cells = [
                k.dataset,
                k.version,
                k.split,
                k.rule,
                k.params,
                k.track,
                str(rank),
                row.model,
                row.recipe,
                row.hardware,
                str(len(row.runs)),
                " ".join(str(s) for s in row.seeds),
                str(t.n_cases),
            ]
            for m in METRICS:
                cells += _stat_cells(row.metrics[m])
            for m in (*TIMINGS, *CSV_TIMINGS):
                cells.append(fmt(row.timings[m].mean, 6))
            s = row.significance or {}
            ci = s.get("ci") or [None, None]
            sig = s.get("significant")
            cells += [
                fmt(s.get("diff_f1"), 6),
                fmt(ci[0], 6),
                fmt(ci[1], 6),
                fmt(s.get("p_bootstrap"), 6),
                fmt(s.get("p_wilcoxon"), 6),
                "ref" if s.get("reference") else ("n/a" if sig is None else str(bool(sig)).lower()),
            ]
            w.writerow(cells)
    return buf.getvalue()
