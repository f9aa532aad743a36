"""Submissions: a folder of predictions made outside cmbbench becomes a record of the board."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cmbbench
from cmbbench.cli import app
from cmbbench.errors import InputError
from cmbbench.io import save_nifti
from cmbbench.models.registry import load_plugin
from cmbbench.submission import submit_folder

PLUGIN = str(Path(__file__).with_name("engine_plugin_example.py"))


@pytest.fixture(scope="module")
def cubes():
    load_plugin(PLUGIN)
    return list(cmbbench.load_dataset("engine-cubes", split="test"))


def _write_truth(cases, folder: Path, *, scale: float = 1.0) -> Path:
    """Each test case's CMBs as its prediction (a perfect submission; ``scale`` < 1 makes it
    a probability map)."""
    folder.mkdir(parents=True, exist_ok=True)
    for c in cases:
        pred = (np.asarray(c.label) > 0).astype(np.float32) * np.float32(scale)
        save_nifti(folder / f"{c.case_id}.nii.gz", pred, c.affine)
    return folder


def test_perfect_predictions_score_one_and_make_a_submission_record(cubes, tmp_path):
    pred = _write_truth(cubes, tmp_path / "pred")
    rec = submit_folder(
        pred, "engine-cubes", name="oracle", url="https://example.org", n_bootstrap=20
    )
    assert rec.model["kind"] == "submission" and rec.model["name"] == "oracle"
    assert rec.metrics["headline"]["f1_micro"]["value"] == 1.0
    assert rec.dataset["split"] == "test" and rec.dataset["version"] == "test-1"
    assert sum(c.n_gt for c in rec.cases) == rec.metrics["n_gt"] > 0
    path = rec.save(tmp_path / "oracle.json")
    from cmbbench.leaderboard.store import load_record

    back = load_record(path)  # the board reads it like a run
    assert back.model == "oracle" and back.preset == "submission"


def test_probability_maps_keep_their_candidates(cubes, tmp_path):
    # every CMB predicted at 0.75: found at the default threshold 0.5, missed at 0.9
    pred = _write_truth(cubes, tmp_path / "pred", scale=0.75)
    rec = submit_folder(pred, "engine-cubes", name="maps", n_bootstrap=0)
    assert all(c.candidates is not None for c in rec.cases)
    assert rec.metrics["sweep"]["source"] == "candidates"
    high = submit_folder(pred, "engine-cubes", name="maps", threshold=0.9, n_bootstrap=0)
    assert high.metrics["detection"]["totals"]["tp"] == 0
    assert high.postprocess["threshold"] == 0.9
    # the sweep still sees every candidate: sensitivity 1 at 1/8 FP per scan
    assert high.metrics["sweep"]["sensitivity_at"]["0.125"] == 1.0


def test_bad_submissions_name_the_case_and_write_nothing(cubes, tmp_path):
    runner = CliRunner()
    pred = _write_truth(cubes[1:], tmp_path / "pred")  # the first test case has no prediction
    out = tmp_path / "sub.json"
    args = ["submit", "--pred", str(pred), "--dataset", "engine-cubes", "--name", "x", "--out"]
    r = runner.invoke(app, [*args, str(out)])
    assert r.exit_code == 1 and cubes[0].case_id in r.output and "--missing empty" in r.output
    assert not out.exists()
    r = runner.invoke(app, [*args, str(out), "--missing", "empty", "--bootstrap", "10"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["artifacts"]["missing_predictions_scored_empty"] == [
        cubes[0].case_id
    ]
    # an extra prediction is listed, not scored
    _write_truth(cubes[:1], pred)
    save_nifti(pred / "stranger.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))
    r = runner.invoke(app, [*args, str(out), "--bootstrap", "10"])
    assert r.exit_code == 0 and "'stranger' is not a test case" in r.output
    # wrong shape, NaN, values above 1: one line naming the case, nothing written
    out.unlink()
    c0 = cubes[0]
    bad = {
        "shape": np.zeros((3, 3, 3), np.float32),
        "NaN": np.full(c0.shape, np.nan, np.float32),
        "[0, 1]": np.full(c0.shape, 2.0, np.float32),
    }
    for what, arr in bad.items():
        save_nifti(pred / f"{c0.case_id}.nii.gz", arr, c0.affine)
        r = runner.invoke(app, [*args, str(out), "--bootstrap", "10"])
        assert r.exit_code == 1 and c0.case_id in r.output and what in r.output, r.output
        assert not out.exists()
    with pytest.raises(InputError, match="--name"):
        submit_folder(pred, "engine-cubes", name=" ")


@pytest.mark.slow
def test_a_run_submitted_from_its_own_predictions_gives_the_runs_counts(cubes, tmp_path):
    from cmbbench.engine.predict import predict_folder
    from cmbbench.engine.run import run

    torch.set_num_threads(1)
    out = tmp_path / "run"
    record = run(
        "engine_tiny",
        "engine-cubes",
        preset="tiny",
        device="cpu",
        out=out,
        overrides={"steps": 20, "val_every": 10, "checkpoint_every": 10, "batch_size": 4},
        n_bootstrap=20,
    )
    images = tmp_path / "images"
    images.mkdir()
    for c in cubes:
        save_nifti(images / f"{c.case_id}.nii.gz", np.asarray(c.image, np.float32), c.affine)
    maps = tmp_path / "maps"
    predict_folder(out, images, maps, device="cpu", output="postprocessed")
    sub = submit_folder(
        maps,
        "engine-cubes",
        name="the run, resubmitted",
        threshold=float(record.postprocess["threshold"]),
        n_bootstrap=20,
    )
    counts = lambda rec: [(c.case_id, c.tp, c.fp, c.fn) for c in rec.cases]  # noqa: E731
    assert counts(sub) == counts(record)


def test_generate_writes_just_the_split_to_submit_for(tmp_path):
    from cmbbench.datasets.synthetic import export_tree

    out = export_tree(tmp_path / "TEST", preset="tiny", split="test", workers=1)
    written = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("sub-"))
    expected = [
        c.case_id
        for c in cmbbench.load_dataset(
            "synthetic", preset="tiny", split="test", cache_dir=tmp_path / "cache", workers=1
        )
    ]
    assert written == sorted(expected) and written
    meta = json.loads((out / "dataset_description.json").read_text())
    assert meta["split"] == "test" and meta["n_subjects"] == len(written)
    # the tree's splits.json is the split the dataset uses
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["test"]) == sorted(expected)


def test_the_board_says_what_its_froc_is_computed_from(cubes, tmp_path):
    from cmbbench.leaderboard.store import group_runs, load_records
    from cmbbench.leaderboard.table import build_table

    pred = _write_truth(cubes, tmp_path / "pred", scale=0.75)
    submit_folder(pred, "engine-cubes", name="maps", n_bootstrap=0).save(tmp_path / "a.json")
    ((key, runs),) = group_runs(load_records([tmp_path / "a.json"])).items()
    assert build_table(key, runs, n_bootstrap=0, seed=0).froc_source == "candidates"
    # the committed v1.1 board predates candidate lists: it says so
    board = (Path(__file__).parents[1] / "leaderboards" / "leaderboard.md").read_text()
    assert "FROC at the operating point only" in board


def test_a_submission_joins_the_runs_table(cubes, tmp_path):
    from cmbbench.engine.run import run
    from cmbbench.leaderboard.build import build_leaderboard

    torch.set_num_threads(1)
    run(
        "engine_tiny",
        "engine-cubes",
        preset="tiny",
        device="cpu",
        out=tmp_path / "runs" / "tiny",
        overrides={"steps": 10, "val_every": 10, "checkpoint_every": 10, "batch_size": 4},
        n_bootstrap=10,
    )
    pred = _write_truth(cubes, tmp_path / "pred")
    sub = submit_folder(pred, "engine-cubes", name="oracle", n_bootstrap=10)
    sub.save(tmp_path / "runs" / "oracle.json")
    build_leaderboard([tmp_path / "runs"], tmp_path / "board", n_bootstrap=20)
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    # one table (the run's track), the submission ranked first in it, marked as external
    assert md.count("## engine-cubes") == 1 and "track tiny / cpu" in md
    first_row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert "oracle" in first_row and "external submission" in first_row
