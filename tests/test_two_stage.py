"""two_stage: LoG candidates + a patch CNN (keeps a CMB, rejects a mimic, restores, validates)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmbbench.cases import Case, CaseData
from cmbbench.errors import CmbbenchError, UnknownNameError
from cmbbench.models.detector import Detector, Prediction
from cmbbench.models.registry import build_model, model_info, register_model, unregister_model
from cmbbench.scoring.evaluator import Evaluator

torch = pytest.importorskip("torch")

SPACING = (1.0, 1.0, 3.0)  # anisotropic, like a 2D T2* protocol
SHAPE = (48, 48, 12)
NOISE = 0.04


def _ball(centre_vox, radius_mm, shape=SHAPE) -> np.ndarray:
    g = np.indices(shape, dtype=float)
    d2 = sum(((g[a] - centre_vox[a]) * SPACING[a]) ** 2 for a in range(3))
    return d2 <= radius_mm**2


def _tube(centre_vox, direction, radius_mm, length_mm, shape=SHAPE) -> np.ndarray:
    """An in-plane cylinder (world mm) around a segment through ``centre_vox``."""
    m = np.zeros(shape, dtype=bool)
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    for t in np.linspace(-length_mm / 2, length_mm / 2, int(length_mm * 2)):
        q = np.asarray(centre_vox, float)
        q[:2] += t * d[:2]
        m |= _ball(q, radius_mm, shape)
    return m


def _case(seed: int, case_id: str | None = None) -> tuple[Case, list[np.ndarray], np.ndarray]:
    """A 48×48×12-voxel (1×1×3 mm) noisy bright ellipsoid with two dark balls (labelled CMBs,
    radius 2 mm) and two dark in-plane tubes of the same intensity (unlabelled vessel mimics,
    radius 1.2 mm, 18 mm long). Returns the case, the CMB masks and the union of the tubes."""
    rng = np.random.default_rng(seed)
    g = np.indices(SHAPE, dtype=float)
    c = (np.asarray(SHAPE) - 1) / 2
    inside = sum(((g[a] - c[a]) / (0.48 * SHAPE[a])) ** 2 for a in range(3)) <= 1
    img = np.where(inside, 1.0, 0.0) + rng.normal(0, NOISE, SHAPE)
    label = np.zeros(SHAPE, dtype=np.uint16)
    slots = [(14, 14), (34, 34), (14, 34), (34, 14)]
    order = rng.permutation(4)
    cmbs = []
    for k, i in enumerate(order[:2]):
        m = _ball((*slots[i], 6 + rng.integers(-1, 2)), 2.0)
        img[m] = 0.25
        label[m] = k + 1
        cmbs.append(m)
    tubes = np.zeros(SHAPE, dtype=bool)
    for i in order[2:]:
        angle = rng.uniform(0, np.pi)
        tubes |= _tube((*slots[i], 6), (np.cos(angle), np.sin(angle), 0), 1.2, 18.0)
    img[tubes] = 0.25
    image = img.astype(np.float32)
    case = Case(
        case_id or f"case-{seed}",
        np.diag([*SPACING, 1.0]),
        SHAPE,
        "instance",
        lambda: CaseData(image.copy(), label.copy()),
    )
    return case, cmbs, tubes


def _config(tmp_path: Path | None = None, seed: int = 0) -> dict:
    cfg = {"seed": seed, "device": "cpu", "evaluator": Evaluator("overlap"), "recipe": {}}
    if tmp_path is not None:
        cfg["out_dir"] = str(tmp_path)
    return cfg


def test_registered_detector_and_import_is_torch_free() -> None:
    info = model_info("two_stage")
    assert info.kind == "detector" and "16x16x8" in info.description
    built = build_model("two_stage")
    assert built.kind == "detector" and isinstance(built.model, Detector)
    code = (
        "import sys\nimport cmbbench_baselines.two_stage\n"
        "assert 'torch' not in sys.modules, 'importing two_stage imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_unknown_stage1_lists_the_known_models() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown stage-1 model 'nope'.*classical_log"):
        build_model("two_stage", stage1="nope")
    with pytest.raises(CmbbenchError, match=r"'unet3d' is a network; stage 1 must be a detector"):
        build_model("two_stage", stage1="unet3d")
    with pytest.raises(CmbbenchError, match="unknown parameters"):
        build_model("two_stage", stage_one="classical_log")


def test_overfits_a_tiny_case_keeping_the_cmb_and_rejecting_the_mimic(tmp_path: Path) -> None:
    # Two training cases, one validation case, each with 2 labelled dark balls and 2
    # unlabelled dark tubes of the same intensity: the LoG stage proposes both kinds, and stage
    # 2 must learn the shape. On a training case every CMB's blob is painted at or above the
    # tuned threshold and no tube voxel is.
    train = [_case(1)[0], _case(2)[0]]
    val = [_case(3)[0]]
    # a smaller patch (12×12×4 voxels) and network (8, 16) than the defaults keep it to seconds
    kw = {"steps": 100, "batch_size": 32, "patch_size": (12, 12, 4), "widths": (8, 16)}
    det = build_model("two_stage", **kw).model
    det.fit(train, val, _config(tmp_path))
    fit = det.fit_summary
    assert fit["stage1_recall_train"] == 1.0 and fit["stage1_recall_val"] == 1.0
    assert fit["stage2"]["tp_patches"] >= 4 and fit["stage2"]["fp_patches"] >= 4
    assert 0.0 < fit["rejection_rate_train"] < 1.0
    assert fit["val_tp_fp_fn"] == [2, 0, 0]
    case, cmbs, tubes = _case(1)
    pred = det.predict(case)
    thr = pred.meta["threshold"]
    assert thr == det.threshold and 0.0 < thr <= 1.0
    for m in cmbs:
        assert pred.prob[m].max() >= thr
    assert pred.prob[tubes].max() < thr
    res = Evaluator("overlap").evaluate(pred.prob, case, threshold=thr)
    assert (res.tp, res.fp, res.fn) == (2, 0, 0)
    saved = json.loads((tmp_path / "two_stage.json").read_text())
    assert saved["threshold"] == thr and saved["fit"]["n_gt_train"] == 4


def test_predict_smoke_restore_and_determinism() -> None:
    # A few steps on tiny data: a probability map of the case's shape in [0, 1] with the
    # operating threshold in meta; config() is JSON-able and load_config() restores exactly the
    # same predictions; a second fit with the same seed gives the same weights.
    train, val = [_case(4)[0]], [_case(5)[0]]
    det = build_model("two_stage", steps=4, batch_size=8).model
    det.fit(train, val, _config())
    case = _case(6)[0]
    pred = det.predict(case)
    assert isinstance(pred, Prediction) and pred.kind == "prob"
    assert pred.prob.shape == SHAPE and pred.prob.dtype == np.float32
    assert 0.0 <= pred.prob.min() and pred.prob.max() <= 1.0
    assert pred.meta["n_candidates"] > 0 and 0.0 <= pred.meta["rejection_rate"] <= 1.0
    fitted = json.loads(json.dumps(det.config()))
    assert fitted["fit"]["stage2"]["steps"] == 4 and fitted["fit"]["steps_source"] == "model"
    restored = build_model("two_stage").model
    restored.load_config(fitted)
    np.testing.assert_array_equal(restored.predict(case).prob, pred.prob)
    again = build_model("two_stage", steps=4, batch_size=8).model
    again.fit(train, val, _config())
    np.testing.assert_array_equal(again.predict(case).prob, pred.prob)


def test_steps_come_from_the_recipe_and_another_detector_can_be_stage1() -> None:
    # stage1 = a registered toy detector whose map marks the dark voxels: its components are
    # the candidates (fitted first); steps = the run recipe's steps when not given.
    class Dark:
        fitted = False

        def fit(self, train, val, config):
            Dark.fitted = True

        def predict(self, case):
            return Prediction(prob=(np.asarray(case.image) < 0.5).astype(np.float32) * 0.9)

    register_model("toy_dark", kind="detector")(lambda: Dark())
    try:
        det = build_model("two_stage", stage1="toy_dark", batch_size=8).model
        cfg = {**_config(), "recipe": {"steps": 3}}
        det.fit([_case(7)[0]], [], cfg)
        assert Dark.fitted
        fit = det.fit_summary
        assert fit["stage1"] == "toy_dark" and fit["stage2"]["steps"] == 3
        assert fit["steps_source"] == "recipe" and fit["tuned_on"] == "train"
        assert fit["stage1_recall_train"] == 1.0
        # the dark balls, the tubes and the dark background outside the head
        assert 4 <= fit["candidates_per_case_train"] <= 6
    finally:
        unregister_model("toy_dark")


def test_agreement_labels_count_every_cmb() -> None:
    # A rater-agreement label (float weights per CMB, here 0.5 and 1.0) marks CMBs as its
    # components: a weight below 1 is not lost to an integer cast (classical_log's matching).
    from cmbbench_baselines.classical import _gt_instances

    case, cmbs, _ = _case(1)
    weights = np.zeros(SHAPE, dtype=np.float32)
    weights[cmbs[0]], weights[cmbs[1]] = 0.5, 1.0
    image = np.asarray(case.image)
    agreement = Case(
        "agree", case.affine, SHAPE, "agreement", lambda: CaseData(image, weights.copy())
    )
    inst = _gt_instances(agreement)
    assert inst is not None and set(np.unique(inst[inst > 0]).tolist()) == {1, 2}
    det = build_model("two_stage", steps=2, batch_size=8).model
    det.fit([agreement], [], _config())
    assert det.fit_summary["n_gt_train"] == 2 and det.fit_summary["stage1_recall_train"] == 1.0
