"""Aggregate metrics, FROC/CPM/AP and the case bootstrap, against hand-computed values."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from _case_records import make_case

import cmbbench
from cmbbench.errors import InputError
from cmbbench.io import dumps
from cmbbench.scoring import bootstrap, froc
from cmbbench.scoring.metrics import EDGE_CASE_POLICY, HEADLINE, aggregate, subject_level
from cmbbench.scoring.records import CaseResult, Lesion, ScoreReport
from cmbbench.scoring.summary import format_entry, summary_rows


def worked_cases() -> list[CaseResult]:
    """Five scans; per case (recall, precision, F1):

    c1: n_gt 10, n_pred 10, TP 9 -> FP 1, FN 1   (0.9, 0.9, 0.9)
    c2: n_gt 1,  n_pred 2,  TP 0 -> FP 2, FN 1   (0,   0,   0)
    c3: n_gt 0,  n_pred 3        -> FP 3          (nan, 0,   0)     negative scan with FPs
    c4: n_gt 0,  n_pred 0                         (nan, nan, nan)   empty scan
    c5: n_gt 2,  n_pred 0        -> FN 2          (0,   nan, 0)
    """
    return [
        make_case("c1", 10, 10, 9),
        make_case("c2", 1, 2, 0),
        make_case("c3", 0, 3, 0),
        make_case("c4", 0, 0, 0),
        make_case("c5", 2, 0, 0),
    ]


def test_micro_vs_macro_worked_example():
    m = aggregate(worked_cases(), n_bootstrap=0)
    det = m["detection"]
    # totals: TP 9, FP 1+2+3 = 6, FN 1+1+2 = 4, n_gt 13, n_pred 15
    assert det["totals"] == {"tp": 9, "fp": 6, "fn": 4, "n_gt": 13, "n_pred": 15}
    # micro: recall 9/13, precision 9/15, F1 2*9/(2*9+6+4) = 18/28
    assert det["micro"]["recall"] == pytest.approx(9 / 13)
    assert det["micro"]["precision"] == pytest.approx(0.6)
    assert det["micro"]["f1"] == pytest.approx(18 / 28)
    # macro recall: c1, c2, c5 defined -> (0.9 + 0 + 0) / 3 = 0.3; c3, c4 skipped
    assert det["macro"]["recall"] == {"value": pytest.approx(0.3), "n_defined": 3, "n_skipped": 2}
    # macro precision: c1, c2, c3 defined -> 0.9 / 3 = 0.3; c4, c5 skipped
    assert det["macro"]["precision"] == {
        "value": pytest.approx(0.3),
        "n_defined": 3,
        "n_skipped": 2,
    }
    # macro F1: c1, c2, c3, c5 defined -> 0.9 / 4 = 0.225; only c4 skipped
    assert det["macro"]["f1"] == {"value": pytest.approx(0.225), "n_defined": 4, "n_skipped": 1}
    # micro and macro really differ here
    assert abs(det["micro"]["recall"] - det["macro"]["recall"]["value"]) > 0.3
    # headline mirrors the details
    assert m["headline"]["recall_micro"] == {"value": pytest.approx(9 / 13), "ci": None}
    assert m["headline"]["f1_macro"]["value"] == pytest.approx(0.225)


def test_fp_per_scan_counts_negative_scans():
    m = aggregate(worked_cases(), n_bootstrap=0)
    det = m["detection"]
    # 6 FP over all 5 scans = 1.2 (not 6/3 = 2.0 over the scans with CMBs only)
    assert det["fp_per_scan"] == pytest.approx(1.2)
    assert m["headline"]["fp_per_scan"]["value"] == pytest.approx(1.2)
    # FP per CMB: 6 / 13
    assert det["fp_per_cmb"] == pytest.approx(6 / 13)
    assert (m["n_cases"], m["n_cases_with_cmb"], m["n_cases_without_cmb"]) == (5, 3, 2)
    # adding an empty scan (no CMB, no prediction) lowers FP/scan to 6/6 = 1.0: never skipped
    m2 = aggregate([*worked_cases(), make_case("c6", 0, 0, 0)], n_bootstrap=0)
    assert m2["detection"]["fp_per_scan"] == pytest.approx(1.0)


def test_per_case_counts_mean_median():
    pc = aggregate(worked_cases(), n_bootstrap=0)["detection"]["per_case"]
    assert pc["tp"] == {"mean": pytest.approx(1.8), "median": 0.0}  # [9, 0, 0, 0, 0]
    assert pc["fp"] == {"mean": pytest.approx(1.2), "median": 1.0}  # [1, 2, 3, 0, 0]
    assert pc["fn"] == {"mean": pytest.approx(0.8), "median": 1.0}  # [1, 1, 0, 0, 2]
    # |n_pred - n_gt| = [0, 1, 3, 0, 2]: mean 1.2, median 1
    assert pc["abs_count_diff"] == {"mean": pytest.approx(1.2), "median": 1.0}


def test_subject_level_positive_class():
    subj = aggregate(worked_cases(), n_bootstrap=0)["subject"]
    # k = 1: truly positive c1, c2, c5; predicted positive c1, c2, c3
    #   TP {c1, c2} = 2, FP {c3} = 1, FN {c5} = 1, TN {c4} = 1
    s1 = subj["1"]
    assert (s1["tp"], s1["fp"], s1["fn"], s1["tn"]) == (2, 1, 1, 1)
    assert s1["sensitivity"] == pytest.approx(2 / 3)
    assert s1["specificity"] == pytest.approx(1 / 2)
    assert s1["ppv"] == pytest.approx(2 / 3)  # precision of the POSITIVE class
    assert s1["npv"] == pytest.approx(1 / 2)  # the negative class' precision differs
    assert s1["f1"] == pytest.approx(4 / 6)  # 2*2 / (2*2 + 1 + 1)
    assert s1["accuracy"] == pytest.approx(3 / 5)
    # k = 3: truly positive c1 (10 CMBs; c5 has only 2); predicted positive c1 (10), c3 (3)
    #   TP {c1} = 1, FP {c3} = 1, FN 0, TN {c2, c4, c5} = 3
    s3 = subj["3"]
    assert (s3["tp"], s3["fp"], s3["fn"], s3["tn"]) == (1, 1, 0, 3)
    assert s3["sensitivity"] == pytest.approx(1.0)
    assert s3["specificity"] == pytest.approx(3 / 4)
    assert s3["ppv"] == pytest.approx(1 / 2)
    assert s3["npv"] == pytest.approx(1.0)
    assert s3["f1"] == pytest.approx(2 / 3)  # 2 / (2 + 1 + 0)
    assert s3["accuracy"] == pytest.approx(4 / 5)
    assert set(subj) == {"1", "3", "5", "11"}
    # k = 11: nobody is truly positive -> sensitivity undefined, reported as None
    assert subj["11"]["sensitivity"] is None and subj["11"]["tp"] == 0
    assert subject_level(np.array([0, 5]), np.array([1, 5]), 5)["specificity"] == 1.0


def seg_cases() -> list[CaseResult]:
    """Spacing 0.5 x 0.5 x 1 mm -> 0.25 mm^3 per voxel.

    s1: CMBs of 10 and 10 voxels; predictions of 10 and 90 voxels, each overlapping its CMB
        by 10 voxels -> pair Dice 2*10/20 = 1.0 and 2*10/100 = 0.2.
        voxel Dice 2*20/(20+100) = 1/3; |100-20| voxels = 20 mm^3.
    s2: no CMB, one 8-voxel FP -> voxel Dice 0; volume difference 8 voxels = 2 mm^3.
    s3: empty -> voxel Dice undefined (skipped); volume difference 0.
    """
    sp = (0.5, 0.5, 1.0)
    return [
        make_case(
            "s1", 2, 2, 2, gt_sizes=[10, 10], pred_sizes=[10, 90], overlaps=[10, 10], spacing=sp
        ),
        make_case("s2", 0, 1, 0, pred_sizes=[8], spacing=sp),
        make_case("s3", 0, 0, 0, spacing=sp),
    ]


def test_dice_tp_micro_vs_macro_and_voxel_dice():
    m = aggregate(seg_cases(), n_bootstrap=0)
    seg = m["segmentation"]
    assert seg["available"] is True
    # macro = mean over pairs (1.0 + 0.2) / 2 = 0.6
    # micro = 2 * (10 + 10) / ((10 + 10) + (10 + 90)) = 40 / 120 = 1/3
    assert seg["dice_tp"] == {
        "macro": pytest.approx(0.6),
        "micro": pytest.approx(1 / 3),
        "n_pairs": 2,
    }
    assert m["headline"]["dice_tp_macro"]["value"] == pytest.approx(0.6)
    assert m["headline"]["dice_tp_micro"]["value"] == pytest.approx(1 / 3)
    # voxel Dice per case: mean(1/3, 0) = 1/6, s3 skipped; pooled 2*20 / (20 + 108) = 40/128
    vd = seg["voxel_dice"]
    assert vd["per_case_mean"] == pytest.approx(1 / 6)
    assert (vd["n_defined"], vd["n_skipped"]) == (2, 1)
    assert vd["pooled"] == pytest.approx(40 / 128)
    # absolute volume difference [20, 2, 0] mm^3: mean 22/3, median 2; signed mean also 22/3
    assert seg["abs_volume_diff_mm3"] == {
        "mean": pytest.approx(22 / 3),
        "median": pytest.approx(2.0),
    }
    assert seg["volume_diff_mm3_mean"] == pytest.approx(22 / 3)


def test_segmentation_unavailable_for_point_ground_truth():
    c = make_case("p1", 2, 1, 1, rule="point")
    c.gt_voxels = 0
    m = aggregate([c], n_bootstrap=0)
    assert m["segmentation"]["available"] is False
    assert "point" in m["segmentation"]["reason"]
    assert "dice_tp_macro" not in m["headline"]


# --------------------------------------------------------------------------- FROC / AP
# Six predicted lesions over 2 scans, 4 CMBs in all (one never predicted):
#   score  0.9  0.8  0.7  0.6  0.5  0.4
#   TP?    yes  no   yes  no   no   yes
# operating points (FP/scan, sensitivity): origin (0, 0), 0.9 -> (0, 1/4), 0.8 -> (0.5, 1/4),
#   0.7 -> (0.5, 2/4), 0.6 -> (1, 2/4), 0.5 -> (1.5, 2/4), 0.4 -> (1.5, 3/4)
SCORES = [0.5, 0.9, 0.4, 0.8, 0.6, 0.7]  # deliberately unsorted
IS_TP = [False, True, True, False, False, True]


def test_froc_curve_points():
    c = froc.froc_curve(SCORES, IS_TP, n_gt=4, n_scans=2)
    assert np.isinf(c["threshold"][0])
    np.testing.assert_allclose(c["threshold"][1:], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    np.testing.assert_allclose(c["fp_per_scan"], [0, 0, 0.5, 0.5, 1.0, 1.5, 1.5])
    np.testing.assert_allclose(c["sensitivity"], [0, 0.25, 0.25, 0.5, 0.5, 0.5, 0.75])


def test_sensitivity_at_rates_and_cpm():
    # best operating point with FP/scan <= r: 1/8 -> 0.25, 1/4 -> 0.25, 1/2 -> 0.5, 1 -> 0.5;
    # the curve ends at 1.5 FP/scan, so 2, 4 and 8 FP/scan are not reached (NaN, never the
    # last value repeated) and the CPM is undefined
    sens = froc.sensitivity_at(SCORES, IS_TP, n_gt=4, n_scans=2)
    np.testing.assert_allclose(sens, [0.25, 0.25, 0.5, 0.5, np.nan, np.nan, np.nan])
    assert math.isnan(froc.cpm(SCORES, IS_TP, n_gt=4, n_scans=2))
    # 15 more false alarms (scores 0.3 ... 0.16) take the curve to 9 FP/scan: every rate is
    # reached; 2, 4 and 8 FP/scan keep the 0.75 of the last TP (0.4), reached at 1.5 FP/scan
    scores = [*SCORES, *np.linspace(0.3, 0.16, 15)]
    is_tp = [*IS_TP, *([False] * 15)]
    sens = froc.sensitivity_at(scores, is_tp, n_gt=4, n_scans=2)
    np.testing.assert_allclose(sens, [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75])
    # CPM = (0.25 + 0.25 + 0.5 + 0.5 + 0.75 * 3) / 7 = 3.75 / 7
    assert froc.cpm(scores, is_tp, n_gt=4, n_scans=2) == pytest.approx(3.75 / 7)


def test_average_precision_hand_list():
    # precision at each TP: 1/1 (0.9), 2/3 (0.7), 3/6 (0.4); each adds recall 1/4
    # AP = (1 + 2/3 + 1/2) / 4 = 13/24; the never-predicted CMB keeps it below 1
    assert froc.average_precision(SCORES, IS_TP, n_gt=4) == pytest.approx(13 / 24)
    assert froc.average_precision([0.3, 0.2], [True, True], n_gt=2) == pytest.approx(1.0)
    assert math.isnan(froc.average_precision([0.3], [False], n_gt=0))


def test_tied_scores_form_one_operating_point():
    # a TP and an FP with the same score leave together: at 0.5 FP/scan nothing is kept,
    # at 1 FP/scan both are (sensitivity 1); AP = 1 * (1/2)
    s = froc.sensitivity_at([0.9, 0.9], [True, False], n_gt=1, n_scans=1, fp_rates=(0.5, 1.0))
    np.testing.assert_allclose(s, [0.0, 1.0])
    assert froc.average_precision([0.9, 0.9], [True, False], n_gt=1) == pytest.approx(0.5)


def test_froc_rejects_bad_input():
    with pytest.raises(InputError, match="differ in length"):
        froc.froc_curve([0.1, 0.2], [True], n_gt=1, n_scans=1)
    with pytest.raises(InputError, match="finite"):
        froc.cpm([math.nan], [True], n_gt=1, n_scans=1)
    with pytest.raises(InputError, match="n_scans"):
        froc.cpm([0.5], [True], n_gt=1, n_scans=0)


def sweep_cases() -> list[CaseResult]:
    """The SCORES/IS_TP list split over two scans with 4 CMBs, plus a negative scan with one
    FP at score 0.95 -> 3 scans. Points now (FP/scan over 3 scans, sensitivity):
    0.95 -> (1/3, 0), 0.9 -> (1/3, 1/4), 0.8 -> (2/3, 1/4), 0.7 -> (2/3, 2/4), 0.6 -> (1, 2/4),
    0.5 -> (4/3, 2/4), 0.4 -> (4/3, 3/4).
    sensitivity at 1/8, 1/4 -> 0; 1/2 -> 1/4; 1 -> 2/4; the curve ends at 4/3 FP/scan with
    a CMB still missed, so 2, 4 and 8 FP/scan are not reached and the CPM is undefined.
    """
    # scan a: CMBs 1, 2 (3 not predicted); predictions 0.9 TP, 0.7 TP, 0.8 FP
    a = make_case("a", 3, 3, 2, scores=[0.9, 0.7, 0.8])
    # scan b: CMB 1; predictions 0.4 TP, 0.6 FP, 0.5 FP
    b = make_case("b", 1, 3, 1, scores=[0.4, 0.6, 0.5])
    neg = make_case("n", 0, 1, 0, scores=[0.95])
    return [a, b, neg]


def test_aggregate_sweep_counts_negative_scans():
    m = aggregate(sweep_cases(), n_bootstrap=0)
    sw = m["sweep"]
    assert sw["available"] and sw["n_lesions"] == 7
    assert sw["sensitivity_at"] == {
        "0.125": 0.0,
        "0.25": 0.0,
        "0.5": pytest.approx(0.25),
        "1": pytest.approx(0.5),
        "2": None,
        "4": None,
        "8": None,
    }
    assert sw["not_reached"] == ["2", "4", "8"]
    assert sw["curve_end"] == {"fp_per_scan": pytest.approx(4 / 3), "sensitivity": 0.75}
    assert sw["cpm"] is None and m["headline"]["cpm"]["value"] is None
    # AP: precision at the TPs 1/2 (0.9), 2/4 (0.7), 3/7 (0.4) -> (1/2 + 1/2 + 3/7) / 4
    assert sw["ap"] == pytest.approx((0.5 + 0.5 + 3 / 7) / 4)
    assert sw["froc"]["fp_per_scan"][-1] == pytest.approx(4 / 3)
    assert sw["froc"]["threshold"][0] is None  # the origin (+inf) serialises as null


def test_sweep_unavailable_without_scores():
    m = aggregate(worked_cases(), n_bootstrap=50)
    assert m["sweep"]["available"] is False
    assert "score" in m["sweep"]["reason"]
    assert "cpm" not in m["headline"] and "ap" not in m["headline"]


# --------------------------------------------------------------------------- strata, valdo
def test_size_cohort_and_region_strata():
    # CMB diameters 1.5, 2.5, 4.0 (detected: the first tp=3), 2.0, 6.0 mm (missed)
    c1 = make_case(
        "x1",
        5,
        3,
        3,
        gt_diam=[1.5, 2.5, 4.0, 2.0, 6.0],
        pred_diam=[1.0, 2.2, 4.5],
        gt_attrs=[
            {"region": "lobar"},
            {"region": "deep"},
            {"region": "lobar"},
            {"region": "deep"},
            {},
        ],
        meta={"cohort": "A"},
    )
    # one FP of 5.5 mm in a negative scan of cohort B
    c2 = make_case("x2", 0, 1, 0, pred_diam=[5.5], meta={"cohort": "B"})
    st = aggregate([c1, c2], n_bootstrap=0)["strata"]
    gt = {r["bin"]: (r["n"], r["tp"], r["recall"]) for r in st["gt_size"]}
    # <2: {1.5} 1/1; 2-3: {2.5, 2.0} 1/2 (2.0 falls in 2-3: lower edges inclusive);
    # 3-5: {4.0} 1/1; >=5: {6.0} 0/1
    assert gt == {"<2": (1, 1, 1.0), "2-3": (2, 1, 0.5), "3-5": (1, 1, 1.0), ">=5": (1, 0, 0.0)}
    pred = {r["bin"]: (r["n"], r["tp"], r["precision"]) for r in st["pred_size"]}
    # predictions 1.0 (TP), 2.2 (TP), 4.5 (TP), 5.5 (FP)
    assert pred == {"<2": (1, 1, 1.0), "2-3": (1, 1, 1.0), "3-5": (1, 1, 1.0), ">=5": (1, 0, 0.0)}
    # cohort A: recall 3/5, precision 3/3, 0 FP/scan; cohort B: 1 FP on 1 scan
    assert st["cohort"]["A"]["recall"] == pytest.approx(0.6)
    assert st["cohort"]["A"]["precision"] == pytest.approx(1.0)
    assert st["cohort"]["B"]["fp_per_scan"] == pytest.approx(1.0)
    assert st["cohort"]["B"]["recall"] is None
    assert "protocol" not in st
    # region: lobar 2/2 detected, deep 1/2 (the 6 mm CMB has no region)
    assert st["region_gt"] == {
        "deep": {"n": 2, "tp": 1, "recall": 0.5},
        "lobar": {"n": 2, "tp": 2, "recall": 1.0},
    }


def test_valdo_mean_f1_skips_nan():
    p = {"max_distance_mm": 5.0}
    cases = [
        make_case("v1", 2, 2, 1, rule="valdo", valdo_f1=0.5, params=p),
        make_case("v2", 0, 1, 0, rule="valdo", valdo_f1=math.nan, params=p),  # empty GT -> NaN
        make_case("v3", 1, 1, 1, rule="valdo", valdo_f1=1.0, params=p),
    ]
    m = aggregate(cases, n_bootstrap=100)
    # mean over v1, v3 = (0.5 + 1.0) / 2
    assert m["valdo"] == {"mean_f1": pytest.approx(0.75), "n_defined": 2, "n_skipped": 1}
    assert m["headline"]["valdo_f1_mean"]["value"] == pytest.approx(0.75)
    assert aggregate(worked_cases(), n_bootstrap=0)["valdo"] is None


# --------------------------------------------------------------------------- bootstrap
def random_cases(n: int, seed: int, scores: bool = True) -> list[CaseResult]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        n_gt = int(rng.poisson(2.0))
        n_pred = int(rng.poisson(2.5))
        tp = int(rng.integers(0, min(n_gt, n_pred) + 1))
        sizes_g = [int(v) for v in rng.integers(3, 40, n_gt)]
        sizes_p = [int(v) for v in rng.integers(3, 40, n_pred)]
        ov = [int(rng.integers(1, min(sizes_g[j], sizes_p[j]) + 1)) for j in range(tp)]
        sc = [float(v) for v in rng.uniform(0.5, 1.0, n_pred)] if scores else None
        out.append(
            make_case(
                f"r{i:04d}",
                n_gt,
                n_pred,
                tp,
                scores=sc,
                gt_sizes=sizes_g,
                pred_sizes=sizes_p,
                overlaps=ov,
            )
        )
    return out


def test_ci_contains_point_estimate_and_is_deterministic():
    cases = random_cases(120, seed=3)
    m1 = aggregate(cases, n_bootstrap=300, seed=7)
    m2 = aggregate(cases, n_bootstrap=300, seed=7)
    assert dumps(m1) == dumps(m2)
    assert m1["bootstrap"] == {
        "n_bootstrap": 300,
        "seed": 7,
        "ci": 0.95,
        "unit": "case",
        "method": "percentile",
    }
    expected = set(HEADLINE) - {"valdo_f1_mean"}
    assert set(m1["headline"]) == expected
    # ~2.5 predictions per scan at the operating point: the sweep ends near 1.3 FP/scan with
    # CMBs missed, so 2-8 FP/scan are not reached and the CPM is undefined (no interval)
    assert m1["headline"]["cpm"] == {"value": None, "ci": None}
    for name, item in m1["headline"].items():
        if name == "cpm":
            continue
        lo, hi = item["ci"]
        assert lo <= item["value"] + 1e-12 and item["value"] <= hi + 1e-12, name
        assert lo < hi, name
    m3 = aggregate(cases, n_bootstrap=300, seed=8)
    assert m3["headline"]["f1_micro"]["ci"] != m1["headline"]["f1_micro"]["ci"]
    assert m3["headline"]["f1_micro"]["value"] == m1["headline"]["f1_micro"]["value"]


def test_reordering_cases_changes_nothing():
    cases = random_cases(60, seed=11)
    shuffled = cases[:]
    random.Random(5).shuffle(shuffled)
    assert [c.case_id for c in shuffled] != [c.case_id for c in cases]
    assert dumps(aggregate(cases, n_bootstrap=200)) == dumps(aggregate(shuffled, n_bootstrap=200))


def test_bootstrap_matches_explicit_resampling():
    # the vectorised bootstrap equals recomputing each resample by hand from the same draws
    cases = sorted(random_cases(30, seed=2), key=lambda c: c.case_id)
    w = bootstrap.resample_counts(len(cases), 20, seed=4)
    assert np.all(w.sum(axis=1) == 30)
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 30, size=(20, 30))
    m = aggregate(cases, n_bootstrap=20, seed=4)
    micro_f1 = []
    cpm = []
    for row in idx:
        draw = [cases[i] for i in row]
        tp = sum(c.tp for c in draw)
        fp = sum(c.fp for c in draw)
        fn = sum(c.fn for c in draw)
        micro_f1.append(2 * tp / (2 * tp + fp + fn))
        s = [p.score for c in draw for p in c.pred]
        t = [p.matched for c in draw for p in c.pred]
        cpm.append(froc.cpm(s, t, sum(c.n_gt for c in draw), 30))
    assert m["headline"]["f1_micro"]["ci"] == pytest.approx(bootstrap.percentile_ci(micro_f1, 0.95))
    assert m["headline"]["cpm"]["ci"] == pytest.approx(bootstrap.percentile_ci(cpm, 0.95))


def test_bootstrap_helpers():
    assert bootstrap.percentile_ci([math.nan, math.nan], 0.95) is None
    assert bootstrap.percentile_ci([1.0, 2.0, 3.0, math.nan], 0.5) == pytest.approx([1.5, 2.5])
    assert bootstrap.two_sided_p([0.0, 0.0, 0.0]) == 1.0
    # all 99 differences > 0: p = 2 * (1 + 0) / 100
    assert bootstrap.two_sided_p([1.0] * 99) == pytest.approx(0.02)
    assert bootstrap.entry(math.nan, [1.0], 0.95) == {"value": None, "ci": None}


# --------------------------------------------------------------------------- errors, output
def test_errors():
    with pytest.raises(InputError, match="empty"):
        aggregate([])
    with pytest.raises(InputError, match="duplicate"):
        aggregate([make_case("a", 1, 1, 1), make_case("a", 0, 0, 0)])
    with pytest.raises(InputError, match="different rules"):
        aggregate([make_case("a", 1, 1, 1), make_case("b", 1, 1, 1, rule="distance")])
    with pytest.raises(InputError, match="different rule parameters"):
        aggregate([make_case("a", 1, 1, 1), make_case("b", 1, 1, 1, params={"connectivity": 6})])
    # the threshold is each model's operating point, not the rule: cases scored at two
    # thresholds (two cross-validation folds) aggregate, and the shared value is undefined
    a = make_case("a", 1, 1, 1)
    b = make_case("b", 1, 1, 1)
    a.params = {**a.params, "threshold": 0.98}
    b.params = {**b.params, "threshold": 0.5}
    m = aggregate([a, b], n_bootstrap=0)
    assert m["params"]["threshold"] is None and m["detection"]["totals"]["tp"] == 2
    bad = make_case("bad", 2, 1, 1)
    bad.fn = 0  # tp + fn != n_gt
    with pytest.raises(InputError, match="'bad'"):
        aggregate([bad])
    with pytest.raises(InputError, match="n_bootstrap"):
        aggregate(worked_cases(), n_bootstrap=-1)
    with pytest.raises(InputError, match="ci"):
        aggregate(worked_cases(), ci=95)
    unflagged = make_case("u", 1, 1, 1, scores=[0.7])
    unflagged.pred[0] = Lesion(id=1, voxels=10, score=0.7, matched=False)
    with pytest.raises(InputError, match="flagged matched"):
        aggregate([unflagged])


def test_output_is_strict_json_and_public_name():
    m = cmbbench.aggregate(worked_cases() + sweep_cases(), n_bootstrap=50)
    assert dumps(
        aggregate(ScoreReport(cases=worked_cases() + sweep_cases()), n_bootstrap=50)
    ) == dumps(m)
    text = dumps(m)  # allow_nan=False: no NaN leaks into the JSON
    assert json.loads(text)["schema"] == "cmbbench.metrics/1"
    assert "negatives included" in EDGE_CASE_POLICY or "negative scans included" in EDGE_CASE_POLICY


def test_summary_rows():
    m = aggregate(random_cases(40, seed=9), n_bootstrap=100)
    rows = summary_rows(m)
    labels = [r[0] for r in rows]
    assert labels[:3] == ["Cases (without CMB)", "CMBs (ground truth)", "Predicted lesions"]
    assert labels[3:] == [HEADLINE[k] for k in HEADLINE if k in m["headline"]]
    f1 = dict(rows)[HEADLINE["f1_micro"]]
    v, (lo, hi) = m["headline"]["f1_micro"]["value"], m["headline"]["f1_micro"]["ci"]
    assert f1 == f"{v:.2f} [{lo:.2f}, {hi:.2f}]"
    assert format_entry({"value": 0.712, "ci": [0.62, 0.8]}) == "0.71 [0.62, 0.80]"
    assert format_entry({"value": None, "ci": None}) == "n/a"
    assert summary_rows(m, counts=False)[0][0] == HEADLINE["recall_micro"]
    with pytest.raises(InputError, match="headline"):
        summary_rows({"n_cases": 3})


def reference_sweep(scores, is_tp, n_gt, n_scans, rates):
    """Brute force: try every threshold (each distinct score, and +inf for nothing kept)."""
    points = [(0, 0)]
    for t in sorted(set(scores)):
        kept = [tp for s, tp in zip(scores, is_tp, strict=True) if s >= t]
        points.append((sum(not k for k in kept), sum(kept)))
    # a rate past the curve's end is not reached (NaN) unless every CMB was found by then
    fp_end, tp_end = max(points)
    sens = [
        max(tp for fp, tp in points if fp / n_scans <= r) / n_gt
        if fp_end / n_scans >= r or tp_end >= n_gt
        else np.nan
        for r in rates
    ]
    # AP: walk thresholds from high to low, add precision at each recall step
    ap, prev_tp = 0.0, 0
    for t in sorted(set(scores), reverse=True):
        kept = [tp for s, tp in zip(scores, is_tp, strict=True) if s >= t]
        tp = sum(kept)
        ap += (tp - prev_tp) / n_gt * (tp / len(kept))
        prev_tp = tp
    return sens, ap


@pytest.mark.parametrize("seed", range(25))
def test_froc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    scores = [float(v) for v in np.round(rng.uniform(0, 1, n), 1)]  # rounding makes ties
    is_tp = [bool(v) for v in rng.uniform(size=n) < 0.4]
    n_gt = sum(is_tp) + int(rng.integers(0, 5))
    if n_gt == 0:
        n_gt = 1
    n_scans = int(rng.integers(1, 8))
    sens, ap = reference_sweep(scores, is_tp, n_gt, n_scans, froc.FP_RATES)
    np.testing.assert_allclose(froc.sensitivity_at(scores, is_tp, n_gt, n_scans), sens)
    assert froc.average_precision(scores, is_tp, n_gt) == pytest.approx(ap)


def test_perfect_prediction():
    # every CMB found once, nothing else: recall = precision = F1 = 1, 0 FP, CPM = AP = 1,
    # DiceTP 1 (identical masks), subject level perfect; a negative scan stays clean
    cases = [
        make_case("p1", 3, 3, 3, scores=[0.9, 0.8, 0.7]),
        make_case("p2", 1, 1, 1, scores=[0.6]),
        make_case("p3", 0, 0, 0, scores=[]),
    ]
    m = aggregate(cases, n_bootstrap=100)
    h = m["headline"]
    for key in ("recall_micro", "precision_micro", "f1_micro", "recall_macro", "f1_macro"):
        assert h[key]["value"] == 1.0 and h[key]["ci"] == [1.0, 1.0], key
    assert h["fp_per_scan"]["value"] == 0.0 and h["fp_per_cmb"]["value"] == 0.0
    assert h["cpm"]["value"] == 1.0 and h["ap"]["value"] == 1.0
    assert h["dice_tp_micro"]["value"] == 1.0 and h["subject_f1_at_1"]["value"] == 1.0
    assert m["subject"]["1"]["specificity"] == 1.0


def _reference_headline_stats(t, w):
    """The headline statistics as first written (one matrix indexed by column number), kept
    as the reference that the named-column version must reproduce bit for bit."""
    from cmbbench.scoring.rates import ratio

    pc = t.per_case()
    pos_true, pos_pred = t.n_gt >= 1, t.n_pred >= 1
    valdo_def = np.isfinite(t.valdo)
    cols = np.stack(
        [
            t.tp,
            t.fp,
            t.fn,
            t.n_gt,
            *(np.where(pc[m][1], pc[m][0], 0.0) for m in ("recall", "precision", "f1")),
            *(pc[m][1].astype(float) for m in ("recall", "precision", "f1")),
            t.pair_n,
            t.pair_dice,
            t.pair_overlap2,
            t.pair_size,
            (pos_true & pos_pred).astype(float),
            (~pos_true & pos_pred).astype(float),
            (pos_true & ~pos_pred).astype(float),
            np.where(valdo_def, t.valdo, 0.0),
            valdo_def.astype(float),
        ],
        axis=1,
    )
    S = w @ cols
    tp, fp, fn = S[:, 0], S[:, 1], S[:, 2]
    out = {
        "recall_micro": ratio(tp, tp + fn),
        "precision_micro": ratio(tp, tp + fp),
        "f1_micro": ratio(2 * tp, 2 * tp + fp + fn),
        "recall_macro": ratio(S[:, 4], S[:, 7]),
        "precision_macro": ratio(S[:, 5], S[:, 8]),
        "f1_macro": ratio(S[:, 6], S[:, 9]),
        "fp_per_scan": ratio(fp, w.sum(axis=1)),
        "fp_per_cmb": ratio(fp, S[:, 3]),
        "subject_f1_at_1": ratio(2 * S[:, 14], 2 * S[:, 14] + S[:, 15] + S[:, 16]),
    }
    if t.seg_reason is None:
        out["dice_tp_macro"] = ratio(S[:, 11], S[:, 10])
        out["dice_tp_micro"] = ratio(S[:, 12], S[:, 13])
    if t.cases[0].rule == "valdo":
        out["valdo_f1_mean"] = ratio(S[:, 17], S[:, 18])
    return out


@pytest.mark.parametrize("seed", range(30))
def test_headline_stats_bitwise_equal_to_reference(seed):
    from cmbbench.scoring.table import CaseTable, headline_stats, prepare_cases

    rng = random.Random(seed)
    rule = "valdo" if seed % 3 == 0 else "overlap"
    cases = []
    for i in range(rng.randint(1, 30)):
        n_gt, n_pred = rng.choice([0, 0, 1, 2, 5, 11]), rng.choice([0, 0, 1, 3, 6])
        tp = rng.randint(0, min(n_gt, n_pred))
        kw: dict = {
            "gt_sizes": [rng.randint(1, 50) for _ in range(n_gt)] or None,
            "pred_sizes": [rng.randint(1, 50) for _ in range(n_pred)] or None,
        }
        if rule == "valdo":
            kw["valdo_f1"] = None if n_gt == 0 else rng.random()
        cases.append(make_case(f"c{i:02d}", n_gt, n_pred, tp, rule=rule, **kw))
    t = CaseTable(prepare_cases(cases))
    w = np.vstack([np.ones((1, t.n)), bootstrap.resample_counts(t.n, 64, seed)])
    got, want = headline_stats(t, w), _reference_headline_stats(t, w)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key
