"""Post-processing: threshold + minimum component size, and its tuning on validation cases."""

from __future__ import annotations

import numpy as np
import pytest

from cmbbench.engine.postprocess import (
    GridPoint,
    best_grid_point,
    clean_probability,
    one_lesion_less,
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


def test_best_grid_point_reads_f1_to_within_one_lesion():
    grid = [
        GridPoint(0.5, 2, tp=30, fp=5, fn=10),  # F1 60/75 = 0.8   <- highest
        GridPoint(0.6, 1, tp=30, fp=6, fn=10),  # F1 60/76 = 0.789: one FP more, removes nothing
        GridPoint(0.7, 1, tp=30, fp=5, fn=11),  # F1 60/76 = 0.789: same F1, one FP fewer
        GridPoint(0.9, 1, tp=20, fp=1, fn=20),  # F1 40/61 = 0.656
    ]
    # one lesion less than the best (a TP becomes a FN): 58 / (75 - 1) = 0.784. Points 0-2 are
    # within it; the smallest minimum size wins, then the higher F1, then fewer FP.
    assert one_lesion_less(grid[0]) == pytest.approx(58 / 74)
    assert best_grid_point(grid) == grid[2]
    # a best point more than one lesion ahead keeps its larger minimum size
    clear = [GridPoint(0.5, 3, tp=30, fp=2, fn=10), GridPoint(0.5, 1, tp=31, fp=12, fn=9)]
    # 60/72 = 0.833; one lesion less 58/71 = 0.817; the other 62/83 = 0.747
    assert best_grid_point(clear) == clear[0]
    # exact ties (no lesion found anywhere): min size 1, then the higher threshold
    empty = [GridPoint(t, m, tp=0, fp=0, fn=5) for t in (0.5, 0.9) for m in (1, 3)]
    assert best_grid_point(empty) == GridPoint(0.9, 1, tp=0, fp=0, fn=5)
    assert grid[3].f1 == pytest.approx(40 / 61) and GridPoint(0.5, 1, 0, 0, 0).f1 == 0.0


def _case(case_id: str, label: np.ndarray, kind: str = "mask"):
    from cmbbench.cases import Case, CaseData

    return Case(
        case_id=case_id,
        affine=np.eye(4),
        shape=label.shape,
        label_kind=kind,
        loader=lambda: CaseData(image=np.zeros(label.shape, np.float32), label=label),
    )


def test_tune_postprocess_picks_the_grid_optimum():
    from cmbbench.engine.postprocess import postprocess_grid, tune_postprocess
    from cmbbench.scoring.evaluator import Evaluator

    # case a: one 27-voxel CMB predicted at 0.9, plus a 1-voxel false positive at 0.95
    gt_a = np.zeros((12, 12, 12), np.uint8)
    gt_a[1:4, 1:4, 1:4] = 1
    p_a = np.zeros((12, 12, 12), np.float32)
    p_a[1:4, 1:4, 1:4] = 0.9
    p_a[8, 8, 8] = 0.95
    # case b: a 2-voxel CMB predicted weakly (0.4), and a 3-voxel false positive at 0.6
    gt_b = np.zeros((12, 12, 12), np.uint8)
    gt_b[6:8, 1, 1] = 1
    p_b = np.zeros((12, 12, 12), np.float32)
    p_b[6:8, 1, 1] = 0.4
    p_b[9:12, 9, 9] = 0.6
    cases = [_case("a", gt_a), _case("b", gt_b)]
    grid = {
        (g.threshold, g.min_size): (g.tp, g.fp, g.fn)
        for g in postprocess_grid([p_a, p_b], cases, [0.3, 0.5, 0.7], [1, 2, 4])
    }
    # worked out by hand (two CMBs in all):
    assert grid[(0.3, 1)] == (2, 2, 0)  # everything: F1 4/6
    assert grid[(0.3, 2)] == (2, 1, 0)  # the singleton goes: F1 4/5 = 0.8  <- best
    assert grid[(0.5, 2)] == (1, 1, 1)  # 0.4 CMB lost, 3-voxel FP stays: F1 0.5
    assert grid[(0.7, 2)] == (1, 0, 1)  # only the big CMB: F1 2/3
    assert grid[(0.3, 4)] == (1, 0, 1)  # only the 27-voxel blob survives size 4
    # (0.3, 2) has the highest F1 (0.8), but with two CMBs one lesion less is F1 2/4 = 0.5:
    # (0.3, 1) at 4/6 is within one lesion of it and removes nothing, so it is chosen
    assert tune_postprocess([p_a, p_b], cases, [0.3, 0.5, 0.7], [1, 2, 4]) == (0.3, 1)
    assert tune_postprocess([p_a, p_b], cases, [0.3, 0.5, 0.7], [2, 4]) == (0.3, 2)
    # distance rule parameters pass through to scoring
    assert tune_postprocess(
        [p_a, p_b], cases, [0.3, 0.7], [2, 4], Evaluator("distance", {"max_distance_mm": 2.0})
    ) == (0.3, 2)


def test_tune_postprocess_bad_input():
    from cmbbench.engine.postprocess import tune_postprocess
    from cmbbench.errors import CmbbenchError, InputError

    gt = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(InputError, match=r"case 'a'.*differs"):
        tune_postprocess([np.zeros((4, 4, 5))], [_case("a", gt)], [0.5], [1])
    with pytest.raises(CmbbenchError, match="2 probability maps for 1 cases"):
        tune_postprocess([gt, gt], [_case("a", gt)], [0.5], [1])


def test_grid_scores_instance_labels_as_instances():
    # Two CMBs that touch (ids 1 and 2, side by side along x) and one prediction covering
    # both. Read as instances there are 2 CMBs: the merged prediction matches one of them
    # (tp 1, fn 1). Read as a binary mask they would be a single CMB (tp 1, fn 0), and an
    # instance map with values > 1 is not a valid binary mask at all.
    from cmbbench.engine.postprocess import postprocess_grid

    gt = np.zeros((10, 10, 10), np.uint16)
    gt[2:4, 4:6, 4:6] = 1
    gt[4:6, 4:6, 4:6] = 2
    prob = np.where(gt > 0, 0.9, 0.0).astype(np.float32)
    (point,) = postprocess_grid([prob], [_case("touching", gt, "instance")], [0.5], [1])
    assert (point.tp, point.fp, point.fn) == (1, 0, 1)
