"""``nnunet``: the real nnU-Net v2 as a detector, on tiny cube volumes.

One run (``cmbbench.run``, the ``tiny`` preset: nnU-Net's planning and preprocessing, then
2 epochs × 2 iterations of ``nnUNetTrainer_cmbbenchTiny``) is shared by the tests that need
a trained model; the resume and planning-failure tests reuse its exported/preprocessed data
so that nnU-Net's preprocessing (three pools of spawned processes) runs once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cmbbench_baselines.nnunet import (
    INSTALL_HINT,
    LOG_FILE,
    STATE_FILE,
    NnunetDetector,
    NnunetFolders,
    NnunetMissingError,
    NnunetStageError,
    cpu_autocast,
    environment_variables,
    require_nnunet,
)

from cmbbench.errors import CmbbenchError
from cmbbench.models.registry import load_plugin, model_info

PLUGIN = str(Path(__file__).with_name("engine_plugin_example.py"))
NNUNET_VARS = (
    "nnUNet_raw",
    "nnUNet_preprocessed",
    "nnUNet_results",
    "nnUNet_extTrainer",
    "nnUNet_n_proc_DA",
)


def test_registered_and_importing_the_baselines_imports_neither_torch_nor_nnunet() -> None:
    info = model_info("nnunet")
    assert info.kind == "detector" and "nnU-Net" in info.description
    code = (
        "import sys, cmbbench_baselines\n"
        "bad = [m for m in ('torch', 'nnunetv2') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_missing_nnunet_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # `import nnunetv2` raises ImportError
    with pytest.raises(NnunetMissingError, match=r"pip install cmbbench\[nnunet\]"):
        require_nnunet()
    with pytest.raises(NnunetMissingError) as err:
        NnunetDetector().fit([], [], {"device": "cpu", "out_dir": str(tmp_path)})
    assert INSTALL_HINT in str(err.value)
    assert not any(tmp_path.iterdir())  # failed before writing anything


def test_environment_variables_are_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_raw", "/somewhere/else")
    monkeypatch.delenv("nnUNet_results", raising=False)
    with (
        pytest.raises(RuntimeError),
        environment_variables({"nnUNet_raw": "/a", "nnUNet_results": "/b"}),
    ):
        assert os.environ["nnUNet_raw"] == "/a" and os.environ["nnUNet_results"] == "/b"
        raise RuntimeError("inside")
    assert os.environ["nnUNet_raw"] == "/somewhere/else"
    assert "nnUNet_results" not in os.environ


def test_nnunet_output_goes_to_the_log_and_an_unwritable_log_is_no_error(tmp_path: Path) -> None:
    from cmbbench_baselines.nnunet import stdout_to

    log = tmp_path / "nnunet.log"
    with stdout_to(log):
        print("from python")
        subprocess.run(["echo", "from a child process"], check=True)  # inherits fd 1
    assert log.read_text().splitlines() == ["from python", "from a child process"]
    with stdout_to(tmp_path / "missing" / "nnunet.log"):  # the folder does not exist
        print("discarded")
    assert not (tmp_path / "missing").exists()


def test_a_bad_results_dir_fails_with_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(CmbbenchError, match="not a folder"):
        NnunetDetector(results_dir=tmp_path / "missing")
    model = tmp_path / "Dataset501_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text('{"channel_names": {"0": "T2S"}}')
    with pytest.raises(CmbbenchError, match="model folders below it: Dataset501_X/nnUNet"):
        NnunetDetector(results_dir=tmp_path)
    with pytest.raises(CmbbenchError, match=r"no fold_<k>/checkpoint_final\.pth"):
        NnunetDetector(results_dir=model)


# --------------------------------------------------------------------- with nnU-Net
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """``cmbbench.run("nnunet", dataset="engine-cubes", preset="tiny")``: (record, run dir)."""
    pytest.importorskip("nnunetv2")
    import cmbbench

    load_plugin(PLUGIN)
    out = tmp_path_factory.mktemp("nnunet") / "run"
    before = {k: os.environ.get(k) for k in NNUNET_VARS}
    record = cmbbench.run("nnunet", dataset="engine-cubes", preset="tiny", out=out, n_bootstrap=20)
    assert {k: os.environ.get(k) for k in NNUNET_VARS} == before
    return record, out


def _cases(split: str):
    from cmbbench.datasets.registry import load_dataset

    load_plugin(PLUGIN)
    return list(load_dataset("engine-cubes", split=split))


def _fitted_detector(record) -> NnunetDetector:
    det = NnunetDetector()
    det.load_config(record.training["fitted"])
    return det


def test_end_to_end_tiny_run(tiny_run) -> None:
    record, out = tiny_run
    fitted = record.training["fitted"]
    assert fitted["training"]["trainer"] == "nnUNetTrainer_cmbbenchTiny"
    assert (fitted["training"]["epochs"], fitted["training"]["iterations_per_epoch"]) == (2, 2)
    assert fitted["training"]["resumed_from_epoch"] is None
    assert fitted["plans"] == "nnUNetPlans_cmbbenchCPU" and fitted["use_mirroring"] is False
    model_dir = Path(fitted["model_dir"])
    assert model_dir.is_relative_to(out.resolve())  # every nnU-Net folder inside the run
    assert (model_dir / "fold_0" / "checkpoint_final.pth").is_file()
    assert not (model_dir / "fold_0" / "checkpoint_latest.pth").exists()
    split = Path(fitted["model_dir"]).parents[2] / "preprocessed" / fitted["dataset"]
    import json

    folds = json.loads((split / "splits_final.json").read_text())
    assert folds == [
        {"train": ["cube00", "cube01", "cube02", "cube03"], "val": ["cube10", "cube11"]}
    ]
    pp = fitted["postprocess"]
    assert pp["tuned_on"] == "val" and pp["grid"] and 0 < pp["threshold"] < 1
    assert [c.case_id for c in record.cases] == ["cube20", "cube21", "cube22"]
    assert record.metrics["n_cases"] == 3
    assert record.metrics["sweep"]["source"] == "candidates"


def test_predict_gives_the_probability_map_on_the_case_grid(tiny_run) -> None:
    record, _ = tiny_run
    det = _fitted_detector(record)
    case = _cases("test")[0]
    pred = det.predict(case)
    raw = pred.meta["raw"]
    assert pred.prob.shape == raw.shape == tuple(case.shape)
    assert raw.dtype == np.float32 and 0.0 <= raw.min() and raw.max() <= 1.0
    t = pred.meta["threshold"]
    kept = pred.prob > 0
    assert np.all(pred.prob[kept] >= t) and np.array_equal(pred.prob[kept], raw[kept])


def test_probabilities_equal_nnunets_own_predictor_on_the_exported_folder(
    tiny_run, tmp_path: Path
) -> None:
    """nnU-Net's predictor, initialised by nnU-Net from the model folder, run on the test
    cases exported as nnU-Net files (its own reader, preprocessing and export)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from cmbbench.datasets.nnunet import export_nnunet

    record, _ = tiny_run
    fitted = record.training["fitted"]
    det = _fitted_detector(record)
    cases = _cases("test")
    folder = export_nnunet(cases, tmp_path, dataset_id=502, name="test") / "imagesTr"
    import torch

    predictor = nnUNetPredictor(
        tile_step_size=fitted["tile_step_size"],
        use_mirroring=fitted["use_mirroring"],
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    (tmp_path / "pred").mkdir()
    with environment_variables({"nnUNet_extTrainer": fitted["shim_dir"]}):
        predictor.initialize_from_trained_model_folder(fitted["model_dir"], (0,))
        predictor.predict_from_files_sequential(
            str(folder), str(tmp_path / "pred"), save_probabilities=True
        )
    for case in cases:
        theirs = np.load(tmp_path / "pred" / f"{case.case_id}.npz")["probabilities"]
        theirs = theirs[1].transpose(2, 1, 0)  # nnU-Net's (Z, Y, X) -> the case's (X, Y, Z)
        ours = det.probability(case)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_cpu_autocast_follows_the_recipes_amp_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import cmbbench.engine.trainer as trainer

    assert cpu_autocast("cpu", {"amp_cpu": "on"}) == "bfloat16"
    assert cpu_autocast("cpu", {"amp_cpu": "off"}) is None
    assert cpu_autocast("cuda", {"amp_cpu": "on"}) is None  # nnU-Net's own float16 there
    monkeypatch.setattr(trainer, "cpu_prefers_bf16", lambda: False)
    assert cpu_autocast("cpu", {"amp_cpu": "auto"}) is None
    monkeypatch.setattr(trainer, "cpu_prefers_bf16", lambda: True)
    assert cpu_autocast("cpu", {"amp_cpu": "auto"}) == "bfloat16"
    assert cpu_autocast("cpu", {}) is None  # the Recipe default, "off"


def test_bf16_prediction_is_close_to_float32(tiny_run) -> None:
    """The tiny preset predicts in float32 (``amp_cpu="off"``); the same model under CPU bf16
    autocast (what ``quick`` does on a bf16 CPU) differs by bf16 rounding only."""
    record, _ = tiny_run
    assert record.training["fitted"]["cpu_autocast"] is None
    det = _fitted_detector(record)
    case = _cases("test")[0]
    ref = det.probability(case)
    det.fitted["cpu_autocast"] = "bfloat16"
    bf16 = det.probability(case)
    assert bf16.dtype == np.float32 and bf16.shape == ref.shape
    diff = np.abs(bf16 - ref)
    # measured on this model: median 0.001-0.002, 99th percentile 0.010-0.013, max 0.15-0.23
    # (a few voxels on the steep edge of a cube, where bf16 rounding of a logit moves the
    # softmax most); correlation 0.9997. A float32 run would give max 0.
    assert diff.max() > 0  # the network did run in bf16
    assert np.median(diff) < 0.01 and np.percentile(diff, 99) < 0.05
    assert np.corrcoef(ref.ravel(), bf16.ravel())[0, 1] > 0.999


def test_results_dir_predicts_without_training(tiny_run, tmp_path: Path) -> None:
    record, _ = tiny_run
    fitted = record.training["fitted"]
    from cmbbench.datasets.registry import dataset_info

    det = NnunetDetector(results_dir=fitted["model_dir"], use_mirroring=False)
    config = {"device": "cpu", "out_dir": str(tmp_path), "preset": "tiny"}
    det.fit(
        _cases("train"),
        _cases("val"),
        {**config, "evaluator": dataset_info("engine-cubes").evaluator},
    )
    assert det.config()["source"] == "results_dir"
    assert not (tmp_path / "nnunet" / "results").exists()  # nothing trained
    case = _cases("test")[1]
    np.testing.assert_allclose(
        det.probability(case), _fitted_detector(record).probability(case), atol=1e-6
    )


def _copy_prepared(run: Path, dest: Path) -> Path:
    """The run's exported and preprocessed nnU-Net folders (no results) under ``dest``."""
    src = run / "nnunet"
    (dest / "nnunet").mkdir(parents=True)
    for name in ("raw", "preprocessed", STATE_FILE):
        (shutil.copytree if (src / name).is_dir() else shutil.copy)(
            src / name, dest / "nnunet" / name
        )
    return dest


def test_interrupted_training_resumes_from_nnunets_checkpoint(
    tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmbbench_baselines.nnunet_trainers import nnUNetTrainer_cmbbenchTiny

    from cmbbench.datasets.registry import dataset_info

    _, run = tiny_run
    out = _copy_prepared(run, tmp_path / "run")
    config = {
        "device": "cpu",
        "out_dir": str(out),
        "preset": "tiny",
        "evaluator": dataset_info("engine-cubes").evaluator,
    }
    original = nnUNetTrainer_cmbbenchTiny.on_epoch_end

    def interrupt_after_first_epoch(self) -> None:
        original(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(nnUNetTrainer_cmbbenchTiny, "on_epoch_end", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        NnunetDetector().fit(_cases("train"), _cases("val"), config)
    fold = out / "nnunet" / "results" / "Dataset501_cmbbench"
    fold = fold / "nnUNetTrainer_cmbbenchTiny__nnUNetPlans_cmbbenchCPU__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_latest.pth").is_file()
    assert not (fold / "checkpoint_final.pth").exists()
    assert os.environ.get("nnUNet_results") != str(out / "nnunet" / "results")  # restored

    monkeypatch.setattr(nnUNetTrainer_cmbbenchTiny, "on_epoch_end", original)
    det = NnunetDetector()
    det.fit(_cases("train"), _cases("val"), config)
    training = det.config()["training"]
    assert training["resumed_from_epoch"] == 1 and training["already_trained"] is False
    assert (fold / "checkpoint_final.pth").is_file()
    assert not (fold / "checkpoint_latest.pth").exists()
    assert "plan_and_preprocess_seconds" not in det.config()["seconds"]  # reused, not redone

    with pytest.raises(CmbbenchError, match="other cases or with another trainer"):
        NnunetDetector().fit(_cases("train")[:3], _cases("val"), config)


def test_planning_failure_names_stage_dataset_and_nnunets_message(tiny_run, tmp_path: Path) -> None:
    import nibabel as nib

    from cmbbench.datasets.registry import dataset_info

    _, run = tiny_run
    out = _copy_prepared(run, tmp_path / "run")
    folders = NnunetFolders(out / "nnunet", "Dataset501_cmbbench")
    shutil.rmtree(folders.preprocessed)
    state_path = folders.root / STATE_FILE
    import json

    state = json.loads(state_path.read_text())
    state["preprocessed"] = False
    state_path.write_text(json.dumps(state))
    # a label whose grid differs from its image: nnU-Net's dataset check refuses it
    nib.save(
        nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)),
        folders.raw_dataset / "labelsTr" / "cube01.nii.gz",
    )
    config = {
        "device": "cpu",
        "out_dir": str(out),
        "preset": "tiny",
        "evaluator": dataset_info("engine-cubes").evaluator,
    }
    with pytest.raises(NnunetStageError) as err:
        NnunetDetector().fit(_cases("train"), _cases("val"), config)
    e = err.value
    assert e.stage == "dataset check and fingerprint extraction"
    assert e.dataset == "Dataset501_cmbbench" and "Dataset501_cmbbench" in str(e)
    assert e.nnunet_message and e.nnunet_message in str(e)
    assert e.log_file == folders.root / LOG_FILE and "cube01" in e.log_file.read_text()
