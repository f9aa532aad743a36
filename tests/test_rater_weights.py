"""Rater weights: the valdo rule's agreement-weighted per-case F1 (SCORING.md, "Rater weights")."""

from __future__ import annotations

import numpy as np
import pytest

from cmbbench.errors import InputError
from cmbbench.scoring.case import score_case
from cmbbench.scoring.matching import weighted_valdo_f1

SPACING = (1.0, 1.0, 3.0)


def _gt_and_pred():
    gt = np.zeros((30, 30, 10), np.float32)
    gt[2:4, 2:4, 2] = 1.0  # both raters: weight 1
    gt[12:14, 12:14, 6] = 0.5  # one of two raters: weight 0.5
    gt[20:22, 20:22, 6] = 0.5  # missed: mostly one rater ...
    gt[20, 20, 6] = 1.0  # ... but both at one voxel: a component weighs its maximum, 1
    pred = np.zeros(gt.shape, np.uint8)
    pred[2:4, 2:4, 2] = 1  # claims the first CMB
    pred[12:14, 12:14, 6] = 1  # claims the second
    pred[5, 25, 8] = 1  # a false alarm
    return gt, pred


def test_weighted_f1_by_hand():
    gt, pred = _gt_and_pred()
    r = score_case(pred, gt, spacing=SPACING, rule="valdo", max_distance_mm=5, gt_kind="agreement")
    # TPs claim weights 1 and 0.5 (Σw_TP = 1.5); the missed CMB's maximum is 1 (Σw_FN = 1);
    # one FP: F1 = 2·1.5 / (1 + 1 + 2·1.5) = 3 / 5
    assert (r.tp, r.fp, r.fn) == (2, 1, 1)
    assert r.valdo_f1 == pytest.approx(0.6)
    assert [g.attrs["weight"] for g in r.gt] == [1.0, 0.5, 1.0]
    # the same labels read as a mask are refused (0.5 is not binary) unless declared
    with pytest.raises(InputError, match="not binary"):
        score_case(pred, gt, spacing=SPACING, rule="valdo", max_distance_mm=5)
    # under another rule the weights are kept on the CMBs, the counts are the mask's
    o = score_case(pred, gt, spacing=SPACING, rule="overlap", gt_kind="agreement")
    assert (o.tp, o.fp, o.fn) == (2, 1, 1) and o.valdo_f1 is None
    assert o.gt[1].attrs["weight"] == 0.5


def test_weighted_f1_edges():
    # empty ground truth: undefined; empty prediction: 0; nothing to divide: undefined
    assert np.isnan(weighted_valdo_f1([], np.zeros(0, bool), np.zeros(0), 3))
    assert weighted_valdo_f1([], np.zeros(2, bool), np.array([1.0, 0.5]), 0) == 0.0
    # a tie: two TPs claim one CMB of weight 0.5 -> Σw_TP = 1, no FN, no FP -> 1
    assert weighted_valdo_f1([(0, 0), (1, 0)], np.array([True]), np.array([0.5]), 2) == 1.0
    gt = np.zeros((8, 8, 4), np.float32)
    gt[1, 1, 1] = 1.5
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        score_case(np.zeros(gt.shape, np.uint8), gt, spacing=SPACING, gt_kind="agreement")


@pytest.mark.parametrize("seed", range(12))
def test_unit_weights_give_the_official_plain_f1(seed):
    rng = np.random.default_rng(seed)
    gt = (rng.random((24, 24, 8)) > 0.985).astype(np.float32)
    pred = (rng.random(gt.shape) > 0.985).astype(np.uint8)
    plain = score_case(pred, gt.astype(np.uint8), spacing=SPACING, rule="valdo", max_distance_mm=4)
    weighted = score_case(
        pred, gt, spacing=SPACING, rule="valdo", max_distance_mm=4, gt_kind="agreement"
    )
    assert (weighted.tp, weighted.fp, weighted.fn) == (plain.tp, plain.fp, plain.fn)
    if plain.valdo_f1 is None or np.isnan(plain.valdo_f1):
        assert weighted.valdo_f1 is None or np.isnan(weighted.valdo_f1)
    else:
        assert weighted.valdo_f1 == pytest.approx(plain.valdo_f1)


def test_score_cli_declares_agreement_labels(tmp_path):
    from typer.testing import CliRunner

    from cmbbench.cli import app
    from cmbbench.io import save_nifti

    gt, pred = _gt_and_pred()
    aff = np.diag([*SPACING, 1.0])
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    save_nifti(tmp_path / "gt" / "sub-1.nii.gz", gt, aff)
    save_nifti(tmp_path / "pred" / "sub-1.nii.gz", pred, aff)
    base = ["score", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    base += ["--rule", "valdo", "--max-distance-mm", "5", "--workers", "1", "--n-bootstrap", "0"]
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 1 and "not binary" in r.output
    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, [*base, "--gt-agreement", "--out", str(out)])
    assert r.exit_code == 0, r.output
    from cmbbench.scoring.records import load_results

    assert load_results(out).cases[0].valdo_f1 == pytest.approx(0.6)
