"""Rankings speed (pytest-benchmark): a synthetic 10-model x 3-seed x 300-case table with
1000 shared case resamples, the same at the default count for 45 pairs (2000), the VALDO
ranking, and regenerating the committed leaderboard.

Run: ``pytest benchmarks/bench_rankings.py --benchmark-only``.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_rankings import case, table_of

from cmbbench.leaderboard import build_leaderboard
from cmbbench.leaderboard.rankings import rank_table
from cmbbench.leaderboard.valdo_ranking import valdo_ranking

REPO = Path(__file__).resolve().parents[1]


def synthetic_table(n_models: int = 10, n_seeds: int = 3, n_cases: int = 300):
    """Models of rising recall and falling FP rate, each seed its own draw, 0-4 CMBs a case."""
    rng = np.random.default_rng(0)
    n_gt = rng.integers(0, 5, n_cases)
    rows = {}
    for m in range(n_models):
        seeds = []
        for _ in range(n_seeds):
            tp = rng.binomial(n_gt, 0.4 + 0.04 * m)
            fp = rng.poisson(1.5 - 0.1 * m, n_cases)
            seeds.append(
                [
                    case(f"c{k:03d}", int(tp[k]), int(fp[k]), int(n_gt[k] - tp[k]))
                    for k in range(n_cases)
                ]
            )
        rows[f"model{m}"] = seeds
    return table_of(rows, n_bootstrap=1000)


def test_rankings_10_models_3_seeds_300_cases_1000_resamples(benchmark):
    table = synthetic_table()
    res = benchmark(rank_table, table, n_resamples=1000)
    assert res.n_resamples == 1000 and len(res.pairs) == 45 and res.detectable_diff > 0


def test_rankings_default_resamples_for_45_pairs(benchmark):
    table = synthetic_table()
    res = benchmark(rank_table, table)
    assert res.n_resamples == 2000  # 2 x 45 / 0.05 = 1800, rounded up to 2000


def test_valdo_ranking_10_models_300_cases(benchmark):
    table = synthetic_table()
    res = benchmark(valdo_ranking, table)
    assert res.metrics == ["f1", "count", "dice", "volume"]


def test_regenerate_committed_board(benchmark, tmp_path):
    records = REPO / "leaderboards" / "records"
    files = benchmark.pedantic(
        build_leaderboard, args=([records], tmp_path / "lb"), rounds=3, iterations=1
    )
    assert any(f.name == "leaderboard.md" for f in files)
