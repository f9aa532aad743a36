"""A save killed between its payload and its checksum sidecar still leaves a loadable pair.

In-process: the save is stopped (an exception from the test seam) at each point between its
atomic writes. End to end: a training process is SIGKILLed right after ``last.pt`` was
replaced and before its sidecar was finalised, and resuming continues to exactly the
weights, losses and validations of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _engine_helpers import TinyNet, cube_case, standardize

from cmbbench.engine import checkpoint
from cmbbench.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
)

TESTS = Path(__file__).parent


class _Killed(Exception):
    pass


def _stop_at(monkeypatch, stage: str) -> None:
    def hook(at: str, path: Path) -> None:
        if at == stage:
            raise _Killed

    monkeypatch.setattr(checkpoint, "_save_hook", hook)


def _state(step: int) -> dict:
    return {"step": step, "w": torch.full((64,), float(step)), "losses": [0.5] * step}


@pytest.mark.parametrize(("stage", "expect"), [("intent", 1), ("payload", 2)])
def test_interrupted_save_leaves_a_loadable_checkpoint(
    tmp_path, monkeypatch, caplog, stage, expect
):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1))
    _stop_at(monkeypatch, stage)
    with pytest.raises(_Killed):
        save_checkpoint(path, _state(2))
    assert "previous" in json.loads(sidecar_path(path).read_text())
    monkeypatch.setattr(checkpoint, "_save_hook", None)
    with caplog.at_level(logging.WARNING, logger="cmbbench.engine.checkpoint"):
        assert load_checkpoint(path)["step"] == expect
    # killed before the payload was replaced: the previous checkpoint, with a warning naming it
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (str(path) in " ".join(warned)) == (stage == "intent")
    # the next save completes the pair again
    save_checkpoint(path, _state(3))
    assert load_checkpoint(path)["step"] == 3
    assert "previous" not in json.loads(sidecar_path(path).read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]


@pytest.mark.parametrize("first", ["intent", "payload"])
def test_saves_interrupted_twice_in_a_row(tmp_path, monkeypatch, first):
    # the second interrupted save must keep the checkpoint really on disk as its fallback
    path = tmp_path / "best.pt"
    save_checkpoint(path, _state(1))
    _stop_at(monkeypatch, first)
    with pytest.raises(_Killed):
        save_checkpoint(path, _state(2))
    _stop_at(monkeypatch, "intent")
    with pytest.raises(_Killed):
        save_checkpoint(path, _state(3))
    monkeypatch.setattr(checkpoint, "_save_hook", None)
    assert load_checkpoint(path)["step"] == (1 if first == "intent" else 2)


def test_interrupted_first_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    _stop_at(monkeypatch, "intent")
    with pytest.raises(_Killed):
        save_checkpoint(path, _state(1))
    assert not path.exists()  # resume starts from step 0
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(path)
    monkeypatch.setattr(checkpoint, "_save_hook", None)
    save_checkpoint(path, _state(1))
    assert load_checkpoint(path)["step"] == 1


def test_a_damaged_payload_is_still_refused_during_an_interrupted_save(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1))
    _stop_at(monkeypatch, "payload")
    with pytest.raises(_Killed):
        save_checkpoint(path, _state(2))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"last\.pt is truncated or corrupted: expected"):
        load_checkpoint(path)
    raw = bytearray(path.read_bytes() + b"0" * 10)
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupted: sha256"):
        load_checkpoint(path)


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path):
    path = tmp_path / "last.pt"
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".other.pt.abc123.tmp").write_bytes(b"not ours")
    save_checkpoint(path, _state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.pt.abc123.tmp",
        "last.pt",
        "last.pt.sha256",
    ]


# ----------------------------------------------------------------------------- SIGKILL
STEPS, EVERY, KILL_AT = 8, 2, 4  # last.pt at steps 2, 4, ...: killed inside the save of 4


def _train(out: Path, *, resume: bool = False):
    from cmbbench.engine.patches import PatchSampler, prepare_volumes
    from cmbbench.engine.recipe import resolve_recipe
    from cmbbench.engine.trainer import train

    vols = prepare_volumes([cube_case(f"c{i}", i, n_cmb=2) for i in range(3)], standardize)
    recipe = resolve_recipe(
        "tiny", None, {"steps": STEPS, "checkpoint_every": EVERY, "val_every": EVERY,
                       "patch_size": 16}
    ).recipe  # fmt: skip
    sampler = PatchSampler.from_recipe(vols, recipe, seed=0)

    def validate(model):  # deterministic stand-in for lesion F1: a function of the weights
        return {"f1": float(next(model.parameters()).abs().sum()) % 1.0}

    torch.manual_seed(123 if resume else 0)  # resumed: everything must come from last.pt
    model = TinyNet()
    result = train(model, sampler, recipe, out_dir=out, device=torch.device("cpu"),
                   validate=validate, resume=resume)  # fmt: skip
    return model, result


def _train_and_die_in_a_checkpoint_save(out: Path) -> None:
    """Run in a child process: SIGKILL right after last.pt of step KILL_AT is renamed."""

    saves = []

    def hook(stage: str, path: Path) -> None:
        if stage == "payload" and path.name == "last.pt":
            saves.append(path)
            if len(saves) * EVERY == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    checkpoint._save_hook = hook
    _train(out)
    raise SystemExit("not killed")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_between_payload_and_sidecar_resumes_like_uninterrupted(tmp_path):
    out = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import test_checkpoint_kill as t
        t._train_and_die_in_a_checkpoint_save(t.Path({str(out)!r}))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    # killed in the window: the new payload is in place, its sidecar not yet finalised
    last = out / "checkpoints" / "last.pt"
    assert "previous" in json.loads(sidecar_path(last).read_text())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the child: bitwise the same float sums
    try:
        resumed, res = _train(out, resume=True)
        full, res_full = _train(tmp_path / "full")
    finally:
        torch.set_num_threads(threads)
    assert res.start_step == KILL_AT and res.steps == STEPS
    assert res.losses == res_full.losses
    assert [v["f1"] for v in res.validations] == [v["f1"] for v in res_full.validations]
    assert (res.best_step, res.best_metric) == (res_full.best_step, res_full.best_metric)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert "previous" not in json.loads(sidecar_path(last).read_text())
