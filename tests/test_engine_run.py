"""The whole pipeline: run(), the run record, predict_folder, the CLI, faults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cmbbench.cli import app
from cmbbench.engine.record import load_run_record
from cmbbench.errors import CmbbenchError
from cmbbench.models.registry import load_plugin

PLUGIN = str(Path(__file__).with_name("engine_plugin_example.py"))
TINY = {"steps": 30, "val_every": 15, "checkpoint_every": 10, "batch_size": 4}


@pytest.fixture(scope="module")
def plugin():
    return load_plugin(PLUGIN)


@pytest.fixture(scope="module")
def tiny_run(plugin, tmp_path_factory):
    from cmbbench.engine.run import run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    torch.set_num_threads(1)
    events = []
    record = run(
        "engine_tiny",
        "engine-cubes",
        preset="tiny",
        device="cpu",
        out=out,
        overrides=TINY,
        n_bootstrap=50,
        progress=events.append,
    )
    return out, record, events


@pytest.mark.slow
def test_run_writes_a_complete_record(tiny_run):
    out, record, events = tiny_run
    assert (out / "record.json").is_file()
    back = load_run_record(out)
    # re-saving a loaded record is byte-stable
    back.save(out / "again.json")
    assert (out / "again.json").read_bytes() == (out / "record.json").read_bytes()
    assert [c.case_id for c in record.cases] == ["cube20", "cube21", "cube22"]
    assert record.dataset["name"] == "engine-cubes" and record.dataset["version"] == "test-1"
    assert (record.dataset["n_train"], record.dataset["n_val"], record.dataset["n_test"]) == (
        4,
        2,
        3,
    )
    assert record.rule == "overlap" and record.seed == 0
    # provenance of the recipe: model overrides and user overrides are named
    assert record.recipe_sources["lr"] == "model" and record.recipe["lr"] == 1e-2
    assert record.recipe_sources["steps"] == "user" and record.recipe["steps"] == 30
    assert record.recipe_sources["aug_flip"] == "preset:tiny"
    assert record.model["output"] == "softmax2" and record.model["source"].startswith("plugin")
    assert record.training["steps"] == 30 and len(record.training["loss_every_step"]) == 30
    assert [v["step"] for v in record.training["validations"]] == [15, 30]
    assert record.postprocess["tuned_on"] == "val" and record.postprocess["threshold"] in (
        0.3,
        0.5,
        0.7,
    )
    assert (
        "f1_micro" in record.metrics["headline"] and "ci" in record.metrics["headline"]["f1_micro"]
    )
    for key in (
        "train_seconds",
        "seconds_per_step",
        "inference_seconds_per_case",
        "peak_memory_bytes",
    ):
        assert record.timings[key] > 0
    assert record.environment["torch"] == torch.__version__
    # the test split holds 4 CMBs (two cubes in each of two cases); the tiny net finds them
    assert sum(c.n_gt for c in record.cases) == 4
    assert sum(c.tp for c in record.cases) >= 3
    # the record is also a score report
    from cmbbench.scoring.records import load_results

    assert len(load_results(out / "record.json").cases) == 3
    # every long phase reported progress, training with its ETA and loss
    assert {e.phase for e in events} >= {"data", "train", "tune", "infer"}
    train_events = [e for e in events if e.phase == "train"]
    assert train_events[-1].completed == train_events[-1].total == 30
    assert train_events[-1].eta_s == 0 and "loss" in train_events[-1].metrics


@pytest.mark.slow
def test_record_metrics_are_those_of_its_own_cases(tiny_run):
    # the record's metrics are aggregate() of exactly the per-case results it stores (after
    # their JSON round trip) with the run's seed, and its totals are the per-case sums
    from cmbbench.io import dumps
    from cmbbench.scoring.metrics import aggregate

    _, record, _ = tiny_run
    again = json.loads(dumps(aggregate(record.cases, n_bootstrap=50, seed=record.seed)))
    assert again == record.metrics
    assert record.metrics["bootstrap"]["seed"] == record.seed
    totals = record.metrics["detection"]["totals"]
    for key in ("tp", "fp", "fn", "n_gt", "n_pred"):
        assert totals[key] == sum(getattr(c, key) for c in record.cases), key
    tp, fp, fn = totals["tp"], totals["fp"], totals["fn"]
    assert record.metrics["headline"]["f1_micro"]["value"] == pytest.approx(
        2 * tp / (2 * tp + fp + fn)
    )


def test_detector_runs_through_the_same_pipeline(plugin, tmp_path):
    from cmbbench.engine.run import run

    record = run(
        "engine_dark",
        "engine-cubes",
        preset="tiny",
        device="cpu",
        out=tmp_path / "d",
        n_bootstrap=20,
    )
    assert record.model["kind"] == "detector" and record.postprocess["applied"] is False
    # the dark cubes (intensity 20 vs ~100) are exactly what the detector finds
    assert sum(c.tp for c in record.cases) == 4 and sum(c.fp for c in record.cases) == 0
    assert record.artifacts == {}
    # a detector's run records the process's peak memory, as a network's does
    assert record.timings["peak_memory_bytes"] > 0
    assert record.timings["peak_memory_kind"] == "cpu_max_rss"
    # what fit() chose is in the record (the detector's config()): the grid's first value,
    # 0.3 × median, already separates the cubes (20) from the tissue (~100); ties keep it
    assert record.training["fitted"] == {"fraction": 0.3}


@pytest.mark.slow
def test_predict_keeps_affine_and_shape(tiny_run, tmp_path):
    from cmbbench.engine.predict import predict_folder
    from cmbbench.io import load_nifti, save_nifti

    out, _, _ = tiny_run
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    affines = {}
    for name, shape in (("a", (20, 22, 10)), ("b", (24, 16, 12))):
        img = (100 + 5 * rng.standard_normal(shape)).astype(np.float32)
        img[5:8, 5:8, 4:7] = 20
        theta = 0.3  # an oblique affine with anisotropic voxels and an offset
        aff = np.array(
            [
                [0.9 * np.cos(theta), -0.9 * np.sin(theta), 0, -40.5],
                [0.9 * np.sin(theta), 0.9 * np.cos(theta), 0, 12.25],
                [0, 0, 3.0, -7.0],
                [0, 0, 0, 1],
            ]
        )
        save_nifti(images / f"{name}.nii.gz", img, aff)
        affines[name] = load_nifti(images / f"{name}.nii.gz")[1]
    written = predict_folder(out, images, tmp_path / "pred", device="cpu")
    assert [p.name for p in written] == ["a.nii.gz", "b.nii.gz"]
    for p in written:
        prob, aff, _ = load_nifti(p)
        src = load_nifti(images / p.name)[0]
        assert prob.shape == src.shape and prob.dtype == np.float32
        np.testing.assert_allclose(aff, affines[p.name.split(".")[0]], atol=1e-6)
        assert 0 <= prob.min() and prob.max() <= 1
        assert prob[6, 6, 5] > 0.5  # the dark cube is found
    pp = predict_folder(out, images, tmp_path / "pp", device="cpu", output="postprocessed")
    assert len(pp) == 2


@pytest.mark.slow
def test_predict_runs_a_fitted_detector(plugin, tmp_path):
    # A classical_log run stores its fitted thresholds in the record (training.fitted);
    # predict_folder rebuilds the detector from them and must write, for each test image,
    # exactly the map the run scored (no refit), in the image's own space.
    from cmbbench.engine.predict import predict_folder
    from cmbbench.engine.run import run
    from cmbbench.io import load_nifti, save_nifti
    from cmbbench.models.registry import build_model

    cube_case = plugin.cube_case
    out = tmp_path / "clog"
    record = run("classical_log", "engine-cubes", preset="tiny", device="cpu", out=out,
                 n_bootstrap=20)  # fmt: skip
    fitted = record.training["fitted"]
    images = tmp_path / "images"
    for idx in (20, 21):
        case = cube_case(idx)
        save_nifti(images / f"{case.case_id}.nii.gz", case.image, case.affine)
    written = predict_folder(out, images, tmp_path / "pred", device="cpu")
    refit = build_model("classical_log").model
    refit.load_config(fitted)
    assert refit.params.threshold == fitted["threshold"]
    for path, idx in zip(written, (20, 21), strict=True):
        prob, affine, _ = load_nifti(path)
        case = cube_case(idx)
        np.testing.assert_allclose(affine, case.affine, atol=1e-6)
        np.testing.assert_array_equal(prob, refit.predict(case).prob)
        assert prob[case.label > 0].max() > 0.5  # its dark cubes are found
    pp = predict_folder(out, images, tmp_path / "pp", device="cpu", output="postprocessed")
    kept = load_nifti(pp[0])[0]
    assert (kept[kept > 0] >= 0.5).all()


def test_predict_refuses_a_detector_without_load_config(plugin, tmp_path):
    from cmbbench.engine.predict import predict_folder
    from cmbbench.engine.run import run

    out = tmp_path / "det"
    run("engine_dark", "engine-cubes", preset="tiny", device="cpu", out=out,
        n_bootstrap=20)  # fmt: skip
    images = tmp_path / "images"
    from cmbbench.io import save_nifti

    case = plugin.cube_case(20)
    save_nifti(images / "a.nii.gz", case.image, case.affine)
    with pytest.raises(CmbbenchError, match="cannot be restored from its record"):
        predict_folder(out, images, tmp_path / "pred", device="cpu")


def _counts(cases):
    return [(c.case_id, c.tp, c.fp, c.fn) for c in cases]


@pytest.mark.slow
def test_evaluate_run_reproduces_the_runs_own_test_scores(tiny_run, tmp_path):
    # evaluate_run predicts with the run's best weights and tuned post-processing and scores
    # with the dataset's rule: on the run's own test split it must give the record's per-case
    # counts exactly; on another split it scores those cases instead.
    from cmbbench.engine.evaluate import evaluate_run
    from cmbbench.scoring.records import load_results, save_results

    out, record, _ = tiny_run
    report = evaluate_run(out, "engine-cubes", split="test", device="cpu", n_bootstrap=20)
    assert _counts(report.cases) == _counts(record.cases)
    assert report.rule == record.rule and report.info["model"] == "engine_tiny"
    assert report.info["postprocess"]["threshold"] == record.postprocess["threshold"]
    val = evaluate_run(out, "engine-cubes", split="val", device="cpu", n_bootstrap=20)
    assert [c.case_id for c in val.cases] == ["cube10", "cube11"]
    everything = evaluate_run(
        out, "engine-cubes", split=None, device="cpu", n_bootstrap=20, dataset_options={"x": 1}
    )
    assert len(everything.cases) == 9
    # on the run's own dataset the run's dataset options are the defaults, the user's win
    assert everything.info["dataset"]["options"] == {**record.dataset["options"], "x": 1}
    back = load_results(save_results(report, tmp_path / "r.json"))
    assert _counts(back.cases) == _counts(report.cases)


@pytest.mark.slow
def test_evaluate_cli_scores_a_detector_run_and_compares(plugin, tmp_path):
    # the same through the CLI for a classical_log run, then `cmbbench compare` on the result
    from cmbbench.engine.run import run

    out = tmp_path / "clog"
    record = run("classical_log", "engine-cubes", preset="tiny", device="cpu", out=out,
                 n_bootstrap=20)  # fmt: skip
    runner = CliRunner()
    res_json = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        ["evaluate", "--model-dir", str(out), "--dataset", "engine-cubes", "--plugin", PLUGIN,
         "--out", str(res_json), "--bootstrap", "20", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "TP / FP / FN" in result.output
    from cmbbench.scoring.records import load_results

    assert _counts(load_results(res_json).cases) == _counts(record.cases)
    result = runner.invoke(app, ["compare", str(out / "record.json"), str(res_json)])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(
        app, ["evaluate", "--model-dir", str(out), "--dataset", "no-such-set", "--no-progress"]
    )
    assert bad.exit_code == 1 and "no-such-set" in bad.output
    bad = runner.invoke(app, ["evaluate", "--model-dir", str(out), "--split", "tst"])
    assert bad.exit_code == 1 and "train, val, test or all" in bad.output


@pytest.mark.slow
def test_resume_refuses_corrupted_checkpoint(tiny_run, tmp_path):
    import shutil

    from cmbbench.engine.checkpoint import CheckpointError
    from cmbbench.engine.run import run

    out, _, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    last = copy / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"checkpoints/last\.pt is truncated or corrupted"):
        run(
            "engine_tiny",
            "engine-cubes",
            preset="tiny",
            device="cpu",
            out=copy,
            overrides=TINY,
            resume=True,
        )
    # without --resume an existing run is not overwritten
    from cmbbench.engine.run import RunDirError

    with pytest.raises(RunDirError, match="already holds a run"):
        run("engine_tiny", "engine-cubes", preset="tiny", device="cpu", out=copy, overrides=TINY)


def test_bad_inputs(plugin, tmp_path, monkeypatch):
    import errno
    import os

    from cmbbench.engine.run import RunDirError, resolve_device, run
    from cmbbench.errors import UnknownNameError
    from cmbbench.models.detector import ModelShapeError

    with pytest.raises(UnknownNameError, match="engine_tiny"):
        run("no_such_model", "engine-cubes", preset="tiny", device="cpu", out=tmp_path / "x")
    with pytest.raises(UnknownNameError, match="engine-cubes"):
        run("engine_tiny", "no_such_dataset", preset="tiny", device="cpu", out=tmp_path / "y")
    with pytest.raises(ModelShapeError, match="engine_badshape"):
        run("engine_badshape", "engine-cubes", preset="tiny", device="cpu", out=tmp_path / "z")
    if not torch.cuda.is_available():
        with pytest.raises(CmbbenchError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"

    real_open = open

    def full_disk(path, *args, **kwargs):
        if str(path).endswith(".write-test"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(RunDirError, match="disk is full"):
        run("engine_tiny", "engine-cubes", preset="tiny", device="cpu", out=tmp_path / "full")


@pytest.mark.slow
def test_cli_run_with_plugin(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        app,
        ["run", "--model", "engine_tiny", "--dataset", "engine-cubes", "--preset", "tiny",
         "--device", "cpu", "--out", str(out), "--plugin", PLUGIN, "--steps", "12",
         "--set", "val_every=6", "--set", "checkpoint_every=6", "--batch-size", "2",
         "--bootstrap", "20", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "run record written to" in result.output and "F1" in result.output
    data = json.loads((out / "record.json").read_text())
    assert data["recipe_sources"]["steps"] == "user" and data["recipe"]["batch_size"] == 2
    # predict through the CLI
    from cmbbench.io import save_nifti

    img = np.full((16, 16, 8), 100, np.float32)
    save_nifti(tmp_path / "in" / "x.nii.gz", img, np.diag([1.0, 1.0, 2.0, 1.0]))
    result = runner.invoke(
        app,
        ["predict", "--model-dir", str(out), "--data-dir", str(tmp_path / "in"),
         "--out", str(tmp_path / "pred"), "--plugin", PLUGIN, "--device", "cpu", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "x.nii.gz").is_file()


def test_cli_errors(tmp_path):
    runner = CliRunner()
    if not torch.cuda.is_available():
        r = runner.invoke(app, ["run", "--model", "engine_tiny", "--dataset", "engine-cubes",
                                "--device", "cuda", "--plugin", PLUGIN, "--out", str(tmp_path / "c")])  # fmt: skip
        assert r.exit_code == 1 and "no CUDA GPU" in r.output
    r = runner.invoke(
        app, ["run", "--model", "engine_tiny", "--plugin", str(tmp_path / "missing.py")]
    )
    assert r.exit_code == 1 and "missing.py" in r.output
    bad = tmp_path / "broken_plugin.py"
    bad.write_text("import numpy\nraise RuntimeError('boom in plugin')\n")
    r = runner.invoke(app, ["run", "--model", "x", "--plugin", str(bad)])
    assert r.exit_code == 1 and "boom in plugin" in r.output and "broken_plugin.py" in r.output
    r = runner.invoke(app, ["run", "--model", "engine_tiny", "--dataset", "engine-cubes", "--plugin", PLUGIN,
                            "--set", "nonsense=1", "--out", str(tmp_path / "d")])  # fmt: skip
    assert r.exit_code == 1 and "unknown recipe key 'nonsense'" in r.output


@pytest.mark.slow
def test_cli_end_to_end_unet3d_on_synthetic_tiny(tmp_path):
    """`cmbbench run --model unet3d --preset tiny`: the default dataset is generated into an
    empty cache, the reference network trains a few steps, the test split is scored."""
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["run", "--model", "unet3d", "--preset", "tiny", "--device", "cpu", "--root",
         str(tmp_path / "cache"), "--out", str(out), "--steps", "4", "--bootstrap", "20"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "F1 (micro, pooled)" in result.output and "run record written to" in result.output
    record = load_run_record(out)
    assert record.dataset["name"] == "synthetic" and record.dataset["options"]["preset"] == "tiny"
    assert record.model["name"] == "unet3d" and record.model["n_parameters"] > 5_000_000
    assert record.recipe_overridden == {"steps": "user"}  # unet3d's seed recipe is the reference
    assert len(record.cases) == record.dataset["n_test"] > 0


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_record(tiny_run, tmp_path):
    """A run killed mid-training (after step 17; last checkpoint at step 10) and resumed ends
    with exactly the metrics, per-case records and loss curve of the uninterrupted run."""
    from cmbbench.engine.run import run

    _, full, _ = tiny_run

    def kill_at_17(event):
        if event.phase == "train" and event.completed == 17:
            raise _Killed

    out = tmp_path / "killed"
    with pytest.raises(_Killed):
        run("engine_tiny", "engine-cubes", preset="tiny", device="cpu", out=out,
            overrides=TINY, n_bootstrap=50, progress=kill_at_17)  # fmt: skip
    assert not (out / "record.json").exists()
    resumed = run("engine_tiny", "engine-cubes", preset="tiny", device="cpu", out=out,
                  overrides=TINY, n_bootstrap=50, resume=True)  # fmt: skip
    assert resumed.training["resumed_from_step"] == 10
    assert resumed.training["loss_every_step"] == full.training["loss_every_step"]
    assert resumed.training["validations"][-1]["f1"] == full.training["validations"][-1]["f1"]
    assert [c.to_dict() for c in resumed.cases] == [c.to_dict() for c in full.cases]
    assert resumed.metrics == full.metrics
    assert resumed.postprocess == full.postprocess
