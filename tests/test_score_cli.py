"""`cmbbench score` through typer's runner: real-layout folders and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from cmbbench.cli import app
from cmbbench.io import load_nifti, save_nifti
from cmbbench.scoring.case import score_case
from cmbbench.scoring.folder import case_id_from_filename, score_folder

SHAPE = (16, 18, 12)
# LAS orientation (x flipped), 0.5 x 0.5 x 1.5 mm, translated: VALDO-like
LAS = np.array(
    [[-0.5, 0, 0, 40.0], [0, 0.5, 0, -30.0], [0, 0, 1.5, -10.0], [0, 0, 0, 1.0]], dtype=np.float64
)


def make_case(seed: int):
    """float64 0/1 label with 0..3 CMBs; a float32 probability prediction hitting some."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(SHAPE, dtype=np.float64)
    pred = np.zeros(SHAPE, dtype=np.float32)
    for _ in range(seed % 4):
        x, y, z = rng.integers(1, np.array(SHAPE) - 3)
        gt[x : x + 2, y : y + 2, z : z + 2] = 1.0
        if rng.random() < 0.7:
            pred[x + 1 : x + 3, y : y + 2, z : z + 2] = rng.uniform(0.55, 0.99)
    x, y, z = rng.integers(0, SHAPE)
    pred[x, y, z] = 0.8  # usually an FP
    return pred, gt


def valdo_folders(tmp_path: Path, n: int = 4, pred_name="{sid}.nii.gz"):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    arrays = {}
    for i in range(n):
        sid = f"sub-1{i:02d}"
        pred, gt = make_case(i)
        save_nifti(gt_dir / f"{sid}_space-T2S_CMB.nii.gz", gt, LAS)
        save_nifti(pred_dir / pred_name.format(sid=sid), pred, LAS)
        arrays[sid] = (pred, gt)
    return pred_dir, gt_dir, arrays


def run(*args):
    return CliRunner().invoke(app, ["score", *map(str, args)])


def assert_fails(res, *needles):
    assert res.exit_code != 0, res.output
    err = res.stderr.strip()
    assert err.startswith("error:"), err
    assert "\n" not in err, err  # one line
    for needle in needles:
        assert needle in err, err


def test_case_ids():
    assert case_id_from_filename("sub-101_space-T2S_CMB.nii.gz") == "sub-101"
    assert case_id_from_filename("sub-101.nii.gz") == "sub-101"
    assert case_id_from_filename("sub-2_ses-3_space-T2S_CMB.nii") == "sub-2_ses-3"
    assert case_id_from_filename("case_001_0000.nii.gz") == "case_001"
    assert case_id_from_filename("case_001.nii.gz") == "case_001"
    assert case_id_from_filename("brain.nii") == "brain"
    assert case_id_from_filename("notes.txt") is None


def test_happy_path_matches_python_api(tmp_path):
    pred_dir, gt_dir, _ = valdo_folders(tmp_path)
    out, csv_path = tmp_path / "r.json", tmp_path / "c.csv"
    res = run("--pred", pred_dir, "--gt", gt_dir, "--out", out, "--csv", csv_path,
              "--n-bootstrap", 50, "--workers", 2)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Recall (micro, pooled)" in res.stdout
    data = json.loads(out.read_text())
    assert data["rule"] == "overlap" and data["params"]["connectivity"] == 26
    assert data["cmbbench_version"]
    assert data["metrics"]["n_cases"] == 4
    assert [c["case_id"] for c in data["cases"]] == ["sub-100", "sub-101", "sub-102", "sub-103"]
    for c in data["cases"]:
        # the Python API on the arrays as read from disk gives the same counts
        pred, _, _ = load_nifti(pred_dir / f"{c['case_id']}.nii.gz")
        gt, gaff, _ = load_nifti(gt_dir / f"{c['case_id']}_space-T2S_CMB.nii.gz")
        assert gt.dtype == np.float64
        r = score_case(pred, gt, affine=gaff)
        assert (c["n_gt"], c["n_pred"], c["tp"], c["fp"], c["fn"]) == (
            r.n_gt, r.n_pred, r.tp, r.fp, r.fn
        )  # fmt: skip
        assert c["spacing"] == [0.5, 0.5, 1.5]
    assert sum(c["n_gt"] for c in data["cases"]) == 0 + 1 + 2 + 3
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("case_id,n_gt,n_pred,tp,fp,fn")
    assert len(rows) == 5 and rows[1].startswith("sub-100,0,")
    # in-process scoring gives the identical report
    rep = score_folder(pred_dir, gt_dir, workers=1, n_bootstrap=50)
    assert [c.to_dict() for c in rep.cases] == data["cases"]


def test_valdo_rule_and_dataset_defaults(tmp_path):
    pred_dir, gt_dir, _ = valdo_folders(tmp_path, n=2)
    res = run("--pred", pred_dir, "--gt", gt_dir, "--rule", "valdo", "--workers", 1)
    assert_fails(res, "--max-distance-mm")
    out = tmp_path / "v.json"
    res = run("--pred", pred_dir, "--gt", gt_dir, "--rule", "valdo", "--max-distance-mm", 2,
              "--workers", 1, "--n-bootstrap", 10, "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["rule"] == "valdo" and data["params"]["max_distance_mm"] == 2.0
    assert "VALDO mean per-case F1" in res.stdout
    # --dataset valdo takes the dataset's default rule and parameters
    out = tmp_path / "d.json"
    res = run("--pred", pred_dir, "--gt", gt_dir, "--dataset", "valdo", "--workers", 1,
              "--n-bootstrap", 10, "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["info"]["dataset"] == "valdo"
    # ... and its per-case metadata: the cohort from the subject number (sub-1xx -> cohort1)
    assert {c["case_id"]: c["meta"]["cohort"] for c in data["cases"]} == {
        c["case_id"]: "cohort" + c["case_id"][4] for c in data["cases"]
    }
    assert "cohort" in data["metrics"]["strata"]


def test_nnunet_names(tmp_path):
    pred_dir, gt_dir = tmp_path / "p", tmp_path / "g"
    pred, gt = make_case(3)
    save_nifti(gt_dir / "cmb_007.nii.gz", gt.astype(np.uint8), LAS)
    save_nifti(pred_dir / "cmb_007_0000.nii.gz", (pred >= 0.5).astype(np.uint8), LAS)
    out = tmp_path / "r.json"
    res = run("--pred", pred_dir, "--gt", gt_dir, "--workers", 1, "--n-bootstrap", 10, "--out", out)
    assert res.exit_code == 0, res.output
    (c,) = json.loads(out.read_text())["cases"]
    assert c["case_id"] == "cmb_007" and c["n_gt"] == 3


def test_instance_labels_need_the_flag(tmp_path):
    pred_dir, gt_dir = tmp_path / "p", tmp_path / "g"
    gt = np.zeros(SHAPE, np.int16)
    gt[2:4, 2:4, 2:4] = 1
    gt[4:6, 2:4, 2:4] = 2  # touches CMB 1
    save_nifti(gt_dir / "c1.nii.gz", gt, LAS)
    save_nifti(pred_dir / "c1.nii.gz", (gt > 0).astype(np.uint8), LAS)
    assert_fails(run("--pred", pred_dir, "--gt", gt_dir, "--workers", 1), "c1", "not binary")
    out = tmp_path / "r.json"
    res = run("--pred", pred_dir, "--gt", gt_dir, "--gt-instance", "--workers", 1,
              "--n-bootstrap", 10, "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    (c,) = json.loads(out.read_text())["cases"]
    assert (c["n_gt"], c["tp"], c["fn"]) == (2, 1, 1)


def _write(path: Path, array, affine=LAS):
    save_nifti(path, array, affine)


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("shape", "shape mismatch"),
        ("affine", "affines differ"),
        ("nan", "NaN"),
        ("range", "[0, 1]"),
        ("nonbinary", "not binary"),
        ("4d", "3-D"),
        ("truncated", "truncated"),
    ],
)
def test_bad_case_fails_naming_it(tmp_path, kind, needle):
    pred_dir, gt_dir, arrays = valdo_folders(tmp_path, n=3)
    sid = "sub-101"
    pred, gt = arrays[sid]
    target = pred_dir / f"{sid}.nii.gz"
    if kind == "shape":
        _write(target, pred[:, :, :-1])
    elif kind == "affine":
        aff = LAS.copy()
        aff[0, 3] += 0.5
        _write(target, pred, aff)
    elif kind == "nan":
        p = pred.copy()
        p[0, 0, 0] = np.nan
        _write(target, p)
    elif kind == "range":
        _write(target, pred * 2 + 0.1)
    elif kind == "nonbinary":
        g = gt.copy()
        g[0, 0, 0] = 2.0
        _write(gt_dir / f"{sid}_space-T2S_CMB.nii.gz", g)
    elif kind == "4d":
        _write(target, np.stack([pred, pred], axis=-1))
    elif kind == "truncated":
        # noisy data so that the cut lands in the compressed voxel data, after the header
        noisy = np.random.default_rng(0).random(SHAPE).astype(np.float32)
        _write(target, noisy)
        data = target.read_bytes()
        target.write_bytes(data[: len(data) * 2 // 3])
    res = run("--pred", pred_dir, "--gt", gt_dir, "--workers", 1, "--n-bootstrap", 10)
    assert_fails(res, sid, needle)


def test_bad_case_in_worker_processes(tmp_path):
    pred_dir, gt_dir, arrays = valdo_folders(tmp_path, n=3)
    p = arrays["sub-102"][0].copy()
    p[1, 1, 1] = np.inf
    _write(pred_dir / "sub-102.nii.gz", p)
    assert_fails(run("--pred", pred_dir, "--gt", gt_dir, "--workers", 2), "sub-102", "NaN or Inf")


def test_missing_prediction(tmp_path):
    pred_dir, gt_dir, _ = valdo_folders(tmp_path, n=3)
    (pred_dir / "sub-102.nii.gz").unlink()
    assert_fails(
        run("--pred", pred_dir, "--gt", gt_dir, "--workers", 1), "sub-102", "--missing empty"
    )
    out = tmp_path / "r.json"
    res = run("--pred", pred_dir, "--gt", gt_dir, "--missing", "empty", "--workers", 1,
              "--n-bootstrap", 10, "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "sub-102" in res.stderr and "scored as empty" in res.stderr
    data = json.loads(out.read_text())
    c = next(c for c in data["cases"] if c["case_id"] == "sub-102")
    assert (c["n_pred"], c["tp"], c["fn"]) == (0, 0, c["n_gt"]) and c["n_gt"] == 2
    assert data["info"]["missing_predictions_scored_empty"] == ["sub-102"]


def test_extra_prediction_warns_and_is_listed(tmp_path):
    pred_dir, gt_dir, arrays = valdo_folders(tmp_path, n=2)
    _write(pred_dir / "sub-999.nii.gz", arrays["sub-100"][0])
    out = tmp_path / "r.json"
    res = run("--pred", pred_dir, "--gt", gt_dir, "--workers", 1, "--n-bootstrap", 10, "--out", out)
    assert res.exit_code == 0, res.output
    assert "warning" in res.stderr and "sub-999" in res.stderr
    data = json.loads(out.read_text())
    assert data["info"]["unmatched_predictions"] == ["sub-999"]
    assert len(data["cases"]) == 2


def test_empty_folders(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    assert_fails(run("--pred", tmp_path / "p", "--gt", tmp_path / "g"), "empty test set")
    assert_fails(run("--pred", tmp_path / "p", "--gt", tmp_path / "nope"), "not found")
    # ground truth present but no prediction matches any case, even with --missing empty
    _write(tmp_path / "g" / "a.nii.gz", np.zeros(SHAPE, np.uint8))
    assert_fails(
        run("--pred", tmp_path / "p", "--gt", tmp_path / "g", "--missing", "empty"),
        "no prediction file matches",
    )


def test_bad_options(tmp_path):
    pred_dir, gt_dir, _ = valdo_folders(tmp_path, n=1)
    assert_fails(run("--pred", pred_dir, "--gt", gt_dir, "--rule", "iou"), "unknown rule")
    assert_fails(run("--pred", pred_dir, "--gt", gt_dir, "--connectivity", 8), "6, 18 or 26")
    assert_fails(run("--pred", pred_dir, "--gt", gt_dir, "--dataset", "nope"), "unknown dataset")


def test_valdo_root_layout(tmp_path):
    # a VALDO root: sub-XXX/ folders holding the image and the _CMB label
    pred_dir, flat_gt, arrays = valdo_folders(tmp_path, n=2)
    root = tmp_path / "valdo"
    for sid, (_, gt) in arrays.items():
        _write(root / sid / f"{sid}_space-T2S_CMB.nii.gz", gt)
        _write(root / sid / f"{sid}_space-T2S_desc-masked_T2S.nii.gz", gt * 100)
    a = score_folder(pred_dir, root, workers=1, n_bootstrap=10)
    b = score_folder(pred_dir, flat_gt, workers=1, n_bootstrap=10)
    assert [c.to_dict() for c in a.cases] == [c.to_dict() for c in b.cases]


def test_nifti_on_disk_is_fortran_ordered(tmp_path):
    # nibabel arrays are F-ordered views; scoring must not depend on memory layout
    pred, gt = make_case(3)
    _write(tmp_path / "g.nii.gz", gt)
    arr = np.asarray(nib.load(str(tmp_path / "g.nii.gz")).dataobj)
    assert arr.flags.f_contiguous and not arr.flags.c_contiguous
    a = score_case(pred, arr, affine=LAS)
    b = score_case(pred, np.ascontiguousarray(arr), affine=LAS)
    assert a == b


def test_affine_tolerance():
    from cmbbench.errors import InputError
    from cmbbench.scoring.case import check_affines

    # float32 rounding of a stored affine (~1e-6 mm) is accepted; 0.01 mm is not
    check_affines(LAS.astype(np.float32).astype(np.float64) + 1e-6, LAS, "c")
    shifted = LAS.copy()
    shifted[2, 3] += 0.01
    with pytest.raises(InputError, match=r"case 'c'.*affines differ"):
        check_affines(shifted, LAS, "c")
