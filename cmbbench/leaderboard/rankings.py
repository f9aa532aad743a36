"""How sure is a table's order: all-pairs tests, rank intervals, seed + case intervals.

Rows of one table are scored on the same test cases, so everything here comes from **one**
case-resample matrix ``W`` (:func:`cmbbench.scoring.bootstrap.resample_counts`, shape
``(B, n_cases)``, the cases every row shares, sorted by id), applied to every row:

* **statistic**: a row's micro F1 pooled over its seeds, ``2ΣTP / (2ΣTP + ΣFP + ΣFN)`` with
  the sums over the row's seeds and the (resampled) cases: the F1 of the seed-averaged
  per-case results;
* **all pairs** (``i`` listed above ``j``): ``ΔF1 = F1_i - F1_j`` in every resample gives a
  percentile interval, a two-sided bootstrap p (:func:`~cmbbench.scoring.bootstrap.two_sided_p`)
  and a standard error (the sample sd of the resampled differences); the p-values are
  Holm-adjusted over the table's pairs (:func:`holm`);
* **ranks**: in every resample the rows are ranked by F1 (1 = best, ties share the average
  rank, an undefined F1 ranks last), giving each row's mean rank, its 95% rank interval (the
  2.5th and 97.5th percentiles of its ranks, inverted-CDF, so each bound is a rank that
  occurred) and P(rank 1) (a tie for best among ``k`` rows counts ``1/k`` to each); the
  order's **stability** is the mean over resamples of Kendall's τ-b between the resampled and
  the observed ranks;
* **seeds + cases**: per resample, the row's seeds are drawn with replacement (a seed
  resample of its own, :func:`row_seed`), the shared case resample is applied to every drawn
  seed, and F1 is pooled over the drawn seeds' resampled cases; the 95% percentile interval
  of that holds both sources of variation;
* **detectable difference**: ``2 ×`` the median over the table's pairs of the bootstrap SE of
  ``ΔF1`` (:data:`DETECTABLE_SE_FACTOR`): the gap at which a typical pair's approximate 95%
  interval just excludes 0.

The number of resamples is the table's ``n_bootstrap``, raised when needed
(:func:`resamples_for`) so that a Holm-adjusted bootstrap p can fall below :data:`ALPHA`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cmbbench.leaderboard.table import Row, Table
from cmbbench.scoring.bootstrap import percentile_ci, resample_counts, two_sided_p
from cmbbench.scoring.rates import detection_rates
from cmbbench.scoring.table import CaseTable, prepare_cases

ALPHA = 0.05
CI = 0.95
DETECTABLE_SE_FACTOR = 2.0


@dataclass(frozen=True)
class PairComparison:
    """Rows at positions ``i`` (above) and ``j`` of a table: ``diff = F1_i - F1_j``."""

    i: int
    j: int
    diff: float | None
    ci: list[float] | None
    se: float | None
    p: float | None  # two-sided paired bootstrap p
    p_holm: float | None  # Holm-adjusted over the table's pairs


@dataclass(frozen=True)
class RowRank:
    """One row's ranking: pooled F1 on the shared cases, observed and resampled ranks."""

    f1: float | None
    rank: float  # observed rank (1 = best, ties averaged)
    mean_rank: float | None
    rank_ci: tuple[float, float] | None
    p_first: float | None
    seed_case_ci: list[float] | None  # seeds and cases resampled together


@dataclass(frozen=True)
class TableRankings:
    """Rankings of one table (see the module docstring); ``rows`` follow the table's order."""

    n_cases: int
    n_resamples: int
    seed: int
    rows: list[RowRank]
    pairs: list[PairComparison]
    detectable_diff: float | None
    kendall_tau: float | None

    def pair(self, a: int, b: int) -> PairComparison | None:
        """The comparison of rows ``a`` and ``b`` (either order; ``None`` when ``a == b``)."""
        i, j = min(a, b), max(a, b)
        return next((p for p in self.pairs if p.i == i and p.j == j), None)

    def diff(self, a: int, b: int) -> float | None:
        """``F1_a - F1_b`` (observed), whatever the order of ``a`` and ``b`` in the table."""
        p = self.pair(a, b)
        if p is None or p.diff is None:
            return None
        return p.diff if a < b else -p.diff


# ---------------------------------------------------------------------------- pure helpers
def resamples_for(n_bootstrap: int, n_pairs: int, alpha: float = ALPHA) -> int:
    """Resamples for a table of ``n_pairs`` pairs: ``n_bootstrap``, or more when needed.

    A bootstrap p is at least ``2 / (B + 1)`` and Holm multiplies the smallest of ``n_pairs``
    p-values by ``n_pairs``, so below ``B = 2 n_pairs / alpha`` no pair could reach ``alpha``.
    Returns ``max(n_bootstrap, that bound rounded up to a multiple of 1000)``; 0 stays 0.
    """
    if n_bootstrap <= 0 or n_pairs <= 0:
        return n_bootstrap
    need = 1000 * math.ceil(math.ceil(2 * n_pairs / alpha) / 1000)
    return max(n_bootstrap, need)


def average_ranks(values: NDArray) -> NDArray[np.float64]:
    """Ranks along the last axis, 1 = highest value, ties share their average rank and NaN
    ranks last (NaNs tie with each other). ``values``: ``(..., n_rows)``; vectorised."""
    x = np.where(np.isnan(values), -np.inf, np.asarray(values, dtype=np.float64))
    above = (x[..., None, :] > x[..., :, None]).sum(axis=-1)  # rows strictly better
    equal = (x[..., None, :] == x[..., :, None]).sum(axis=-1)  # itself included
    return 1.0 + above + (equal - 1) / 2.0


def kendall_tau_b(ranks: NDArray, observed: NDArray) -> NDArray[np.float64]:
    """Kendall's τ-b between every row of ``ranks`` (``(B, n)``) and ``observed`` (``(n,)``);
    NaN where a ranking is all ties (τ undefined)."""
    n = observed.shape[-1]
    iu, ju = np.triu_indices(n, 1)
    sb = np.sign(ranks[:, iu] - ranks[:, ju])
    so = np.sign(observed[iu] - observed[ju])
    pairs = iu.size
    den = np.sqrt(float(pairs - np.sum(so == 0)) * (pairs - np.sum(sb == 0, axis=1)))
    num = (sb * so).sum(axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def holm(p: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values; ``None`` entries stay ``None`` and are not counted
    in the family. ``adj_(k) = max_{m <= k} min(1, (M - m + 1) p_(m))`` for sorted p."""
    idx = [k for k, v in enumerate(p) if v is not None and math.isfinite(v)]
    out: list[float | None] = [None] * len(p)
    if not idx:
        return out
    vals = np.array([p[k] for k in idx], dtype=np.float64)
    order = np.argsort(vals, kind="stable")
    m = vals.size
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * vals[order]))
    for pos, k in enumerate(order):
        out[idx[k]] = float(adj[pos])
    return out


def row_seed(seed: int, row: Row) -> int:
    """The seed of a row's seed resample: fixed by the table seed and the row's identity
    (model, recipe, hardware), not by its position."""
    return zlib.crc32(f"{seed}|{row.model}|{row.recipe}|{row.hardware}".encode())


# ---------------------------------------------------------------------------- shared cases
def shared_cases(table: Table) -> tuple[list[str], list[list[CaseTable]]]:
    """The case ids every run of ``table`` holds (sorted), and per row one
    :class:`CaseTable` per seed restricted to them (empty lists when no case is shared)."""
    sets = [{c.case_id for c in run.cases} for row in table.rows for run in row.runs]
    ids = set.intersection(*sets) if sets else set()
    if not ids:
        return [], [[] for _ in table.rows]
    tables = [
        [CaseTable(prepare_cases([c for c in run.cases if c.case_id in ids])) for run in row.runs]
        for row in table.rows
    ]
    return sorted(ids), tables


def _counts(seeds: list[CaseTable]) -> NDArray[np.float64]:
    """``(n_seeds, n_cases, 3)``: TP, FP, FN per seed and case."""
    return np.stack([np.stack([t.tp, t.fp, t.fn], axis=1) for t in seeds])


def _f1(tp_fp_fn: NDArray) -> NDArray[np.float64]:
    return detection_rates(tp_fp_fn[..., 0], tp_fp_fn[..., 1], tp_fp_fn[..., 2]).f1


def _opt(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


# ---------------------------------------------------------------------------- the rankings
def rank_table(
    table: Table, *, n_resamples: int | None = None, seed: int | None = None
) -> TableRankings | None:
    """All-pairs comparisons, rank distributions and seed + case intervals of ``table``'s rows
    (in their current order) from one shared case resample; ``None`` without rows or without
    a case common to every run.

    ``n_resamples`` defaults to :func:`resamples_for` of the table's ``n_bootstrap``; ``seed``
    to the table's bootstrap seed. With 0 resamples only the observed values are filled.
    """
    rows = table.rows
    ids, case_tables = shared_cases(table)
    if not rows or not ids:
        return None
    n_rows = len(rows)
    n_pairs = n_rows * (n_rows - 1) // 2
    b = resamples_for(table.n_bootstrap, n_pairs) if n_resamples is None else n_resamples
    seed = table.bootstrap_seed if seed is None else seed
    counts = [_counts(ts) for ts in case_tables]  # per row (n_seeds, n_cases, 3)
    f1_obs = np.array([_f1(c.sum(axis=(0, 1))) for c in counts], dtype=np.float64)
    rank_obs = average_ranks(f1_obs)
    iu, ju = np.triu_indices(n_rows, 1)
    diffs_obs = f1_obs[iu] - f1_obs[ju]

    if b == 0:
        ranked = [
            RowRank(_opt(f), float(r), None, None, None, None)
            for f, r in zip(f1_obs, rank_obs, strict=True)
        ]
        pairs = [
            PairComparison(int(i), int(j), _opt(d), None, None, None, None)
            for i, j, d in zip(iu, ju, diffs_obs, strict=True)
        ]
        return TableRankings(len(ids), 0, seed, ranked, pairs, None, None)

    w = resample_counts(len(ids), b, seed)  # the ONE case resample of the table
    f1_boot = np.empty((b, n_rows))
    seed_case: list[list[float] | None] = []
    for r, (row, c) in enumerate(zip(rows, counts, strict=True)):
        n_seeds, n_cases, _ = c.shape
        per_seed = (w @ c.transpose(1, 0, 2).reshape(n_cases, n_seeds * 3)).reshape(b, n_seeds, 3)
        f1_boot[:, r] = _f1(per_seed.sum(axis=1))
        m = resample_counts(n_seeds, b, row_seed(seed, row))  # seeds drawn with replacement
        seed_case.append(percentile_ci(_f1((m[:, :, None] * per_seed).sum(axis=1)), CI))

    ranks = average_ranks(f1_boot)
    alpha = (1.0 - CI) / 2.0
    lo, hi = np.quantile(ranks, [alpha, 1.0 - alpha], axis=0, method="inverted_cdf")
    x = np.where(np.isnan(f1_boot), -np.inf, f1_boot)
    best = x == x.max(axis=1, keepdims=True)
    p_first = (best / best.sum(axis=1, keepdims=True)).mean(axis=0)
    tau = kendall_tau_b(ranks, rank_obs) if n_rows > 1 else np.full(b, np.nan)
    ranked = [
        RowRank(
            f1=_opt(f1_obs[r]),
            rank=float(rank_obs[r]),
            mean_rank=float(ranks[:, r].mean()),
            rank_ci=(float(lo[r]), float(hi[r])),
            p_first=float(p_first[r]),
            seed_case_ci=seed_case[r],
        )
        for r in range(n_rows)
    ]

    d = f1_boot[:, iu] - f1_boot[:, ju]  # (B, n_pairs), every pair from the same resamples
    ses = []
    raw: list[tuple[float | None, list[float] | None, float | None, float | None]] = []
    for k in range(n_pairs):
        if not math.isfinite(diffs_obs[k]):
            raw.append((None, None, None, None))
            continue
        dk = d[:, k][np.isfinite(d[:, k])]
        se = float(np.std(dk, ddof=1)) if dk.size > 1 else None
        if se is not None:
            ses.append(se)
        raw.append((float(diffs_obs[k]), percentile_ci(dk, CI), se, two_sided_p(dk)))
    adjusted = holm([p for *_, p in raw])
    pairs = [
        PairComparison(int(iu[k]), int(ju[k]), diff, ci, se, p, adjusted[k])
        for k, (diff, ci, se, p) in enumerate(raw)
    ]
    mdd = DETECTABLE_SE_FACTOR * float(np.median(ses)) if ses else None
    finite_tau = tau[np.isfinite(tau)]
    return TableRankings(
        n_cases=len(ids),
        n_resamples=b,
        seed=seed,
        rows=ranked,
        pairs=pairs,
        detectable_diff=mdd,
        kendall_tau=float(finite_tau.mean()) if finite_tau.size else None,
    )
