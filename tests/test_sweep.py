"""`cmbbench sweep`: a grid of tiny runs, each a `cmbbench run` subprocess; resume, failures,
bad input, and the Slurm path (submitit's local executor: no Slurm cluster is available here)."""

from __future__ import annotations

import csv
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cmbbench.sweep as sweep_mod
from cmbbench.cli import app
from cmbbench.engine.record import load_run_record
from cmbbench.sweep import SweepConfig, SweepError, job_command, plan_sweep

PLUGIN = str(Path(__file__).with_name("engine_plugin_example.py"))
TINY_SET = ["steps=10", "val_every=10", "checkpoint_every=10", "batch_size=4"]


def tiny_args(sets=TINY_SET, preset: str = "tiny") -> list[str]:
    """The options of a tiny run on the test plug-in's dataset, as `sweep` passes them on."""
    args = ["--plugin", PLUGIN, "--dataset", "engine-cubes", "--preset", preset]
    for item in sets:
        args += ["--set", item]
    return [*args, "--bootstrap", "10", "--device", "cpu", "--no-progress"]


def sweep(*args: str):
    """`cmbbench sweep ARGS` in this process; ``.text`` is its output with the line wrapping
    of rich undone (whitespace runs made single spaces)."""
    result = CliRunner().invoke(app, ["sweep", *args])
    result.text = " ".join(result.output.split())
    return result


def snapshot(out: Path) -> dict[str, tuple[float, str]]:
    """(mtime, contents) of every record and log under ``out``."""
    files = [*out.glob("*/record.json"), *out.glob("*/run.log")]
    return {str(f.relative_to(out)): (f.stat().st_mtime, f.read_text()) for f in files}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished 2-model x 2-seed local sweep run with --jobs 2 (a network and a detector)."""
    out = tmp_path_factory.mktemp("sweep") / "grid"
    t0 = time.perf_counter()
    result = sweep(
        "--models", "engine_tiny,engine_dark", "--seeds", "0,1", "--jobs", "2",
        "--out", str(out), *tiny_args(),
    )  # fmt: skip
    return out, result, time.perf_counter() - t0


@pytest.mark.slow
def test_local_sweep_writes_every_record_and_a_rerun_keeps_them(swept, tmp_path):
    out, result, _ = swept
    assert result.exit_code == 0, result.output
    for model in ("engine_tiny", "engine_dark"):
        for seed in (0, 1):
            run_dir = out / f"{model}-s{seed}"
            record = load_run_record(run_dir)
            assert (record.model["name"], record.seed, record.recipe_preset) == (
                model,
                seed,
                "tiny",
            )
            assert record.recipe["steps"] == 10 or model == "engine_dark"
            log = (run_dir / "run.log").read_text()
            assert log.startswith("=== cmbbench sweep") and "--no-progress" in log
            assert "run record written to" in log  # the run's own output went to its log
            f1 = record.metrics["headline"]["f1_micro"]["value"]
            assert f"ran {model}-s{seed} in " in result.text and f"{f1:.3f}" in result.text
    assert result.text.count("ran engine_") == 4
    assert f"cmbbench leaderboard {out} --out" in result.text

    before = snapshot(out)
    again = sweep(
        "--models", "engine_tiny,engine_dark", "--seeds", "0,1", "--jobs", "2",
        "--out", str(out), *tiny_args(),
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "4 kept, 0 to run" in again.text
    assert again.text.count("is a finished run") == 4
    assert "ran engine_" not in again.text and again.text.count("kept") >= 8
    assert snapshot(out) == before  # nothing rerun, not even a log line

    # the printed leaderboard command builds one row per model, its two seeds joined
    board = CliRunner().invoke(
        app, ["leaderboard", str(out), "--out", str(tmp_path / "board"), "--n-bootstrap", "10"]
    )
    assert board.exit_code == 0, board.output
    with open(tmp_path / "board" / "leaderboard.csv", newline="") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"engine_tiny", "engine_dark"}
    assert all(r["n_seeds"] == "2" for r in rows.values())


@pytest.mark.slow
def test_failed_job_is_listed_with_its_log_and_only_it_is_retried(swept, tmp_path):
    src, result, _ = swept
    assert result.exit_code == 0, result.output
    out = tmp_path / "grid"
    shutil.copytree(src, out)
    broken = out / "engine_tiny-s1"
    (broken / "record.json").unlink()
    (broken / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    others = {k: v for k, v in snapshot(out).items() if not k.startswith("engine_tiny-s1")}

    failed = sweep(
        "--models", "engine_tiny,engine_dark", "--seeds", "0,1", "--out", str(out), *tiny_args()
    )  # fmt: skip
    assert failed.exit_code == 1, failed.output
    assert "3 kept, 1 to run" in failed.text
    assert "resuming engine_tiny-s1 from its last checkpoint" in failed.text
    assert f"failed engine_tiny-s1 (exit status 1): log {broken / 'run.log'}" in failed.text
    assert "1 of 4 runs failed" in failed.text
    log = (broken / "run.log").read_text()
    assert log.count("=== cmbbench sweep") == 2  # the first attempt's log is kept
    assert " ".join(log.splitlines()[-1].split()) in failed.text  # the error line is shown
    assert "--resume" in [ln for ln in log.splitlines() if ln.startswith("===")][-1]
    assert not (broken / "record.json").exists()
    assert {k: v for k, v in snapshot(out).items() if k in others} == others

    shutil.rmtree(broken / "checkpoints")  # the fault fixed: rerun retries only that job
    fixed = sweep(
        "--models", "engine_tiny,engine_dark", "--seeds", "0,1", "--out", str(out), *tiny_args()
    )  # fmt: skip
    assert fixed.exit_code == 0, fixed.output
    assert "3 kept, 1 to run" in fixed.text and "ran engine_tiny-s1" in fixed.text
    assert load_run_record(broken).seed == 1
    assert {k: v for k, v in snapshot(out).items() if k in others} == others


@pytest.mark.slow
def test_interrupted_sweep_keeps_finished_runs_and_resumes_the_interrupted_one(tmp_path):
    """Ctrl-C (SIGINT to the sweep's process group) while the second run trains: the sweep
    exits 130, the first run's record stays, and a rerun resumes the second from its
    checkpoint instead of starting it over."""
    out = tmp_path / "grid"
    # enough steps after the first checkpoint that the interrupt lands while it trains (with
    # 40 steps a fast machine finished the run before the signal arrived)
    sets = ["steps=400", "val_every=200", "checkpoint_every=10", "batch_size=4"]
    args = ["--models", "engine_tiny", "--seeds", "0,1", "--out", str(out), *tiny_args(sets)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmbbench.cli", "sweep", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # a child inherits an ignored SIGINT (and Python then never raises KeyboardInterrupt):
        # an earlier test in the same pytest process may have left it ignored, a user's
        # shell does not, so the child starts with the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    second = out / "engine_tiny-s1"
    deadline = time.monotonic() + 240
    while not (second / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the second run never checkpointed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert load_run_record(out / "engine_tiny-s0").seed == 0
    assert not (second / "record.json").exists()

    kept = snapshot(out)["engine_tiny-s0/record.json"]
    again = sweep(*args)
    assert again.exit_code == 0, again.output
    assert "1 kept, 1 to run" in again.text
    assert "resuming engine_tiny-s1" in again.text and "ran (resumed)" in again.text
    record = load_run_record(second)
    assert record.training["resumed_from_step"] >= 10 and record.training["steps"] == 400
    assert snapshot(out)["engine_tiny-s0/record.json"] == kept


def test_bad_input_fails_before_anything_runs(tmp_path):
    out = tmp_path / "grid"
    base = ["--out", str(out), "--plugin", PLUGIN]
    cases = [
        (["--models", "engine_tiny,nope", "--seeds", "0"], "unknown model 'nope'"),
        (["--models", "engine_tiny", "--seeds", "0", "--jobs", "0"], "--jobs must be at least 1"),
        (["--models", " , ", "--seeds", "0"], "--models: the list is empty"),
        (["--models", "engine_tiny", "--seeds", ""], "--seeds: the list is empty"),
        (["--models", "engine_tiny", "--seeds", "0,x"], "'x' is not an integer"),
        (["--models", "engine_tiny,engine_tiny", "--seeds", "0"], "given more than once"),
        (["--models", "engine_tiny", "--seeds", "0", "--jobs", "2", "--slurm", "gpu"],
         "--jobs and --slurm exclude each other"),
        (["--models", "engine_tiny", "--seeds", "0", "--slurm-gpus", "2"],
         "only apply with --slurm"),
        (["--models", "engine_tiny", "--seeds", "0", "--set", "seed=3"], "come from --seeds"),
        (["--models", "engine_tiny", "--seeds", "0", "--set", "steps"], "KEY=VALUE"),
        (["--models", "engine_tiny", "--seeds", "0", "--dataset", "nodata"],
         "unknown dataset 'nodata'"),
    ]  # fmt: skip
    for args, message in cases:
        result = sweep(*args, *base)
        assert result.exit_code == 1 and message in result.text, (args, result.output)
        assert not out.exists(), args  # nothing ran, nothing was written
    result = sweep("--models", "engine_tiny,nope", "--seeds", "0", *base)
    assert "known models:" in result.text
    assert "engine_tiny" in result.text and "unet3d" in result.text


@pytest.mark.slow
def test_a_run_directory_holding_another_run_is_refused(swept, tmp_path):
    src, result, _ = swept
    assert result.exit_code == 0, result.output
    out = tmp_path / "grid"
    (out / "engine_dark-s1").mkdir(parents=True)
    shutil.copy(src / "engine_dark-s0" / "record.json", out / "engine_dark-s1" / "record.json")
    r = sweep("--models", "engine_dark", "--seeds", "1", "--out", str(out), *tiny_args())
    assert r.exit_code == 1 and "is a run of another seed 0 (not 1)" in r.text, r.output
    r = sweep(
        "--models", "engine_dark", "--seeds", "0", "--out", str(src), *tiny_args(preset="quick")
    )
    assert r.exit_code == 1 and "preset 'tiny' (not 'quick')" in r.text, r.output


def test_job_command_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plugin = os.path.relpath(PLUGIN, tmp_path)  # relative here; absolute in the command lines
    config = SweepConfig(
        models=("engine_tiny",),
        seeds=(0, 3),
        out=Path("grid"),
        dataset="engine-cubes",
        root=Path("cache"),
        preset="tiny",
        device="cpu",
        dataset_options=("channels=T2S,T1",),
        overrides=("steps=10", "lr=0.01"),
        plugins=(plugin,),
        bootstrap=10,
    )
    (tmp_path / "grid" / "engine_tiny-s3" / "checkpoints").mkdir(parents=True)
    (tmp_path / "grid" / "engine_tiny-s3" / "checkpoints" / "last.pt").write_bytes(b"x")
    jobs = plan_sweep(config)
    assert [(j.name, j.resume, j.kept) for j in jobs] == [
        ("engine_tiny-s0", False, None),
        ("engine_tiny-s3", True, None),
    ]
    first, second = (job_command(config, j) for j in jobs)
    assert first == [
        sys.executable, "-m", "cmbbench.cli", "run", "--model", "engine_tiny", "--seed", "0",
        "--dataset", "engine-cubes", "--out", str(tmp_path / "grid" / "engine_tiny-s0"),
        "--device", "cpu", "--preset", "tiny", "--root", str(tmp_path / "cache"),
        "--plugin", PLUGIN, "--dataset-option", "channels=T2S,T1",
        "--set", "steps=10", "--set", "lr=0.01", "--bootstrap", "10", "--no-progress",
    ]  # fmt: skip
    assert second[second.index("--seed") + 1] == "3" and second[-2:] == [
        "--resume",
        "--no-progress",
    ]
    # the module that the command lines run exists and is the CLI
    help_ = subprocess.run([sys.executable, "-m", "cmbbench.cli", "run", "--help"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert "--no-progress" in help_.stdout and "--resume" in help_.stdout


def test_slurm_without_submitit_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now fails
    out = tmp_path / "grid"
    r = sweep("--models", "engine_tiny", "--seeds", "0", "--slurm", "gpu", "--out", str(out),
              "--plugin", PLUGIN, "--dataset", "engine-cubes")  # fmt: skip
    assert r.exit_code == 1
    assert 'pip install "cmbbench[slurm]"' in r.text, r.output
    assert not out.exists()
    config = SweepConfig(models=("engine_tiny",), seeds=(0,), out=out, plugins=(PLUGIN,))
    with pytest.raises(SweepError, match=r"cmbbench\[slurm\]"):
        sweep_mod.run_slurm(config, sweep_mod.SlurmOptions("gpu"))


def test_slurm_refuses_a_machine_without_sbatch(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    r = sweep("--models", "engine_dark", "--seeds", "0", "--slurm", "gpu", "--out",
              str(tmp_path / "grid"), *tiny_args())  # fmt: skip
    assert r.exit_code == 1 and "sbatch command is not found" in r.text, r.output
    assert not (tmp_path / "grid").exists()


@pytest.mark.slow
def test_slurm_path_through_submitit_local_executor(tmp_path, monkeypatch):
    """`--slurm` submits each run's command line as its own submitit job with the Slurm
    resources asked for. No Slurm cluster here: the executor is submitit's LocalExecutor
    (``cluster="local"``), which runs the same pickled CommandFunction in a subprocess."""
    submitit = pytest.importorskip("submitit")
    calls: list[dict] = []
    commands: list[list[str]] = []

    class Recording(submitit.AutoExecutor):
        def update_parameters(self, **kwargs):
            calls.append(kwargs)
            super().update_parameters(**kwargs)

        def submit(self, fn, *args, **kwargs):
            commands.append(list(fn.command))
            return super().submit(fn, *args, **kwargs)

    folders: list[Path] = []

    def local_executor(folder, cluster):
        assert cluster == "slurm"
        folders.append(Path(folder))
        return Recording(folder=folder, cluster="local")

    monkeypatch.setattr(sweep_mod, "_executor", local_executor)
    monkeypatch.setattr(sweep_mod, "SLURM_POLL_S", 0.2)
    out = tmp_path / "grid"
    args = ["--models", "engine_dark", "--seeds", "0,1", "--out", str(out), *tiny_args()]
    slurm = ["--slurm", "gpuq", "--slurm-time", "7", "--slurm-gpus", "1", "--slurm-cpus", "3"]
    r = sweep(*args, *slurm)
    assert r.exit_code == 0, r.output
    assert folders == [out / "slurm"] and (out / "slurm").is_dir()
    assert len(calls) == 2 and {c["name"] for c in calls} == {
        "cmbbench-engine_dark-s0",
        "cmbbench-engine_dark-s1",
    }
    for c in calls:
        assert (c["slurm_partition"], c["timeout_min"], c["gpus_per_node"], c["cpus_per_task"]) == (
            "gpuq", 7, 1, 3,
        )  # fmt: skip
    config = SweepConfig(models=("engine_dark",), seeds=(0, 1), out=out, dataset="engine-cubes",
                         preset="tiny", device="cpu", overrides=tuple(TINY_SET),
                         plugins=(PLUGIN,), bootstrap=10)  # fmt: skip
    for seed, cmd in zip((0, 1), commands, strict=True):
        job = sweep_mod.SweepJob("engine_dark", seed, out / f"engine_dark-s{seed}")
        assert cmd[:2] == ["/bin/sh", "-c"]
        line = shlex.join(job_command(config, job))
        assert cmd[2] == f"exec {line} >> {job.log_path} 2>&1"
        assert "run record written to" in job.log_path.read_text()
        assert load_run_record(job.run_dir).seed == seed
    assert r.text.count("as Slurm job") == 2
    again = sweep(*args, *slurm)
    assert again.exit_code == 0 and "2 kept, 0 to run" in again.text
    assert len(calls) == 2  # nothing submitted the second time


@pytest.mark.slow
def test_a_cross_validation_sweep_pools_each_job_and_keeps_it_on_rerun(tmp_path):
    out = tmp_path / "cv"
    args = ["--models", "engine_tiny", "--seeds", "0", "--folds", "2", "--out", str(out)]
    result = sweep(*args, *tiny_args())
    assert result.exit_code == 0, result.output
    record = load_run_record(out / "engine_tiny-s0")
    assert record.dataset["split"] == "cv2" and (out / "engine_tiny-s0" / "fold-1").is_dir()
    again = sweep(*args, *tiny_args())
    assert again.exit_code == 0 and "kept" in again.text
    # a plain sweep into the same folder finds a cross-validation there: refused, not mixed
    plain = sweep("--models", "engine_tiny", "--seeds", "0", "--out", str(out), *tiny_args())
    assert plain.exit_code != 0 and "split 'cv2' (not 'test')" in plain.text
