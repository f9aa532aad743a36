"""Leaderboard rankings: all pairs with Holm, rank intervals, stability, seed + case intervals.

Hand-made tables with hand-made case resamples (``resample_counts`` replaced, so every
number is worked out in a comment), then a seeded check of :func:`rank_table` against a
naive, loop-by-loop reference on a random table.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _case_records import make_case
from scipy.stats import kendalltau, rankdata

from cmbbench.leaderboard import rankings
from cmbbench.leaderboard.rankings import (
    average_ranks,
    holm,
    kendall_tau_b,
    rank_table,
    resamples_for,
    row_seed,
)
from cmbbench.leaderboard.store import GroupKey, RunEntry
from cmbbench.leaderboard.table import Row, Table
from cmbbench.scoring.bootstrap import percentile_ci
from cmbbench.scoring.records import CaseResult

KEY = GroupKey("synthetic", "1", "test", "overlap", "{}", "quick / cpu")


def case(cid: str, tp: int, fp: int, fn: int) -> CaseResult:
    return make_case(cid, tp + fn, tp + fp, tp)


def table_of(rows: dict[str, list[list[CaseResult]]], n_bootstrap: int = 0) -> Table:
    """A table whose rows are ``{model: [cases of seed 0, cases of seed 1, ...]}``, in order."""
    out = []
    for name, seeds in rows.items():
        runs = [
            RunEntry(
                path=Path(f"{name}-s{s}.json"),
                model=name,
                preset="quick",
                overrides={},
                hardware="cpu",
                hardware_class="cpu",
                dataset="synthetic",
                version="1",
                split="test",
                seed=s,
                rule="overlap",
                params={},
                cases=cases,
            )
            for s, cases in enumerate(seeds)
        ]
        out.append(Row(name, "quick", "cpu", runs, metrics={}, timings={}))
    n = max(len(c) for seeds in rows.values() for c in seeds)
    return Table(KEY, out, n_cases=n, n_bootstrap=n_bootstrap, bootstrap_seed=0)


def fake_resamples(by_size: dict[int, list[list[int]]]):
    """A stand-in for ``resample_counts`` returning hand-made count matrices by size."""

    def draw(n: int, b: int, seed: int) -> np.ndarray:
        w = np.array(by_size[n], dtype=np.float64)
        assert w.shape == (b, n)
        return w

    return draw


def test_hand_table_ranks_pairs_and_stability(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three cases with 2 CMBs each; rows listed B, A, C (one seed each):
    #   B: c1 TP1 FN1, c2 TP2, c3 TP2      -> TP5 FP0 FN1: F1 10/11
    #   A: c1 TP2,     c2 TP2, c3 FN2      -> TP4 FP0 FN2: F1 8/10 = 0.8
    #   C: c1 FP2 FN2, c2 TP1 FP1 FN1, c3 FN2 -> TP1 FP3 FN5: F1 2/10 = 0.2
    # observed ranks B 1, A 2, C 3. Four hand-made case resamples:
    #   w1 = (1,1,1): B 10/11, A 0.8, C 0.2                         ranks 1, 2, 3
    #   w2 = (3,0,0): B 6/9 (TP3 FN3), A 1, C 0 (FP6 FN6)           ranks 2, 1, 3
    #   w3 = (0,0,3): B 1, A 0 (FN6), C 0 (FN6)                     ranks 1, 2.5, 2.5
    #   w4 = (0,3,0): B 1, A 1, C 6/12 = 0.5 (TP3 FP3 FN3)          ranks 1.5, 1.5, 3
    table = table_of(
        {
            "B": [[case("c1", 1, 0, 1), case("c2", 2, 0, 0), case("c3", 2, 0, 0)]],
            "A": [[case("c1", 2, 0, 0), case("c2", 2, 0, 0), case("c3", 0, 0, 2)]],
            "C": [[case("c1", 0, 2, 2), case("c2", 1, 1, 1), case("c3", 0, 0, 2)]],
        }
    )
    w = [[1, 1, 1], [3, 0, 0], [0, 0, 3], [0, 3, 0]]
    monkeypatch.setattr(rankings, "resample_counts", fake_resamples({3: w, 1: [[1]] * 4}))
    res = rank_table(table, n_resamples=4)
    assert res is not None and res.n_cases == 3 and res.n_resamples == 4
    b, a, c = res.rows
    assert (b.f1, a.f1, c.f1) == pytest.approx((10 / 11, 0.8, 0.2))
    assert (b.rank, a.rank, c.rank) == (1.0, 2.0, 3.0)
    # mean ranks: B (1+2+1+1.5)/4 = 1.375, A (2+1+2.5+1.5)/4 = 1.75, C (3+3+2.5+3)/4 = 2.875
    assert (b.mean_rank, a.mean_rank, c.mean_rank) == pytest.approx((1.375, 1.75, 2.875))
    # rank intervals (2.5th / 97.5th percentile, inverted CDF: a rank that occurred):
    # B sorted (1, 1, 1.5, 2) -> [1, 2]; A (1, 1.5, 2, 2.5) -> [1, 2.5]; C (2.5, 3, 3, 3)
    assert (b.rank_ci, a.rank_ci, c.rank_ci) == ((1.0, 2.0), (1.0, 2.5), (2.5, 3.0))
    # P(rank 1): best in w1 B, w2 A, w3 B, w4 B and A tied (1/2 each)
    assert (b.p_first, a.p_first, c.p_first) == pytest.approx((2.5 / 4, 1.5 / 4, 0.0))
    # Kendall tau-b with the observed order (1, 2, 3): w1 1; w2 one of three pairs swapped
    # -> (1 + 1 - 1) / 3; w3 and w4 one tied pair, two concordant -> 2 / sqrt(3 * 2)
    assert res.kendall_tau == pytest.approx((1 + 1 / 3 + 2 * 2 / math.sqrt(6)) / 4)
    # pairs (upper row first): the differences in every resample
    d_ba = [10 / 11 - 0.8, 6 / 9 - 1, 1.0, 0.0]
    d_bc = [10 / 11 - 0.2, 6 / 9, 1.0, 0.5]
    d_ac = [0.6, 1.0, 0.0, 0.5]
    ba, bc, ac = res.pairs
    assert [(p.i, p.j) for p in res.pairs] == [(0, 1), (0, 2), (1, 2)]
    assert (ba.diff, bc.diff, ac.diff) == pytest.approx((10 / 11 - 0.8, 10 / 11 - 0.2, 0.6))
    # two-sided p = min(1, 2 (1 + smaller side) / (1 + 4)): B-A sides (d<=0: 2, d>=0: 3)
    # -> 1.2 -> 1; B-C (0, 4) -> 0.4; A-C (1, 4) -> 0.8
    assert (ba.p, bc.p, ac.p) == pytest.approx((1.0, 0.4, 0.8))
    # Holm over 3: sorted 0.4, 0.8, 1.0 -> 3 x 0.4 = 1.2 -> 1, then 1, 1
    assert (ba.p_holm, bc.p_holm, ac.p_holm) == (1.0, 1.0, 1.0)
    for pair, d in ((ba, d_ba), (bc, d_bc), (ac, d_ac)):
        assert pair.se == pytest.approx(np.std(d, ddof=1))
        assert pair.ci == pytest.approx(percentile_ci(d, 0.95))
    # detectable difference: 2 x the median of the three SEs
    ses = sorted(np.std(d, ddof=1) for d in (d_ba, d_bc, d_ac))
    assert res.detectable_diff == pytest.approx(2 * ses[1])
    # single-seed rows: the seed + case interval is the case interval of the row's F1
    assert b.seed_case_ci == pytest.approx(percentile_ci([10 / 11, 6 / 9, 1.0, 1.0], 0.95))
    assert res.diff(2, 0) == pytest.approx(-(10 / 11 - 0.2))


def test_hand_seed_and_case_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    # One row, two seeds, two cases with 2 CMBs each:
    #   seed 0: c1 TP2, c2 TP2 (perfect); seed 1: c1 FN2, c2 TP2 FP2
    # pooled over both seeds: TP6 FP2 FN2 -> F1 12/16 = 0.75
    # case resamples w and seed draws m (three of each, by hand):
    #   b1 w (1,1), m (1,1): TP6 FP2 FN2            -> 0.75
    #   b2 w (2,0), m (2,0): seed 0 twice on c1 x2   -> TP8: 1.0
    #   b3 w (0,2), m (0,2): seed 1 twice on c2 x2   -> TP8 FP8: 16/24
    # the case-only statistic (both seeds every time): b1 0.75, b2 TP4 FN4 -> 8/12,
    # b3 TP8 FP4 -> 16/20 = 0.8
    table = table_of(
        {
            "D": [
                [case("c1", 2, 0, 0), case("c2", 2, 0, 0)],
                [case("c1", 0, 0, 2), case("c2", 2, 2, 0)],
            ]
        }
    )
    w = [[1, 1], [2, 0], [0, 2]]
    monkeypatch.setattr(rankings, "resample_counts", fake_resamples({2: w}))
    res = rank_table(table, n_resamples=3)
    (d,) = res.rows
    assert d.f1 == pytest.approx(0.75)
    # percentile interval of (0.75, 1, 2/3): lo = 2/3 + 0.05 (0.75 - 2/3) = 0.670833...,
    # hi = 0.75 + 0.95 (1 - 0.75) = 0.9875
    assert d.seed_case_ci == pytest.approx([2 / 3 + 0.05 / 12, 0.9875])
    assert d.mean_rank == 1.0 and d.rank_ci == (1.0, 1.0) and d.p_first == 1.0
    assert res.pairs == [] and res.detectable_diff is None and res.kendall_tau is None


def test_holm_hand_values() -> None:
    # sorted 0.01, 0.03, 0.04, 0.2 -> 4 x 0.01 = 0.04, 3 x 0.03 = 0.09, 2 x 0.04 = 0.08 -> 0.09
    # (never below the one before), 1 x 0.2 = 0.2; back in the given order
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    # an undefined p is not part of the family: two p-values, 2 x 0.01, then 0.04
    assert holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]


def test_resamples_for_lets_holm_reach_alpha() -> None:
    # 9 rows -> 36 pairs: 2 x 36 / 0.05 = 1440 -> 2000; with it the smallest Holm p is
    # 36 x 2 / 2001 = 0.036 < 0.05, with 1000 it would be 36 x 2 / 1001 = 0.072
    assert resamples_for(1000, 36) == 2000
    assert 36 * 2 / 2001 < 0.05 < 36 * 2 / 1001
    assert resamples_for(50, 3) == 1000  # 2 x 3 / 0.05 = 120 -> 1000
    assert resamples_for(5000, 36) == 5000 and resamples_for(0, 36) == 0
    assert resamples_for(1000, 0) == 1000


def test_average_ranks_and_tau_match_scipy() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(50, 6)).astype(float)  # many ties
    x[rng.random(x.shape) < 0.1] = np.nan
    got = average_ranks(x)
    for b in range(x.shape[0]):
        ref = rankdata(-np.nan_to_num(x[b], nan=-np.inf), method="average")
        assert got[b] == pytest.approx(ref)
    obs = average_ranks(np.array([3.0, 1.0, 2.0, 2.0, 0.0, 5.0]))
    tau = kendall_tau_b(got, obs)
    for b in range(x.shape[0]):
        ref = kendalltau(got[b], obs).statistic
        assert (np.isnan(ref) and np.isnan(tau[b])) or tau[b] == pytest.approx(ref)


def random_table(rng: np.random.Generator, n_cases: int) -> Table:
    """Six rows, 1-3 seeds each, on ``n_cases`` cases with 0-4 CMBs; row "twin" repeats
    row "m0" (ties in every resample), row "silent" predicts nothing."""
    n_gt = rng.integers(0, 5, n_cases)
    rows: dict[str, list[list[CaseResult]]] = {}
    for r in range(4):
        seeds = []
        for _ in range(int(rng.integers(1, 4))):
            tp = rng.binomial(n_gt, 0.3 + 0.15 * r)
            fp = rng.poisson(0.3 + 0.4 * r, n_cases)
            seeds.append(
                [
                    case(f"c{k:03d}", int(tp[k]), int(fp[k]), int(n_gt[k] - tp[k]))
                    for k in range(n_cases)
                ]
            )
        rows[f"m{r}"] = seeds
    rows["twin"] = rows["m0"]
    rows["silent"] = [[case(f"c{k:03d}", 0, 0, int(n_gt[k])) for k in range(n_cases)]]
    return table_of(rows)


def naive_rankings(table: Table, b: int, seed: int) -> dict:
    """Loop-by-loop reference: the same draws as ``resample_counts`` (indices from
    ``default_rng(seed)``), every sum written out."""
    ids = sorted({c.case_id for c in table.rows[0].runs[0].cases})
    n = len(ids)
    idx = np.random.default_rng(seed).integers(0, n, size=(b, n))
    runs = [[{c.case_id: c for c in run.cases} for run in row.runs] for row in table.rows]

    def f1(seed_cases: list[dict], seed_list, case_list) -> float:
        tp = fp = fn = 0
        for s in seed_list:
            for k in case_list:
                c = seed_cases[s][ids[k]]
                tp, fp, fn = tp + c.tp, fp + c.fp, fn + c.fn
        den = 2 * tp + fp + fn
        return 2 * tp / den if den else math.nan

    n_rows = len(table.rows)
    obs = [f1(runs[r], range(len(runs[r])), range(n)) for r in range(n_rows)]
    f = np.array(
        [[f1(runs[r], range(len(runs[r])), idx[k]) for r in range(n_rows)] for k in range(b)]
    )
    hier = []
    for r, row in enumerate(table.rows):
        s_n = len(runs[r])
        sidx = np.random.default_rng(row_seed(seed, row)).integers(0, s_n, size=(b, s_n))
        hier.append([f1(runs[r], sidx[k], idx[k]) for k in range(b)])
    key = lambda v: rankdata(-np.nan_to_num(np.asarray(v), nan=-np.inf), method="average")  # noqa: E731
    ranks = np.array([key(f[k]) for k in range(b)])
    rank_obs = key(obs)
    taus = [kendalltau(ranks[k], rank_obs).statistic for k in range(b)]
    first = np.zeros(n_rows)
    for k in range(b):
        v = np.nan_to_num(f[k], nan=-np.inf)
        best = [r for r in range(n_rows) if v[r] == v.max()]
        for r in best:
            first[r] += 1 / len(best) / b
    pairs = []
    for i in range(n_rows):
        for j in range(i + 1, n_rows):
            d = [f[k, i] - f[k, j] for k in range(b)]
            d = [x for x in d if not math.isnan(x)]
            side = min(sum(x <= 0 for x in d), sum(x >= 0 for x in d))
            p = min(1.0, 2 * (1 + side) / (1 + len(d)))
            pairs.append((obs[i] - obs[j], np.quantile(d, [0.025, 0.975]), np.std(d, ddof=1), p))
    # Holm step-down, written out
    order = sorted(range(len(pairs)), key=lambda k: pairs[k][3])
    adj, running = [0.0] * len(pairs), 0.0
    for pos, k in enumerate(order):
        running = max(running, min(1.0, (len(pairs) - pos) * pairs[k][3]))
        adj[k] = running
    sorted_ranks = np.sort(ranks, axis=0)
    lo = sorted_ranks[math.ceil(0.025 * b) - 1]
    hi = sorted_ranks[math.ceil(0.975 * b) - 1]
    return {
        "obs": obs,
        "rank_obs": rank_obs,
        "mean_rank": ranks.mean(axis=0),
        "lo": lo,
        "hi": hi,
        "first": first,
        "tau": float(np.nanmean(taus)),
        "hier": [np.quantile([x for x in h if not math.isnan(x)], [0.025, 0.975]) for h in hier],
        "pairs": pairs,
        "holm": adj,
        "mdd": 2 * float(np.median([p[2] for p in pairs])),
    }


def test_rank_table_matches_naive_reference() -> None:
    table = random_table(np.random.default_rng(11), n_cases=25)
    b = 250  # 0.025 b and 0.975 b are not whole numbers: the percentile rank is unambiguous
    got = rank_table(table, n_resamples=b, seed=5)
    ref = naive_rankings(table, b, seed=5)
    assert [r.f1 for r in got.rows] == pytest.approx(ref["obs"])
    assert [r.rank for r in got.rows] == pytest.approx(list(ref["rank_obs"]))
    assert [r.mean_rank for r in got.rows] == pytest.approx(list(ref["mean_rank"]))
    assert [r.rank_ci for r in got.rows] == [
        (lo, hi) for lo, hi in zip(ref["lo"], ref["hi"], strict=True)
    ]
    assert [r.p_first for r in got.rows] == pytest.approx(list(ref["first"]))
    assert sum(r.p_first for r in got.rows) == pytest.approx(1.0)
    assert got.kendall_tau == pytest.approx(ref["tau"])
    for r, h in zip(got.rows, ref["hier"], strict=True):
        assert r.seed_case_ci == pytest.approx(list(h))
    assert len(got.pairs) == len(ref["pairs"]) == 15
    for p, (diff, ci, se, pv), adj in zip(got.pairs, ref["pairs"], ref["holm"], strict=True):
        assert (p.diff, p.se, p.p, p.p_holm) == pytest.approx((diff, se, pv, adj))
        assert p.ci == pytest.approx(list(ci))
    assert got.detectable_diff == pytest.approx(ref["mdd"])
    # "twin" repeats m0: they tie in every resample (equal mean rank, difference 0)
    m0, twin = got.rows[0], got.rows[4]
    assert m0.mean_rank == twin.mean_rank and got.pair(0, 4).diff == 0.0


def test_zero_resamples_and_unshared_cases() -> None:
    table = random_table(np.random.default_rng(2), n_cases=8)
    res = rank_table(table, n_resamples=0)
    assert res.n_resamples == 0 and res.detectable_diff is None and res.kendall_tau is None
    assert all(r.rank_ci is None and r.p_first is None for r in res.rows)
    assert all(p.p is None and p.p_holm is None for p in res.pairs)
    # a row lacking a case: every row is ranked on the cases all rows hold
    table.rows[1].runs[0].cases = table.rows[1].runs[0].cases[1:]
    assert rank_table(table, n_resamples=10).n_cases == 7
    table.rows[1].runs[0].cases = [case("other", 1, 0, 0)]
    assert rank_table(table, n_resamples=10) is None
