"""Training logs: per-step and per-validation CSV files, TensorBoard events, the curves' PNG.

They hold exactly the loop's values (one row per step, also across a kill and a resume), they
change no number of the training, and a run's record and CLI point at them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from _engine_helpers import TinyNet, cube_case, standardize

from cmbbench.engine import training_log
from cmbbench.engine.patches import PatchSampler, prepare_volumes
from cmbbench.engine.recipe import resolve_recipe
from cmbbench.engine.trainer import lr_at, train
from cmbbench.engine.training_log import STEP_COLUMNS, VALIDATION_COLUMNS, TrainingLog

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# warm-up and cosine: the learning rate differs from step to step, so the lr column is checked
SETTINGS = {"steps": 10, "checkpoint_every": 4, "val_every": 2, "patch_size": 16,
            "warmup_steps": 3, "lr_schedule": "cosine"}  # fmt: skip


def _setup():
    vols = prepare_volumes([cube_case(f"c{i}", i, n_cmb=2) for i in range(2)], standardize)
    recipe = resolve_recipe("tiny", None, SETTINGS).recipe
    return PatchSampler.from_recipe(vols, recipe, seed=0), recipe


def _validate(model):
    """A deterministic stand-in for the engine's Validator: the same keys, from the weights."""
    w = float(next(model.parameters()).abs().sum())
    tp, fp, fn = float(int(w) % 5), 2.0, 1.0
    return {"f1": w % 1.0, "recall": tp / (tp + fn), "precision": tp / (tp + fp),
            "tp": tp, "fp": fp, "fn": fn, "seconds": 0.001}  # fmt: skip


def _train(out: Path, **kwargs):
    sampler, recipe = _setup()
    torch.manual_seed(123 if kwargs.get("resume") else 0)
    net = TinyNet()
    result = train(
        net, sampler, recipe, out_dir=out, device=torch.device("cpu"), validate=_validate,
        **kwargs,
    )  # fmt: skip
    return net, result, recipe


def _rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == columns
        return list(reader)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One uninterrupted tiny training with the logs (threads pinned: bitwise-stable sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("logs") / "full"
        net, result, recipe = _train(out)
    finally:
        torch.set_num_threads(threads)
    return out, net, result, recipe


def test_csv_rows_are_the_loops_values(full):
    out, _, result, recipe = full
    steps = _rows(out / "logs" / "steps.csv", STEP_COLUMNS)
    assert [int(r["step"]) for r in steps] == list(range(recipe.steps))
    assert [float(r["loss"]) for r in steps] == result.losses  # repr: bit for bit
    assert [float(r["lr"]) for r in steps] == [lr_at(recipe, s) for s in range(recipe.steps)]
    assert len({r["lr"] for r in steps}) > 3
    assert all(float(r["step_seconds"]) > 0 for r in steps)
    assert [r["skipped"] for r in steps] == ["0"] * recipe.steps
    vals = _rows(out / "logs" / "validations.csv", VALIDATION_COLUMNS)
    assert len(vals) == len(result.validations) == 5
    for row, v in zip(vals, result.validations, strict=True):
        assert {c: float(row[c]) for c in VALIDATION_COLUMNS} == {
            c: float(v[c]) for c in VALIDATION_COLUMNS
        }
    assert result.log_files == {
        "train_log": out / "logs" / "steps.csv",
        "validation_log": out / "logs" / "validations.csv",
        "tensorboard_dir": result.log_files["tensorboard_dir"],
        "training_plot": out / "training.png",
    }


def test_plot_is_a_png(full):
    from PIL import Image

    out, *_ = full
    png = out / "training.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (700, 750)


def test_logs_change_no_number(full, tmp_path):
    _, net, result, _ = full
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bare, plain, _ = _train(tmp_path / "bare", write_logs=False)
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "bare" / "logs").exists() and plain.log_files == {}
    assert plain.losses == result.losses
    assert plain.validations == result.validations
    for k, v in net.state_dict().items():
        assert torch.equal(v, bare.state_dict()[k]), k


class _Killed(Exception):
    pass


def test_a_killed_and_resumed_run_has_one_row_per_step(full, tmp_path):
    # killed after step 7 (index 6): rows 0-6 and validations at 2, 4, 6 were written, the last
    # checkpoint is at 4; the resume drops rows 4-6 and the validation at 6, then trains on
    out_full, _, result, recipe = full

    def kill_after_7(event):
        if event.phase == "train" and event.completed == 7:
            raise _Killed

    out = tmp_path / "killed"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(_Killed):
            _train(out, progress=kill_after_7)
        before = _rows(out / "logs" / "steps.csv", STEP_COLUMNS)
        assert [int(r["step"]) for r in before] == list(range(7))
        assert [r["step"] for r in _rows(out / "logs" / "validations.csv", VALIDATION_COLUMNS)] == [
            "2",
            "4",
            "6",
        ]
        _, resumed, _ = _train(out, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert resumed.start_step == 4 and resumed.losses == result.losses
    steps = _rows(out / "logs" / "steps.csv", STEP_COLUMNS)
    assert [int(r["step"]) for r in steps] == list(range(recipe.steps))
    assert [float(r["loss"]) for r in steps] == result.losses
    # the step times of the steps before the checkpoint are those the first process measured
    assert [r["step_seconds"] for r in steps[:4]] == [r["step_seconds"] for r in before[:4]]
    vals = _rows(out / "logs" / "validations.csv", VALIDATION_COLUMNS)
    want = _rows(out_full / "logs" / "validations.csv", VALIDATION_COLUMNS)
    key = [c for c in VALIDATION_COLUMNS if c != "seconds"]
    assert [[r[c] for c in key] for r in vals] == [[r[c] for c in key] for r in want]
    assert (out / "training.png").read_bytes()[:8] == PNG_MAGIC


class _NanAt(torch.nn.Module):
    """TinyNet whose training forward returns NaN logits at step ``bad``."""

    def __init__(self, bad: int):
        super().__init__()
        self.net, self.bad, self.calls = TinyNet(), bad, 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls - 1 == self.bad:
                return out * float("nan")
        return out


def test_skipped_steps_are_flagged(tmp_path):
    sampler, recipe = _setup()
    torch.manual_seed(0)
    result = train(_NanAt(2), sampler, recipe, out_dir=tmp_path, device=torch.device("cpu"))
    assert result.skipped_steps == [2]
    steps = _rows(tmp_path / "logs" / "steps.csv", STEP_COLUMNS)
    assert [int(r["skipped"]) for r in steps] == [int(s == 2) for s in range(recipe.steps)]
    assert math.isnan(float(steps[2]["loss"])) and steps[2]["loss"] == "nan"
    # no validation callback: the file holds its header only
    assert _rows(tmp_path / "logs" / "validations.csv", VALIDATION_COLUMNS) == []


def test_without_tensorboard_no_events_and_a_debug_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    with caplog.at_level(logging.DEBUG, logger="cmbbench.engine.training_log"):
        log = TrainingLog.open(tmp_path)
        log.close()
    assert log.files()["tensorboard_dir"] is None
    assert not (tmp_path / "logs" / "tensorboard").exists()
    debug = [r for r in caplog.records if r.name == "cmbbench.engine.training_log"]
    assert [r.levelno for r in debug] == [logging.DEBUG]
    assert "cmbbench[tensorboard]" in debug[0].getMessage()


class _FakeWriter:
    made: ClassVar[list[_FakeWriter]] = []

    def __init__(self, log_dir: str, purge_step: int | None = None, flush_secs: int = 120):
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
        _FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


def test_tensorboard_writer_gets_every_scalar(full, tmp_path, monkeypatch):
    # the SummaryWriter calls, through a stand-in module (works without tensorboard installed)
    *_, recipe = full
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _FakeWriter.made.clear()
    _, res, _ = _train(tmp_path / "a", stop_after=4)
    _, res, _ = _train(tmp_path / "a", resume=True)
    first, second = _FakeWriter.made
    assert (first.purge_step, second.purge_step) == (None, 4)  # resumed events replace old ones
    assert first.closed and second.closed
    assert res.log_files["tensorboard_dir"] == tmp_path / "a" / "logs" / "tensorboard"
    losses = [(v, s) for t, v, s in first.scalars + second.scalars if t == "train/loss"]
    assert losses == [(v, s) for s, v in enumerate(res.losses)]
    lrs = [(v, s) for t, v, s in second.scalars if t == "train/lr"]
    assert lrs == [(lr_at(recipe, s), s) for s in range(4, recipe.steps)]
    f1 = [(v, s) for t, v, s in first.scalars + second.scalars if t == "val/f1"]
    assert f1 == [(v["f1"], v["step"]) for v in res.validations]


def test_real_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result, _ = _train(tmp_path / "tb")
    tb = result.log_files["tensorboard_dir"]
    assert tb == tmp_path / "tb" / "logs" / "tensorboard" and list(tb.glob("events.out.*"))
    acc = EventAccumulator(str(tb))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(len(result.losses)))
    assert [e.value for e in loss] == pytest.approx(result.losses, rel=1e-6)  # float32
    assert [e.step for e in acc.Scalars("val/f1")] == [v["step"] for v in result.validations]


@pytest.mark.slow
def test_run_records_and_prints_the_logs(tmp_path):
    from typer.testing import CliRunner

    from cmbbench.cli import app

    plugin = str(Path(__file__).with_name("engine_plugin_example.py"))
    out = tmp_path / "cli"
    r = CliRunner().invoke(
        app,
        ["run", "--model", "engine_tiny", "--dataset", "engine-cubes", "--preset", "tiny",
         "--device", "cpu", "--out", str(out), "--plugin", plugin, "--steps", "6",
         "--set", "val_every=3", "--set", "checkpoint_every=3", "--batch-size", "2",
         "--bootstrap", "10", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    artifacts = json.loads((out / "record.json").read_text())["artifacts"]
    assert artifacts["train_log"] == "logs/steps.csv"
    assert artifacts["validation_log"] == "logs/validations.csv"
    assert artifacts["training_plot"] == "training.png"
    for key in ("best_checkpoint", "last_checkpoint", "train_log", "validation_log"):
        assert (out / artifacts[key]).is_file(), key
    assert (out / "training.png").read_bytes()[:8] == PNG_MAGIC
    tb = artifacts["tensorboard_dir"]
    assert tb is None or (out / tb).is_dir()
    assert len(_rows(out / "logs" / "steps.csv", STEP_COLUMNS)) == 6
    assert len(_rows(out / "logs" / "validations.csv", VALIDATION_COLUMNS)) == 2
    assert f"training logs (CSV): {out / 'logs' / 'steps.csv'}, " in r.output
    assert f"training curves: {out / 'training.png'}" in r.output


def test_smoothed_ignores_non_finite_values():
    assert training_log.smoothed([1.0, float("nan"), 3.0, 5.0], window=2) == [1.0, 1.0, 2.0, 4.0]
    assert math.isnan(training_log.smoothed([float("inf")])[0])
