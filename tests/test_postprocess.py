"""Post-processing: threshold + minimum component size, and its tuning on validation cases."""

from __future__ import annotations

import numpy as np
import pytest

from cmbbench.engine.postprocess import (
    GridPoint,
    best_grid_point,
    clean_probability,
)


def _prob() -> np.ndarray:
    p = np.zeros((12, 12, 12), np.float32)
    p[1:4, 1:4, 1:4] = 0.9  # 27-voxel blob
    p[8, 8, 8] = 0.95  # single voxel
    p[6:8, 1, 1] = 0.4  # 2-voxel blob below 0.5
    p[10, 10, 2] = 0.6
    p[11, 11, 3] = 0.7  # diagonal neighbour of (10, 10, 2): one component at 26-conn
    return p


def test_clean_threshold_and_min_size():
    p = _prob()
    out = clean_probability(p, threshold=0.5, min_size=1)
    # everything >= 0.5 kept with its own value; the 0.4 blob dropped
    np.testing.assert_array_equal(out, np.where(p >= 0.5, p, 0))
    out = clean_probability(p, threshold=0.5, min_size=2)
    # the single voxel (size 1) goes; the diagonal pair (size 2 at 26-conn) stays
    assert out[8, 8, 8] == 0 and out[10, 10, 2] == pytest.approx(0.6) and out[2, 2, 2] > 0
    out6 = clean_probability(p, threshold=0.5, min_size=2, connectivity=6)
    assert out6[10, 10, 2] == 0 and out6[11, 11, 3] == 0  # two singletons at 6-conn
    out = clean_probability(p, threshold=0.3, min_size=2)
    assert out[6, 1, 1] == pytest.approx(0.4)  # the 0.4 pair appears at threshold 0.3
    assert clean_probability(p, threshold=0.99).sum() == 0
    assert out.dtype == np.float32


def test_best_grid_point_prefers_f1_then_fewer_fp_then_conservative():
    grid = [
        GridPoint(0.5, 1, tp=3, fp=3, fn=1),  # F1 6/10 = 0.6
        GridPoint(0.7, 1, tp=2, fp=2, fn=2),  # F1 4/8 = 0.5
        GridPoint(0.6, 2, tp=3, fp=3, fn=1),  # same F1 and FP as the first, higher threshold
    ]
    assert best_grid_point(grid) == grid[2]
    assert grid[0].f1 == pytest.approx(0.6) and GridPoint(0.5, 1, 0, 0, 0).f1 == 0.0
