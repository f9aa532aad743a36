"""Aggregation speed: 500 cases, 1000 case-bootstrap resamples (pytest-benchmark).

Run: ``pytest benchmarks/bench_metrics.py --benchmark-only``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_metrics import random_cases

from cmbbench.scoring.metrics import aggregate


def test_aggregate_500_cases_1000_resamples(benchmark):
    cases = random_cases(500, seed=1)
    aggregate(cases[:10], n_bootstrap=10)  # warm-up (imports)
    m = benchmark(aggregate, cases, n_bootstrap=1000)
    assert m["bootstrap"]["n_bootstrap"] == 1000
