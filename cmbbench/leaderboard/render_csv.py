"""CSV: one line per leaderboard row of every table, all numbers in fixed formatting.

Besides each row's metrics and timings, every line carries the row's ranking (pooled F1,
seed + case interval, observed and mean rank, rank interval, P(rank 1)), its comparison with
the top row, its VALDO ranks (with ``--ranking valdo``), its table's ranking settings
(``ranking_*``, ``detectable_diff_f1``, ``rank_stability_tau``: the same on every line of a
table) and one row of the table's pairwise matrix: ``p_holm_vs_<k>`` is the Holm-adjusted
paired bootstrap p of this row against the row at position ``k`` of the same table (column
``rank``), empty on the diagonal and past the table's last row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from cmbbench.leaderboard.table import CSV_TIMINGS, METRICS, TIMINGS, Row, Stat, Table, fmt
from cmbbench.leaderboard.valdo_ranking import VALDO_METRICS

_STAT_FIELDS = ("mean", "sd", "min", "max", "ci_lo", "ci_hi")
RANK_FIELDS = (
    "f1_pooled",
    "f1_seed_case_ci_lo",
    "f1_seed_case_ci_hi",
    "rank_observed",
    "rank_mean",
    "rank_ci_lo",
    "rank_ci_hi",
    "p_rank1",
)
VS_TOP_FIELDS = (
    "vs_top_diff_f1",
    "vs_top_ci_lo",
    "vs_top_ci_hi",
    "vs_top_p_bootstrap",
    "vs_top_p_holm",
    "vs_top_significant",
)
TABLE_FIELDS = (
    "ranking",
    "ranking_n_cases",
    "ranking_n_resamples",
    "ranking_seed",
    "detectable_diff_f1",
    "rank_stability_tau",
)


def csv_headers(n_matrix: int = 0) -> list[str]:
    """The CSV header; ``n_matrix`` pairwise columns (the rows of the largest table)."""
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
    head += [*RANK_FIELDS, *VS_TOP_FIELDS, "valdo_rank"]
    head += [f"valdo_rank_{m}" for m in VALDO_METRICS]
    head += [f"valdo_wins_{m}" for m in VALDO_METRICS]
    head += [*TABLE_FIELDS]
    head += [f"p_holm_vs_{k}" for k in range(1, n_matrix + 1)]
    return head


def _stat_cells(s: Stat) -> list[str]:
    return [fmt(v, 6) for v in (s.mean, s.sd, s.lo, s.hi, s.ci_lo, s.ci_hi)]


def _rank_cells(row: Row) -> list[str]:
    r = row.rank
    if r is None:
        return ["n/a"] * len(RANK_FIELDS)
    ci = r.seed_case_ci or [None, None]
    rci = r.rank_ci or (None, None)
    return [fmt(v, 6) for v in (r.f1, ci[0], ci[1], r.rank, r.mean_rank, *rci, r.p_first)]


def _vs_top_cells(row: Row) -> list[str]:
    s = row.significance or {}
    ci = s.get("ci") or [None, None]
    sig = s.get("significant")
    return [
        fmt(s.get("diff_f1"), 6),
        fmt(ci[0], 6),
        fmt(ci[1], 6),
        fmt(s.get("p_bootstrap"), 6),
        fmt(s.get("p_holm"), 6),
        "ref" if s.get("reference") else ("n/a" if sig is None else str(bool(sig)).lower()),
    ]


def _valdo_cells(row: Row) -> list[str]:
    v = row.valdo or {}
    ranks, wins = v.get("ranks", {}), v.get("wins", {})
    return [
        fmt(v.get("final"), 6),
        *(fmt(ranks.get(m), 6) for m in VALDO_METRICS),
        *(str(wins[m]) if m in wins else "n/a" for m in VALDO_METRICS),
    ]


def _table_cells(t: Table) -> list[str]:
    r = t.rankings
    if r is None:
        return [t.ranking, "0", "0", str(t.bootstrap_seed), "n/a", "n/a"]
    return [
        t.ranking,
        str(r.n_cases),
        str(r.n_resamples),
        str(r.seed),
        fmt(r.detectable_diff, 6),
        fmt(r.kendall_tau, 6),
    ]


def _matrix_cells(t: Table, a: int, n_matrix: int) -> list[str]:
    cells = []
    for b in range(n_matrix):
        pair = t.rankings.pair(a, b) if t.rankings is not None and b < len(t.rows) else None
        cells.append("" if pair is None else fmt(pair.p_holm, 6))
    return cells


def render_csv(tables: Sequence[Table]) -> str:
    """CSV text (``\\n`` line ends) of every row of every table."""
    n_matrix = max((len(t.rows) for t in tables), default=0)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(csv_headers(n_matrix))
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
            cells += _rank_cells(row) + _vs_top_cells(row) + _valdo_cells(row)
            cells += _table_cells(t) + _matrix_cells(t, rank - 1, n_matrix)
            w.writerow(cells)
    return buf.getvalue()
