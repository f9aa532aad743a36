"""VALDO 2021's significance-count ranking (``cmbbench leaderboard --ranking valdo``).

As the challenge's ``ranking_comparison.py``: per metric, every ordered pair of rows is
tested with a one-sided paired test over cases ("row a is better than row b"); a row's
*wins* are the rows it beats at p < :data:`ALPHA`; its metric rank is
``n_rows + 1 - rankdata(wins)`` (1 = most wins, ties share the average rank); its final rank
is the mean of its metric ranks (lower is better).

Metrics (:data:`VALDO_METRICS`), per case, each row reduced first to seed-averaged per-case
results (sums over the row's seeds divided by their number, as the paired tests do):

* ``f1``: per-case F1 ``2TP / (2TP + FP + FN)`` of those counts (the official per-case F1,
  averaged over seeds, under the ``valdo`` rule); undefined on a case with neither CMBs nor
  predictions;
* ``count``: ``|n_pred - n_gt|`` (lower is better);
* ``dice``: voxel Dice ``2 |P ∩ G| / (|P| + |G|)`` from the stored voxel counts; undefined
  where both are empty;
* ``volume``: ``|V_pred - V_gt|`` in mm³ (lower is better).

Dice and volume need voxel masks: under point annotations they are left out (and said so).

The test: over the cases where both rows' values are defined, the differences ``d`` ("a
better" positive). With ``n >= 20`` such cases (:data:`MIN_CASES_WILCOXON`), the Wilcoxon
signed-rank test ``scipy.stats.wilcoxon(d, alternative="greater")`` (zeros dropped, scipy's
default method), as VALDO. Below 20 cases VALDO switched to a different paired rank test (a
third-party package); cmbbench instead uses the **exact** signed-rank test: the statistic's
distribution over all ``2^n`` sign flips of the non-zero differences, mid-ranks for ties
(:func:`exact_signed_rank_p`), which needs no normal approximation at small ``n``. All
differences zero gives p = 1; no defined case gives no test (no win).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata

from cmbbench.leaderboard.rankings import ALPHA, shared_cases
from cmbbench.leaderboard.table import Table
from cmbbench.scoring.rates import detection_rates, ratio
from cmbbench.scoring.table import CaseTable

MIN_CASES_WILCOXON = 20

# name -> (label, higher is better)
VALDO_METRICS: dict[str, tuple[str, bool]] = {
    "f1": ("F1", True),
    "count": ("count", False),
    "dice": ("Dice", True),
    "volume": ("volume", False),
}


@dataclass(frozen=True)
class ValdoRanking:
    """VALDO ranking of a table: per metric, ``p[a][b]`` of "a better than b", wins and
    ranks per row (in the order the rows had when ranked), final ranks, metrics left out."""

    n_cases: int
    metrics: list[str]
    skipped: dict[str, str]
    p: dict[str, NDArray[np.float64]]
    wins: dict[str, NDArray[np.float64]]
    ranks: dict[str, NDArray[np.float64]]
    final: NDArray[np.float64]


def per_case_metrics(seeds: list[CaseTable]) -> dict[str, NDArray[np.float64]]:
    """The four metrics per case (NaN where undefined) of one row's seed-averaged cases."""
    n = len(seeds)
    mean = lambda f: sum(f(t) for t in seeds) / n  # noqa: E731
    t0 = seeds[0]
    if t0.cases[0].rule == "valdo":
        f1 = mean(lambda t: t.valdo)  # NaN when any seed's value is undefined
    else:
        f1 = detection_rates(mean(lambda t: t.tp), mean(lambda t: t.fp), mean(lambda t: t.fn)).f1
    out = {"f1": f1, "count": np.abs(mean(lambda t: t.n_pred) - t0.n_gt)}
    if all(t.seg_reason is None for t in seeds):
        gt, pred = mean(lambda t: t.gt_vox), mean(lambda t: t.pred_vox)
        out["dice"] = ratio(2 * mean(lambda t: t.inter_vox), gt + pred)
        out["volume"] = np.abs(pred - gt) * t0.voxel_mm3
    return out


def exact_signed_rank_p(d: NDArray) -> float:
    """One-sided exact p of the signed-rank test, ``P(T+ >= t)`` under H0: zeros dropped,
    mid-ranks of ``|d|`` for ties, every sign flip of the rest equally likely (dynamic
    programming over the doubled, integer ranks). 1.0 when every difference is zero."""
    d = np.asarray(d, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    r2 = np.rint(2 * rankdata(np.abs(d))).astype(np.int64)  # mid-ranks are multiples of 1/2
    dist = np.zeros(int(r2.sum()) + 1)
    dist[0] = 1.0
    for r in r2:  # one item at a time: its sign adds r or 0 (at most 19 items)
        dist = dist + np.concatenate([np.zeros(r), dist[:-r]])
    t = int(r2[d > 0].sum())
    return float(dist[t:].sum() / dist.sum())


def one_sided_p(d: NDArray) -> float | None:
    """p of "the differences ``d`` are shifted above 0" over the defined entries (see the
    module docstring); ``None`` when none is defined."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    if not np.any(d != 0):
        return 1.0
    if d.size >= MIN_CASES_WILCOXON:
        from scipy.stats import wilcoxon

        return float(wilcoxon(d, zero_method="wilcox", alternative="greater").pvalue)
    return exact_signed_rank_p(d)


def significance_ranks(
    values: NDArray, higher_is_better: bool, alpha: float = ALPHA
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(p, wins, ranks)`` of one metric; ``values``: ``(n_rows, n_cases)``.

    ``p[a, b]``: one-sided p that row a beats row b (NaN on the diagonal or without a test);
    ``wins[a]``: rows a beats at ``p < alpha``; ``ranks = n_rows + 1 - rankdata(wins)``.
    """
    n = values.shape[0]
    sign = 1.0 if higher_is_better else -1.0
    p = np.full((n, n), np.nan)
    for a in range(n):
        for b in range(n):
            if a != b:
                pv = one_sided_p(sign * (values[a] - values[b]))
                p[a, b] = np.nan if pv is None else pv
    wins = np.sum(np.nan_to_num(p, nan=1.0) < alpha, axis=1).astype(np.float64)
    return p, wins, n + 1 - rankdata(wins, method="average")


def valdo_ranking(table: Table) -> ValdoRanking | None:
    """The VALDO significance-count ranking of ``table``'s rows (in their current order) on
    the cases every row shares; ``None`` without rows or shared cases."""
    ids, case_tables = shared_cases(table)
    if not table.rows or not ids:
        return None
    per_row = [per_case_metrics(ts) for ts in case_tables]
    used, skipped = [], {}
    p, wins, ranks = {}, {}, {}
    for name, (_, higher) in VALDO_METRICS.items():
        if any(name not in m for m in per_row):
            skipped[name] = "needs voxel masks (point annotations have none)"
            continue
        vals = np.stack([m[name] for m in per_row])
        if not np.isfinite(vals).any():
            skipped[name] = "undefined on every case"
            continue
        p[name], wins[name], ranks[name] = significance_ranks(vals, higher)
        used.append(name)
    final = np.mean([ranks[m] for m in used], axis=0) if used else np.full(len(table.rows), np.nan)
    return ValdoRanking(len(ids), used, skipped, p, wins, ranks, final)


def order_by_valdo(table: Table) -> ValdoRanking | None:
    """Rank ``table`` the VALDO way and reorder its rows by final rank (ties keep their F1
    order); fills every row's ``valdo`` entry and returns the ranking (in the new order)."""
    res = valdo_ranking(table)
    if res is None:
        return None
    order = sorted(range(len(table.rows)), key=lambda k: (res.final[k], k))
    table.rows = [table.rows[k] for k in order]
    idx = np.array(order)
    res = ValdoRanking(
        res.n_cases,
        res.metrics,
        res.skipped,
        {m: v[np.ix_(idx, idx)] for m, v in res.p.items()},
        {m: v[idx] for m, v in res.wins.items()},
        {m: v[idx] for m, v in res.ranks.items()},
        res.final[idx],
    )
    for k, row in enumerate(table.rows):
        row.valdo = {
            "final": float(res.final[k]),
            "ranks": {m: float(res.ranks[m][k]) for m in res.metrics},
            "wins": {m: int(res.wins[m][k]) for m in res.metrics},
        }
    return res
