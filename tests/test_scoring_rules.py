"""Hand-made tiny cases for every matching rule; each answer is worked out in a comment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmbbench.errors import InputError, UnknownNameError
from cmbbench.scoring.case import score_case

SHAPE = (12, 12, 12)
ONE = (1.0, 1.0, 1.0)


def vol(*boxes, value=1, dtype=np.uint8, shape=SHAPE):
    """A volume with each box ``((x0, x1), (y0, y1), (z0, z1))`` (half-open) set to ``value``."""
    a = np.zeros(shape, dtype=dtype)
    for (x0, x1), (y0, y1), (z0, z1) in boxes:
        a[x0:x1, y0:y1, z0:z1] = value
    return a


def cube(lo, hi):
    return ((lo, hi), (lo, hi), (lo, hi))


def vox(x, y, z):
    return ((x, x + 1), (y, y + 1), (z, z + 1))


def counts(r):
    return (r.n_gt, r.n_pred, r.tp, r.fp, r.fn)


# ------------------------------------------------------------------ overlap rule
def test_overlap_hit():
    # gt cube 2..3 (8 voxels), pred cube 3..4 (8 voxels): they share voxel (3,3,3) only.
    # -> 1 TP; pair overlap 1, Dice 2*1/(8+8) = 0.125; centres (2.5,)*3 and (3.5,)*3 ->
    # distance sqrt(3) mm.
    r = score_case(vol(cube(3, 5)), vol(cube(2, 4)), spacing=ONE)
    assert counts(r) == (1, 1, 1, 0, 0)
    (p,) = r.pairs
    assert (p.pred_id, p.gt_id, p.overlap_voxels) == (1, 1, 1)
    assert p.dice == pytest.approx(0.125)
    assert p.distance_mm == pytest.approx(math.sqrt(3))
    assert r.gt[0].voxels == 8 and r.gt[0].volume_mm3 == 8.0
    assert r.gt[0].diameter_mm == pytest.approx((6 * 8 / math.pi) ** (1 / 3))
    assert (r.gt_voxels, r.pred_voxels, r.intersection_voxels) == (8, 8, 1)
    assert r.gt[0].matched and r.pred[0].matched


def test_overlap_miss_and_min_overlap():
    # pred far away: 1 FN + 1 FP
    r = score_case(vol(cube(8, 10)), vol(cube(2, 4)), spacing=ONE)
    assert counts(r) == (1, 1, 0, 1, 1)
    assert not r.pairs
    # the 1-voxel overlap of test_overlap_hit is below min_overlap_voxels=2: a miss
    r = score_case(vol(cube(3, 5)), vol(cube(2, 4)), spacing=ONE, min_overlap_voxels=2)
    assert counts(r) == (1, 1, 0, 1, 1)
    assert r.params["min_overlap_voxels"] == 2


def test_overlap_two_predictions_on_one_cmb():
    # gt: x 2..5, y,z 2..3 (16 voxels). pred A: x 2..3 (overlap 8); pred B: x 5..6 (overlap 4
    # at x=5); x=4 is empty so A and B are separate components. One-to-one: A is the TP
    # (larger overlap), B is FP.
    gt = vol(((2, 6), (2, 4), (2, 4)))
    pred = vol(((2, 4), (2, 4), (2, 4)), ((5, 7), (2, 4), (2, 4)))
    r = score_case(pred, gt, spacing=ONE)
    assert counts(r) == (1, 2, 1, 1, 0)
    (p,) = r.pairs
    assert (p.pred_id, p.gt_id, p.overlap_voxels) == (1, 1, 8)


def test_overlap_prediction_merging_two_cmbs():
    # gt 1: x 2..3, gt 2: x 6..7 (gap at x 4,5); one pred x 2..7 covers both: 1 TP, 1 FN.
    gt = vol(((2, 4), (2, 4), (2, 4)), ((6, 8), (2, 4), (2, 4)))
    pred = vol(((2, 8), (2, 4), (2, 4)))
    r = score_case(pred, gt, spacing=ONE)
    assert counts(r) == (2, 1, 1, 0, 1)
    assert len(r.pairs) == 1


def test_corner_touch_26_vs_6():
    # pred voxels (2,2,2) and (3,3,3) touch by one corner; gt is voxel (2,2,2).
    # 26-connectivity: the prediction is one component -> 1 TP, 0 FP.
    # 6-connectivity: two components -> 1 TP, 1 FP.
    pred = vol(vox(2, 2, 2), vox(3, 3, 3))
    gt = vol(vox(2, 2, 2))
    r26 = score_case(pred, gt, spacing=ONE, connectivity=26)
    r18 = score_case(pred, gt, spacing=ONE, connectivity=18)
    r6 = score_case(pred, gt, spacing=ONE, connectivity=6)
    assert counts(r26) == (1, 1, 1, 0, 0)
    assert counts(r18) == (1, 2, 1, 1, 0)  # a corner is not an 18-neighbour either
    assert counts(r6) == (1, 2, 1, 1, 0)
    assert r26.params["connectivity"] == 26 and r6.params["connectivity"] == 6
    # edge touch (2,2,2)-(3,3,2): 18 joins, 6 does not
    pred_e = vol(vox(2, 2, 2), vox(3, 3, 2))
    assert score_case(pred_e, gt, spacing=ONE, connectivity=18).n_pred == 1
    assert score_case(pred_e, gt, spacing=ONE, connectivity=6).n_pred == 2


@pytest.mark.parametrize("rule", ["overlap", "distance", "point"])
def test_empty_inputs(rule):
    kw = {"max_distance_mm": 3.0} if rule != "overlap" else {}
    gt = vol(cube(2, 4), cube(7, 9))
    pred = vol(cube(2, 4))
    # empty prediction: every CMB is FN; precision undefined
    r = score_case(vol(), gt, spacing=ONE, rule=rule, **kw)
    assert counts(r) == (2, 0, 0, 0, 2) and math.isnan(r.precision) and r.recall == 0
    # empty ground truth: every prediction is FP; recall undefined
    r = score_case(pred, vol(), spacing=ONE, rule=rule, **kw)
    assert counts(r) == (0, 1, 0, 1, 0) and math.isnan(r.recall)
    # both empty: scored (0 FP), every rate undefined
    r = score_case(vol(), vol(), spacing=ONE, rule=rule, **kw)
    assert counts(r) == (0, 0, 0, 0, 0) and math.isnan(r.f1)
    assert r.shape == SHAPE


# ------------------------------------------------------------------ distance rule
def test_distance_anisotropic_spacing_flips_outcome():
    # gt voxel (5,5,5), pred voxel (5,5,7): 2 voxels apart along z.
    # spacing 1 mm: 2 mm <= 3 mm -> TP. spacing z = 2 mm: 4 mm > 3 mm -> FP + FN.
    gt, pred = vol(vox(5, 5, 5)), vol(vox(5, 5, 7))
    r = score_case(pred, gt, spacing=(1, 1, 1), rule="distance", max_distance_mm=3.0)
    assert counts(r) == (1, 1, 1, 0, 0)
    assert r.pairs[0].distance_mm == pytest.approx(2.0)
    assert r.pairs[0].overlap_voxels == 0 and r.pairs[0].dice == 0.0
    r = score_case(pred, gt, spacing=(1, 1, 2), rule="distance", max_distance_mm=3.0)
    assert counts(r) == (1, 1, 0, 1, 1)
    # the boundary is inclusive (<=): 4 mm at max 4 mm is a match
    r = score_case(pred, gt, spacing=(1, 1, 2), rule="distance", max_distance_mm=4.0)
    assert r.tp == 1


def test_distance_default_is_5mm_and_recorded():
    # 6 voxels apart at 1 mm: outside the default 5 mm
    r = score_case(vol(vox(5, 5, 0)), vol(vox(5, 5, 6)), spacing=ONE, rule="distance")
    assert r.params["max_distance_mm"] == 5.0 and r.tp == 0


def test_distance_optimal_assignment_beats_greedy():
    # points on the x axis (mm). CMBs A=0, B=3.9; predictions P1=1 (1 from A, 2.9 from B),
    # P2=-2.5 (2.5 from A, 6.4 from B); max 3 mm. Greedy nearest-first pairs P1-A and leaves
    # P2 and B unmatched (1 TP); the optimal assignment pairs P2-A and P1-B (2 TP).
    gt = np.array([[0.0, 0, 0], [3.9, 0, 0]])
    pred = np.array([[1.0, 0, 0], [-2.5, 0, 0]])
    r = score_case(pred, gt, spacing=ONE, rule="distance", max_distance_mm=3.0)
    assert counts(r) == (2, 2, 2, 0, 0)
    assert {(p.pred_id, p.gt_id) for p in r.pairs} == {(2, 1), (1, 2)}
    assert sum(p.distance_mm for p in r.pairs) == pytest.approx(2.5 + 2.9)


def test_distance_two_predictions_one_cmb_takes_the_closest():
    # CMB at 0; predictions at 1 mm and 2 mm (both within 3): 1 TP (the 1 mm one), 1 FP.
    gt = np.array([[0.0, 0, 0]])
    pred = np.array([[0.0, 2, 0], [0.0, 0, 1]])
    r = score_case(pred, gt, spacing=ONE, rule="distance", max_distance_mm=3.0)
    assert counts(r) == (1, 2, 1, 1, 0)
    assert r.pairs[0].pred_id == 2 and r.pairs[0].distance_mm == pytest.approx(1.0)


def test_centres_use_the_affine():
    # LAS-like affine: x flipped, 0.5 mm in-plane, 2 mm slices, translated.
    aff = np.array([[-0.5, 0, 0, 10.0], [0, 0.5, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    gt = vol(vox(4, 6, 3))
    r = score_case(gt.copy(), gt, affine=aff)
    # world = (10 - 0.5*4, -20 + 0.5*6, 5 + 2*3) = (8, -17, 11)
    assert r.gt[0].centre_mm == pytest.approx((8.0, -17.0, 11.0))
    assert r.spacing == (0.5, 0.5, 2.0)
    assert r.gt[0].volume_mm3 == pytest.approx(0.5)


# ------------------------------------------------------------------ valdo rule
def test_valdo_strict_threshold():
    # gt voxel (5,5,5), pred voxel (5,5,7): distance exactly 2 mm. The official rule needs
    # distance < threshold: 2.0 is not < 2.0 -> FP + FN, F1 = 0 / (1 + 1 + 0) = 0.
    gt, pred = vol(vox(5, 5, 5)), vol(vox(5, 5, 7))
    r = score_case(pred, gt, spacing=ONE, rule="valdo", max_distance_mm=2.0)
    assert (r.tp, r.fp, r.fn) == (0, 1, 1) and r.valdo_f1 == 0.0
    r = score_case(pred, gt, spacing=ONE, rule="valdo", max_distance_mm=2.0001)
    assert (r.tp, r.fp, r.fn) == (1, 0, 0) and r.valdo_f1 == 1.0
    assert r.params["max_distance_mm"] == 2.0001


def test_valdo_exact_tie_makes_two_tps():
    # one CMB at (5,5,5); predictions at (5,5,3) and (5,5,7), both exactly 2 mm away and
    # < 3: both claim it at the same minimum distance -> 2 TP, 0 FP, 0 FN (tp + fn = 2 > n_gt
    # = 1, the official behaviour); F1 = 4 / (0 + 0 + 4) = 1.
    gt = vol(vox(5, 5, 5))
    pred = vol(vox(5, 5, 3), vox(5, 5, 7))
    r = score_case(pred, gt, spacing=ONE, rule="valdo", max_distance_mm=3.0)
    assert (r.n_gt, r.n_pred, r.tp, r.fp, r.fn) == (1, 2, 2, 0, 0)
    assert r.valdo_f1 == 1.0
    assert len(r.pairs) == 2
    # the per-case CSV columns: recall stays TP / n_gt = 2 (not TP / (TP + FN) = 1), precision
    # 2 / 2 = 1, F1 = 4 / 4 = 1
    assert (r.recall, r.precision, r.f1) == (2.0, 1.0, 1.0)
    # not a tie: predictions 2 and 3 mm away -> the closer is TP, the other FP;
    # F1 = 2 / (0 + 1 + 2) = 2/3
    pred = vol(vox(5, 5, 3), vox(5, 5, 8))
    r = score_case(pred, gt, spacing=ONE, rule="valdo", max_distance_mm=4.0)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.valdo_f1 == pytest.approx(2 / 3)


def test_valdo_nearest_claiming_is_not_optimal_matching():
    # CMBs at z=5 and z=10; prediction a at z=5 (0 mm from CMB 1), b at z=7 (2 mm from CMB 1,
    # 3 mm from CMB 2). Threshold 4: both claim their nearest, CMB 1; a is closer -> TP, b FP,
    # CMB 2 unclaimed -> FN. valdo: TP 1, FP 1, FN 1, F1 = 2/(1+1+2) = 0.5.
    # The distance rule (one-to-one optimal) pairs b with CMB 2 instead: 2 TP.
    gt = vol(vox(5, 5, 5), vox(5, 5, 10))
    pred = vol(vox(5, 5, 5), vox(5, 5, 7))
    r = score_case(pred, gt, spacing=ONE, rule="valdo", max_distance_mm=4.0)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1) and r.valdo_f1 == 0.5
    d = score_case(pred, gt, spacing=ONE, rule="distance", max_distance_mm=4.0)
    assert (d.tp, d.fp, d.fn) == (2, 0, 0)


def test_valdo_uses_index_times_spacing_not_affine():
    # the same voxels under a flipped, translated affine with the same voxel sizes give the
    # same result; the index x spacing centre is stored separately from the world centre
    gt, pred = vol(vox(5, 5, 5)), vol(vox(5, 5, 7))
    aff = np.array([[-1.0, 0, 0, 50], [0, 1.0, 0, -3], [0, 0, 2.0, 7], [0, 0, 0, 1]])
    r = score_case(pred, gt, affine=aff, rule="valdo", max_distance_mm=4.5)
    # distance (index x spacing) = 2 * 2 mm = 4 mm < 4.5 -> TP
    assert (r.tp, r.fp, r.fn) == (1, 0, 0)
    assert r.gt[0].centre_vox_mm == (5.0, 5.0, 10.0)
    assert r.gt[0].centre_mm == (45.0, 2.0, 17.0)


def test_valdo_f1_conventions_and_probability_binarisation():
    gt = vol(vox(5, 5, 5))
    # empty ground truth -> NaN (prediction or not)
    r = score_case(vol(vox(1, 1, 1)), vol(), spacing=ONE, rule="valdo", max_distance_mm=2.0)
    assert (r.tp, r.fp, r.fn) == (0, 1, 0) and math.isnan(r.valdo_f1)
    r = score_case(vol(), vol(), spacing=ONE, rule="valdo", max_distance_mm=2.0)
    assert math.isnan(r.valdo_f1)
    # empty prediction, non-empty ground truth -> 0
    r = score_case(vol(), gt, spacing=ONE, rule="valdo", max_distance_mm=2.0)
    assert r.valdo_f1 == 0.0 and r.fn == 1
    # a probability of exactly 0.5 is foreground (>= 0.5); 0.49 is not
    prob = vol(vox(5, 5, 5), value=0.5, dtype=np.float32) + vol(
        vox(1, 1, 1), value=0.49, dtype=np.float32
    )
    r = score_case(prob, gt, spacing=ONE, rule="valdo", max_distance_mm=1.0)
    assert (r.n_pred, r.tp, r.fp) == (1, 1, 0)


def test_valdo_requires_threshold_and_fixed_settings():
    gt = vol(vox(5, 5, 5))
    with pytest.raises(InputError, match="valdo rule needs its distance threshold"):
        score_case(gt, gt, spacing=ONE, rule="valdo")
    with pytest.raises(InputError, match="connectivity 26"):
        score_case(gt, gt, spacing=ONE, rule="valdo", max_distance_mm=1, connectivity=6)


# ------------------------------------------------------------------ point rule
def test_point_rule_containment_and_distance():
    # pred component: box x 2..7, y,z 2..3 (centre (4.5, 2.5, 2.5)).
    # point A (2, 2, 2): inside the box (2.9 mm from its centre) -> candidate by containment.
    # point B (4.5, 2.5, 2.5): inside as well; both inside one prediction -> 1 TP, 1 FN.
    # with max 3 mm, the second pred (voxel (10,10,10)) gets point C (10, 10, 8) (2 mm) -> TP.
    pred = vol(((2, 8), (2, 4), (2, 4)), vox(10, 10, 10))
    pts = np.array([[2.0, 2, 2], [4.5, 2.5, 2.5], [10, 10, 8]])
    r = score_case(pred, pts, spacing=ONE, rule="point")
    # containment only (no max distance): A or B with the box -> 1 TP; C misses -> 2 FN, 1 FP
    assert counts(r) == (3, 2, 1, 1, 2)
    # optimal: the box takes the point nearest its centre (B, 0 mm)
    assert (r.pairs[0].pred_id, r.pairs[0].gt_id) == (1, 2)
    r = score_case(pred, pts, spacing=ONE, rule="point", max_distance_mm=3.0)
    assert counts(r) == (3, 2, 2, 0, 1)
    assert r.params["max_distance_mm"] == 3.0


def test_point_rule_with_point_predictions():
    # gt points at 0 and 10 mm; scored predicted points at 1 mm (score 0.9) and 20 mm (0.2).
    # max 2 mm: 1 TP (1 mm), 1 FP, 1 FN. Scores are kept per predicted lesion.
    gt = np.array([[0.0, 0, 0], [10.0, 0, 0]])
    pred = np.array([[1.0, 0, 0], [20.0, 0, 0]])
    r = score_case(pred, gt, spacing=ONE, rule="point", max_distance_mm=2.0, pred_scores=[0.9, 0.2])
    assert counts(r) == (2, 2, 1, 1, 1)
    assert [p.score for p in r.pred] == [0.9, 0.2]
    with pytest.raises(InputError, match="needs max_distance_mm"):
        score_case(pred, gt, spacing=ONE, rule="point")


# ------------------------------------------------------------------ ignore, kinds, scores
def test_ignore_mask_drops_unmatched_predictions_only():
    # CMB cube 2..3; preds: P1 on the CMB (TP, also inside the ignore box), P2 at (8,8,8)
    # inside the ignore box -> dropped (neither TP nor FP), P3 at (10,1,1) outside -> FP.
    gt = vol(cube(2, 4))
    pred = vol(cube(2, 4), vox(8, 8, 8), vox(10, 1, 1))
    ignore = vol(cube(2, 10)).astype(bool)
    r = score_case(pred, gt, spacing=ONE, ignore=ignore)
    assert (r.n_gt, r.n_pred, r.tp, r.fp, r.fn, r.n_ignored) == (1, 2, 1, 1, 0, 1)
    assert [p.attrs.get("ignore", False) for p in r.pred] == [False, True, False]
    r.check()


def test_probability_scores_and_float_mask():
    # two components with max probabilities 0.9 and 0.6; 0.3 voxels are below threshold.
    pred = vol(cube(2, 4), value=0.7, dtype=np.float32)
    pred[2, 2, 2] = 0.9
    pred[8, 8, 8] = 0.6
    pred[9, 9, 9] = 0.3
    r = score_case(pred, vol(cube(2, 4)), spacing=ONE)
    assert r.n_pred == 2
    assert [round(p.score, 6) for p in r.pred] == [0.9, 0.6]
    # threshold 0.65 drops the 0.6 component
    assert score_case(pred, vol(cube(2, 4)), spacing=ONE, threshold=0.65).n_pred == 1
    # a float64 0/1 volume is a mask: no scores
    r = score_case(vol(cube(2, 4), dtype=np.float64), vol(cube(2, 4)), spacing=ONE)
    assert r.pred[0].score is None and r.tp == 1


def test_instance_ground_truth_and_lesion_attrs():
    # two CMBs that touch (x 2..3 label 3, x 4..5 label 7): as instances they are 2 CMBs with
    # ids 3 and 7; one prediction over both -> 1 TP (the larger overlap: equal, 8 each; the
    # tie goes deterministically to one of them), 1 FN.
    gt = vol(((2, 4), (2, 4), (2, 4)), value=3) + vol(((4, 6), (2, 4), (2, 4)), value=7)
    pred = vol(((2, 6), (2, 4), (2, 4)))
    attrs = {3: {"region": "lobar"}, 7: {"region": "deep"}}
    r = score_case(pred, gt, spacing=ONE, gt_kind="instance", lesion_attrs=attrs)
    assert [g.id for g in r.gt] == [3, 7]
    assert [g.attrs["region"] for g in r.gt] == ["lobar", "deep"]
    assert counts(r) == (2, 1, 1, 0, 1)
    # undeclared non-binary ground truth is an error that names the case
    with pytest.raises(InputError, match=r"case 'c1'.*not binary.*instance"):
        score_case(pred, gt, spacing=ONE, case_id="c1")


@pytest.mark.parametrize(
    "pred, gt, kw, message",
    [
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), {}, "shape mismatch"),
        (np.full((4, 4, 4), np.nan), np.zeros((4, 4, 4)), {}, "NaN or Inf"),
        (np.full((4, 4, 4), 1.5), np.zeros((4, 4, 4)), {}, r"\[0, 1\]"),
        (np.full((4, 4, 4), -0.1), np.zeros((4, 4, 4)), {}, r"\[0, 1\]"),
        (np.zeros((4, 4, 4)), np.full((4, 4, 4), np.inf), {}, "NaN or Inf"),
        (np.zeros((4, 4, 4, 2)), np.zeros((4, 4, 4)), {}, "3-D"),
        (np.zeros((4, 4, 4), np.uint8) + 2, np.zeros((4, 4, 4)), {}, "not binary"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"spacing": None}, "spacing unknown"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"connectivity": 8}, "6, 18 or 26"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"threshold": 0.0}, "threshold"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"spacing": (1, 1, -1)}, "spacing"),
        (np.zeros((4, 4, 4)), np.zeros((3, 4, 4)), {"rule": "distance"}, "shape mismatch"),
        (np.zeros((2, 4)), np.zeros((4, 4, 4)), {"rule": "overlap"}, "3-D"),
    ],
)
def test_bad_input_names_the_case(pred, gt, kw, message):
    kw = {"spacing": ONE, **kw}
    with pytest.raises(InputError, match=message) as err:
        score_case(pred, gt, case_id="sub-007", **kw)
    assert "sub-007" in str(err.value)


def test_unknown_rule_lists_the_rules():
    with pytest.raises(UnknownNameError, match="overlap"):
        score_case(vol(), vol(), spacing=ONE, rule="iou")


def test_points_not_allowed_for_overlap():
    with pytest.raises(InputError, match="needs masks"):
        score_case(np.zeros((0, 3)), vol(), spacing=ONE, rule="overlap")


def test_result_roundtrips_through_json(tmp_path):
    from cmbbench.scoring.records import load_results, save_results

    gt, pred = vol(vox(5, 5, 5)), vol(vox(5, 5, 6))
    r = score_case(pred, gt, spacing=(0.5, 0.5, 1.0), rule="valdo", max_distance_mm=2.0)
    save_results([r], tmp_path / "r.json")
    back = load_results(tmp_path / "r.json").cases[0]
    assert back == r


# ------------------------------------------------------------------ rule parameters
def test_rule_params_defaults_per_rule():
    from cmbbench.scoring.rules import DEFAULT_MAX_DISTANCE_MM, RULES, rule_params

    assert RULES == ("overlap", "distance", "valdo", "point")
    assert DEFAULT_MAX_DISTANCE_MM == 5.0
    assert rule_params("overlap") == {"connectivity": 26, "threshold": 0.5, "min_overlap_voxels": 1}
    assert rule_params("distance") == {"connectivity": 26, "threshold": 0.5, "max_distance_mm": 5.0}
    assert rule_params("point") == {"connectivity": 26, "threshold": 0.5, "max_distance_mm": None}
    assert rule_params("valdo", max_distance_mm=2) == {
        "connectivity": 26,
        "threshold": 0.5,
        "max_distance_mm": 2.0,
    }
    # values are normalised to the recorded types
    p = rule_params("overlap", threshold=1, connectivity=np.int64(6), min_overlap_voxels=3.0)
    assert p == {"connectivity": 6, "threshold": 1.0, "min_overlap_voxels": 3}
    assert type(p["connectivity"]) is int and type(p["threshold"]) is float
    assert type(p["min_overlap_voxels"]) is int


@pytest.mark.parametrize(
    ("rule", "kwargs"),
    [
        ("overlap", {}),
        ("overlap", {"min_overlap_voxels": 2, "connectivity": 6}),
        ("distance", {}),
        ("distance", {"max_distance_mm": 3}),
        ("point", {}),
        ("point", {"max_distance_mm": 2.5, "threshold": 0.3}),
        ("valdo", {"max_distance_mm": 4.0}),
    ],
)
def test_rule_params_is_what_score_case_records(rule, kwargs):
    from cmbbench.scoring.rules import rule_params

    gt = vol(cube(2, 4))
    r = score_case(vol(cube(2, 4)), gt, spacing=ONE, rule=rule, **kwargs)
    assert r.params == rule_params(rule, **kwargs)


@pytest.mark.parametrize(
    ("rule", "kwargs", "message"),
    [
        ("overlap", {"connectivity": 8}, "connectivity must be 6, 18 or 26"),
        ("overlap", {"threshold": 0.0}, "threshold must be in (0, 1]"),
        ("overlap", {"min_overlap_voxels": 1.5}, "min_overlap_voxels must be an integer >= 1"),
        ("distance", {"max_distance_mm": -1.0}, "max_distance_mm must be > 0"),
        ("point", {"max_distance_mm": math.inf}, "max_distance_mm must be > 0"),
        ("valdo", {}, "the valdo rule needs its distance threshold"),
        ("valdo", {"max_distance_mm": 1.0, "connectivity": 6}, "fixes connectivity 26"),
        ("valdo", {"max_distance_mm": 1.0, "threshold": 0.4}, "fixes connectivity 26"),
    ],
)
def test_rule_params_errors(rule, kwargs, message):
    from cmbbench.scoring.rules import rule_params

    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("]", r"\]")):
        rule_params(rule, **kwargs)
    with pytest.raises(InputError, match="case 'c7'"):
        rule_params(rule, case_id="c7", **kwargs)
    with pytest.raises(UnknownNameError, match="known rules"):
        rule_params("nearest")


def test_unknown_input_kinds_are_errors():
    gt = vol(cube(2, 4))
    with pytest.raises(InputError, match="pred_kind must be one of"):
        score_case(gt, gt, spacing=ONE, pred_kind="map")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="gt_kind must be one of"):
        score_case(gt, gt, spacing=ONE, gt_kind="labels")  # type: ignore[arg-type]
