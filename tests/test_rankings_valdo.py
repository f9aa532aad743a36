"""VALDO 2021's significance-count ranking (``--ranking valdo``): hand-worked tests, the exact
signed-rank test against scipy, and a seeded check against a naive reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _case_records import make_case
from scipy.stats import rankdata, wilcoxon
from test_rankings import case, random_table, table_of

from cmbbench.leaderboard.valdo_ranking import (
    MIN_CASES_WILCOXON,
    exact_signed_rank_p,
    one_sided_p,
    order_by_valdo,
    per_case_metrics,
    significance_ranks,
)
from cmbbench.scoring.table import CaseTable


def test_exact_signed_rank_hand_values() -> None:
    # d = (1, 2, -3): ranks 1, 2, 3, T+ = 1 + 2 = 3. The 8 sign patterns give T+ = subset
    # sums of {1, 2, 3}: 0, 1, 2, 3, 3, 4, 5, 6 -> P(T+ >= 3) = 5/8
    assert exact_signed_rank_p(np.array([1.0, 2.0, -3.0])) == pytest.approx(5 / 8)
    # d = (1, -1, 2, 0): the zero is dropped; |d| mid-ranks 1.5, 1.5, 3, T+ = 1.5 + 3 = 4.5;
    # subset sums of {1.5, 1.5, 3}: 0, 1.5, 1.5, 3, 3, 4.5, 4.5, 6 -> P(T+ >= 4.5) = 3/8
    assert exact_signed_rank_p(np.array([1.0, -1.0, 2.0, 0.0])) == pytest.approx(3 / 8)
    # all six positive, distinct: only the all-positive pattern reaches T+ = 21 -> 1/64
    assert exact_signed_rank_p(np.arange(1.0, 7.0)) == pytest.approx(1 / 64)
    assert exact_signed_rank_p(np.zeros(4)) == 1.0


def brute_force_p(d: np.ndarray) -> float:
    """Every sign flip of the non-zero differences written out: P(T+ >= observed T+)."""
    d = d[d != 0]
    r = rankdata(np.abs(d))
    t = r[d > 0].sum()
    flips = list(itertools.product((0, 1), repeat=d.size))
    return sum(float(np.dot(f, r)) >= t - 1e-9 for f in flips) / len(flips)


def test_exact_signed_rank_matches_brute_force_and_scipy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(3, 11))
        d = rng.integers(-3, 4, n).astype(float)  # ties and zeros
        if not np.any(d != 0):
            continue
        assert exact_signed_rank_p(d) == pytest.approx(brute_force_p(d))
    d = rng.permutation(np.arange(1.0, 13.0)) * rng.choice([-1, 1], 12)  # no ties, no zeros
    assert exact_signed_rank_p(d) == pytest.approx(
        wilcoxon(d, alternative="greater", method="exact").pvalue
    )


def test_one_sided_p_switches_to_scipy_wilcoxon_at_20() -> None:
    rng = np.random.default_rng(4)
    d = np.round(rng.normal(0.3, 1.0, MIN_CASES_WILCOXON), 1)
    assert one_sided_p(d) == pytest.approx(wilcoxon(d, alternative="greater").pvalue)
    assert one_sided_p(d[:-1]) == pytest.approx(exact_signed_rank_p(d[:-1]))
    # undefined entries are left out; none defined -> no test; all zero -> p = 1
    assert one_sided_p(np.array([np.nan, 1.0, 2.0])) == pytest.approx(exact_signed_rank_p([1, 2]))
    assert one_sided_p(np.array([np.nan])) is None
    assert one_sided_p(np.zeros(25)) == 1.0


def test_significance_ranks_hand() -> None:
    # six cases; X exceeds Y by 0.1, 0.2, ..., 0.6 (all positive, distinct: exact p = 1/64);
    # Z equals Y (every difference 0: p = 1 both ways)
    x = np.arange(1.0, 7.0) + 10
    y = x - np.arange(1.0, 7.0) / 10
    values = np.stack([x, y, y.copy()])
    p, wins, ranks = significance_ranks(values, higher_is_better=True)
    assert p[0, 1] == pytest.approx(1 / 64) and p[0, 2] == pytest.approx(1 / 64)
    assert p[1, 0] == pytest.approx(1.0) and p[1, 2] == 1.0 and np.isnan(p[0, 0])
    # wins X 2, Y 0, Z 0 -> ranks 3 + 1 - rankdata(2, 0, 0) = 4 - (3, 1.5, 1.5)
    assert list(wins) == [2, 0, 0] and list(ranks) == [1.0, 2.5, 2.5]
    # lower is better: Y and Z each beat X, tie with each other -> wins (0, 1, 1)
    _, wins, ranks = significance_ranks(values, higher_is_better=False)
    assert list(wins) == [0, 1, 1] and list(ranks) == [3.0, 1.5, 1.5]


def test_per_case_metrics_hand() -> None:
    # one case, 2 CMBs of 5 voxels each (gt 10 voxels), voxels 1 x 1 x 2 mm (2 mm³):
    #   seed 0: 2 predictions of 6 voxels, one matching with overlap 6 -> TP1 FP1 FN1,
    #           pred 12 voxels, intersection 6
    #   seed 1: nothing predicted -> TP0 FP0 FN2
    # seed-averaged: TP 0.5, FP 0.5, FN 1.5 -> F1 1 / (1 + 0.5 + 1.5) = 1/3;
    # n_pred 1 -> |1 - 2| = 1; Dice 2 x 3 / (10 + 6) = 0.375; volume |6 - 10| x 2 = 8 mm³
    kw = {"gt_sizes": [5, 5], "spacing": (1.0, 1.0, 2.0)}
    s0 = make_case("c1", 2, 2, 1, pred_sizes=[6, 6], overlaps=[6], **kw)
    s1 = make_case("c1", 2, 0, 0, **kw)
    m = per_case_metrics([CaseTable([s0]), CaseTable([s1])])
    assert (m["f1"][0], m["count"][0]) == pytest.approx((1 / 3, 1.0))
    assert (m["dice"][0], m["volume"][0]) == pytest.approx((0.375, 8.0))
    # seed 0 alone: F1 2/4, count 0, Dice 12/22, volume 2 voxels = 4 mm³
    m = per_case_metrics([CaseTable([s0])])
    assert [m[k][0] for k in ("f1", "count", "dice", "volume")] == pytest.approx(
        [0.5, 0.0, 12 / 22, 4.0]
    )


def test_hand_table_valdo_order() -> None:
    # Rows listed L, H on six cases with 2 CMBs of 10 voxels each (1 mm³ voxels):
    #   L finds 1 CMB per case and adds 1 FP of 20 voxels: F1 2/4, count |2 - 2| = 0,
    #     Dice 2 x 10 / (20 + 30) = 0.4, volume |30 - 20| = 10;
    #   H finds both with 10-voxel predictions: F1 1, count 0, Dice 1, volume 0.
    # F1, Dice, volume: H is better on all six cases (exact p 1/64 < 0.05, a win; L never
    # wins); count: every difference 0 (p 1 both ways).
    # wins H (1, 0, 1, 1), L (0, 0, 0, 0): metric ranks H (1, 1.5, 1, 1), L (2, 1.5, 2, 2)
    # -> final H 4.5 / 4 = 1.125, L 7.5 / 4 = 1.875: H moves to the top
    low = [make_case(f"c{k}", 2, 2, 1, pred_sizes=[10, 20]) for k in range(6)]
    high = [make_case(f"c{k}", 2, 2, 2) for k in range(6)]
    table = table_of({"L": [low], "H": [high]})
    res = order_by_valdo(table)
    assert [r.model for r in table.rows] == ["H", "L"]
    assert list(res.final) == [1.125, 1.875] and res.metrics == ["f1", "count", "dice", "volume"]
    h, low_row = table.rows
    assert h.valdo["wins"] == {"f1": 1, "count": 0, "dice": 1, "volume": 1}
    assert low_row.valdo["ranks"] == {"f1": 2.0, "count": 1.5, "dice": 2.0, "volume": 2.0}
    assert res.p["f1"][0, 1] == pytest.approx(1 / 64)  # reordered with the rows


def test_point_annotations_leave_out_dice_and_volume() -> None:
    # no voxels: Dice and volume are undefined, the ranking uses F1 and count only
    cases = [make_case(f"c{k}", 1, 1, 1) for k in range(3)]
    table = table_of({"a": [cases], "b": [[case(f"c{k}", 0, 0, 1) for k in range(3)]]})
    for row in table.rows:
        for c in row.runs[0].cases:
            c.gt_voxels = c.pred_voxels = c.intersection_voxels = 0
    res = order_by_valdo(table)
    assert res.metrics == ["f1", "count"] and set(res.skipped) == {"dice", "volume"}


def naive_valdo(values: dict[str, np.ndarray], higher: dict[str, bool]) -> np.ndarray:
    """VALDO's loop (``ranking_comparison.py``), scipy's Wilcoxon on every ordered pair."""
    final = []
    for name, v in values.items():
        n = v.shape[0]
        wins = np.zeros(n)
        for a, b in itertools.permutations(range(n), 2):
            d = v[a] - v[b]
            d = d[np.isfinite(d)]
            if not np.any(d != 0):
                continue
            alt = "greater" if higher[name] else "less"
            if wilcoxon(d, alternative=alt).pvalue < 0.05:
                wins[a] += 1
        final.append(n + 1 - rankdata(wins))
    return np.mean(final, axis=0)


def test_valdo_ranking_matches_naive_reference() -> None:
    table = random_table(np.random.default_rng(8), n_cases=30)  # >= 20: Wilcoxon
    models = [r.model for r in table.rows]
    from cmbbench.leaderboard.rankings import shared_cases

    _, tables = shared_cases(table)
    per_row = [per_case_metrics(ts) for ts in tables]
    values = {m: np.stack([p[m] for p in per_row]) for m in ("f1", "count", "dice", "volume")}
    ref = naive_valdo(values, {"f1": True, "count": False, "dice": True, "volume": False})
    res = order_by_valdo(table)
    by_model = {r.model: r.valdo["final"] for r in table.rows}
    assert [by_model[m] for m in models] == pytest.approx(list(ref))
    assert list(res.final) == sorted(res.final)  # rows now in VALDO order
