"""``cmbbench sweep``: the grid of models × seeds, each cell one ``cmbbench run`` subprocess.

A leaderboard is dozens of runs. :func:`plan_sweep` turns a :class:`SweepConfig` into one
:class:`SweepJob` per (model, seed), with run directory ``OUT/<model>-s<seed>/``, and checks
every input before anything runs (unknown models list the known ones). A job whose
``record.json`` already holds a valid record of that model and seed is *kept*, not rerun;
one with ``checkpoints/last.pt`` but no record continues with ``--resume``.

Jobs run as separate processes, never inside this one, so a crash, an out-of-memory kill or
a bad model affects only its own job:

* :func:`run_local`: a pool of ``jobs`` concurrent ``cmbbench run`` subprocesses
  (:class:`concurrent.futures.ThreadPoolExecutor` threads that each start one subprocess
  and wait on it; the work happens in the subprocesses);
* :func:`run_slurm`: the same command lines submitted to Slurm through ``submitit``
  (optional extra ``cmbbench[slurm]``), one Slurm job per run, then waited on.

Each job writes its stdout and stderr to ``OUT/<model>-s<seed>/run.log`` (appended: one
header line per attempt). Every job gets the same dataset, root and dataset options, so the
runs share one dataset cache (the synthetic cache is safe for concurrent processes).
``cmbbench leaderboard OUT`` builds the board from the records afterwards.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from cmbbench.datasets.registry import DEFAULT_DATASET
from cmbbench.engine.record import RECORD_NAME, RunRecord, load_run_record
from cmbbench.errors import CmbbenchError, InputError
from cmbbench.options import parse_key_values
from cmbbench.progress import PhaseTracker, ProgressFn

logger = logging.getLogger(__name__)

__all__ = [
    "LOG_NAME",
    "SLURM_EXTRA_HINT",
    "JobResult",
    "SlurmOptions",
    "SweepConfig",
    "SweepError",
    "SweepJob",
    "SweepResult",
    "job_command",
    "plan_sweep",
    "require_submitit",
    "run_local",
    "run_slurm",
]

LOG_NAME = "run.log"
SLURM_FOLDER = "slurm"
SLURM_EXTRA_HINT = 'pip install "cmbbench[slurm]"'
SLURM_POLL_S = 10.0  # how often run_slurm asks submitit whether jobs have ended
Status = Literal["kept", "ran", "failed"]


class SweepError(CmbbenchError):
    """A sweep that cannot start: bad grid, bad options, or run directories in the way."""


@dataclass(frozen=True)
class SweepConfig:
    """What every job of a sweep runs: the grid and the ``cmbbench run`` options they share.

    ``dataset_options`` and ``overrides`` are ``KEY=VALUE`` texts passed unchanged to each
    job's ``--dataset-option`` / ``--set`` (checked by :func:`plan_sweep`); ``plugins`` are
    modules or ``.py`` files (paths are made absolute); ``bootstrap`` ``None`` keeps the
    ``run`` default.
    """

    models: tuple[str, ...]
    seeds: tuple[int, ...]
    out: Path
    dataset: str = DEFAULT_DATASET
    root: Path | None = None
    preset: str | None = None
    device: str = "auto"
    dataset_options: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()
    bootstrap: int | None = None
    folds: int | None = None  # k-fold cross-validation runs (``run --folds K``)


@dataclass(frozen=True)
class SweepJob:
    """One cell of the grid: a model, a seed, its run directory and what it holds now."""

    model: str
    seed: int
    run_dir: Path
    kept: RunRecord | None = None  # a valid record already there: not rerun
    resume: bool = False  # checkpoints/last.pt without a record: continue it

    @property
    def name(self) -> str:
        """``<model>-s<seed>``, the run directory's name."""
        return f"{self.model}-s{self.seed}"

    @property
    def log_path(self) -> Path:
        """Where the job's stdout and stderr go."""
        return self.run_dir / LOG_NAME


@dataclass(frozen=True)
class JobResult:
    """How one job ended: ``kept`` (record already there), ``ran`` or ``failed``.

    ``seconds``: the run's wall time (local: the subprocess; Slurm and kept: the record's
    ``total_seconds``, queue time excluded). ``test_f1``: the record's pooled test F1.
    ``reason``: why it failed (exit status, missing record).
    """

    job: SweepJob
    status: Status
    seconds: float | None = None
    test_f1: float | None = None
    resumed: bool = False
    reason: str = ""


@dataclass
class SweepResult:
    """Every job's :class:`JobResult`, in grid order."""

    results: list[JobResult] = field(default_factory=list)

    @property
    def failed(self) -> list[JobResult]:
        """The jobs that failed (the sweep's exit status is non-zero when any did)."""
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when no job failed."""
        return not self.failed


@dataclass(frozen=True)
class SlurmOptions:
    """Slurm resources of each job: partition, time limit (minutes), GPUs and CPUs."""

    partition: str
    time_min: int = 120
    gpus: int = 1
    cpus: int = 6


OnResult = Callable[[JobResult], None]


def _f1(record: RunRecord) -> float | None:
    item = (record.metrics.get("headline") or {}).get("f1_micro") or {}
    value = item.get("value")
    return None if value is None else float(value)


def _absolute_plugin(plugin: str) -> str:
    """A plug-in given as a file path, made absolute (jobs may start elsewhere); a module
    name unchanged."""
    is_path = plugin.endswith(".py") or "/" in plugin or "\\" in plugin
    return str(Path(plugin).expanduser().resolve()) if is_path else plugin


def _check_names(config: SweepConfig) -> None:
    """Loads the plug-ins, then refuses unknown models or dataset (listing the known ones)."""
    from cmbbench.datasets.registry import list_datasets
    from cmbbench.errors import UnknownNameError
    from cmbbench.models.registry import list_models, load_plugin

    for plugin in config.plugins:
        load_plugin(plugin)
    known = list_models()
    unknown = [m for m in config.models if m not in known]
    if unknown:
        raise SweepError(
            f"unknown model{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"known models: {', '.join(known)}"
            + ("" if config.plugins else " (a plug-in's models need --plugin)")
        )
    if config.dataset not in list_datasets():
        raise SweepError(str(UnknownNameError("dataset", config.dataset, list_datasets())))


def _check_grid(config: SweepConfig) -> None:
    if not config.models:
        raise SweepError("--models: the list of models is empty")
    if not config.seeds:
        raise SweepError("--seeds: the list of seeds is empty")
    for what, values in (("--models", config.models), ("--seeds", config.seeds)):
        twice = sorted({str(v) for v in values if list(values).count(v) > 1})
        if twice:
            raise SweepError(f"{what}: {', '.join(twice)} given more than once")
    bad = [m for m in config.models if not m or "/" in m or m.strip() != m]
    if bad:
        raise SweepError(f"--models: not a model name: {', '.join(map(repr, bad))}")
    if config.bootstrap is not None and config.bootstrap < 0:
        raise SweepError(f"--bootstrap must be >= 0, got {config.bootstrap}")


def _existing(job: SweepJob, config: SweepConfig) -> tuple[RunRecord | None, str | None]:
    """``(record to keep, conflict)``: a valid record of this job's model and seed is kept;
    an unreadable one is run again (logged); a record of another run is a conflict."""
    path = job.run_dir / RECORD_NAME
    if not path.exists():
        return None, None
    try:
        record = load_run_record(path)
    except InputError as err:
        logger.warning("%s: %s; running the job again", job.name, err)
        return None, None
    found = {
        "model": record.model.get("name"),
        "seed": record.seed,
        "dataset": record.dataset.get("name"),
    }
    wanted: dict[str, Any] = {"model": job.model, "seed": job.seed, "dataset": config.dataset}
    found["split"] = record.dataset.get("split")
    wanted["split"] = "test" if config.folds is None else f"cv{config.folds}"
    if config.preset is not None:
        found["preset"], wanted["preset"] = record.recipe_preset, config.preset
    differ = [f"{k} {found[k]!r} (not {wanted[k]!r})" for k in wanted if found[k] != wanted[k]]
    if differ:
        return None, f"{path} is a run of another {', '.join(differ)}"
    return record, None


def plan_sweep(config: SweepConfig) -> list[SweepJob]:
    """The jobs of ``config``, in grid order (models, then seeds), after checking everything
    that can be checked before a job starts; raises :class:`SweepError` otherwise.

    Checks: non-empty grid without repeats, known models and dataset (plug-ins are loaded
    here), ``--set``/``--dataset-option`` that parse (``--set seed`` is refused: the seed is
    the grid's), and that no run directory holds a record of another model, seed, dataset
    or preset.
    """
    _check_grid(config)
    overrides = parse_key_values(config.overrides, what="--set")
    parse_key_values(config.dataset_options, what="--dataset-option")
    if "seed" in overrides:
        raise SweepError("--set seed=...: a sweep's seeds come from --seeds")
    _check_names(config)
    jobs, conflicts = [], []
    for model in config.models:
        for seed in config.seeds:
            job = SweepJob(model, int(seed), Path(config.out) / f"{model}-s{seed}")
            kept, conflict = _existing(job, config)
            if conflict:
                conflicts.append(conflict)
            resume = kept is None and (job.run_dir / "checkpoints" / "last.pt").exists()
            jobs.append(SweepJob(job.model, job.seed, job.run_dir, kept=kept, resume=resume))
    if conflicts:
        raise SweepError(
            "run directories of this sweep hold other runs (choose another --out): "
            + "; ".join(conflicts)
        )
    return jobs


def job_command(config: SweepConfig, job: SweepJob) -> list[str]:
    """The ``cmbbench run`` command line of ``job`` (``python -m cmbbench.cli run ...``)."""
    cmd = [sys.executable, "-m", "cmbbench.cli", "run", "--model", job.model]
    cmd += ["--seed", str(job.seed), "--dataset", config.dataset]
    cmd += ["--out", str(Path(job.run_dir).absolute()), "--device", config.device]
    if config.preset is not None:
        cmd += ["--preset", config.preset]
    if config.root is not None:
        cmd += ["--root", str(Path(config.root).absolute())]
    for plugin in config.plugins:
        cmd += ["--plugin", _absolute_plugin(plugin)]
    for item in config.dataset_options:
        cmd += ["--dataset-option", item]
    for item in config.overrides:
        cmd += ["--set", item]
    if config.bootstrap is not None:
        cmd += ["--bootstrap", str(config.bootstrap)]
    if config.folds is not None:
        cmd += ["--folds", str(config.folds)]
    if job.resume:
        cmd.append("--resume")
    cmd.append("--no-progress")
    return cmd


def _start_log(job: SweepJob, cmd: Sequence[str], where: str) -> None:
    """Create the run directory and append one header line for this attempt to its log."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(job.log_path, "a", encoding="utf-8") as fh:
        fh.write(f"=== cmbbench sweep {stamp} ({where}): {shlex.join(cmd)}\n")


def _kept_result(job: SweepJob) -> JobResult:
    record = job.kept
    assert record is not None
    return JobResult(job, "kept", seconds=record.timings.get("total_seconds"), test_f1=_f1(record))


def _finished(job: SweepJob, seconds: float | None, failure: str | None) -> JobResult:
    """The result of a job that ended: ``ran`` when it left a valid record of itself."""
    if failure is None:
        try:
            record = load_run_record(job.run_dir / RECORD_NAME)
        except InputError as err:
            failure = f"no valid record ({err})"
        else:
            if record.model.get("name") != job.model or record.seed != job.seed:
                failure = "its record.json is of another run"
            else:
                if seconds is None:
                    seconds = record.timings.get("total_seconds")
                return JobResult(job, "ran", seconds, _f1(record), resumed=job.resume)
    return JobResult(job, "failed", seconds, resumed=job.resume, reason=failure)


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _job_env(jobs: int) -> dict[str, str]:
    """The jobs' environment: with several jobs at once each gets ``cpus // jobs`` OpenMP
    threads (unless ``OMP_NUM_THREADS`` is set), so they do not fight over the cores."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, _cpus() // jobs))
    return env


def _start_jobs(
    todo: list[SweepJob], progress: Any, on_result: Any
) -> tuple[dict[str, JobResult], Any, list[SweepJob]]:
    """``(results, report, pending)`` for a sweep's executor: ``report(result)`` records a
    job's end (the caller's ``on_result``, a ``"sweep"`` progress event); the kept jobs are
    reported at once; ``pending`` are the jobs to run."""
    results: dict[str, JobResult] = {}
    n_kept = sum(job.kept is not None for job in todo)  # kept jobs do not count in the ETA
    tracker = PhaseTracker(progress, "sweep", len(todo), "sweep runs", offset=n_kept)

    def report(result: JobResult) -> None:
        results[result.job.name] = result
        if on_result is not None:
            on_result(result)
        tracker.emit(len(results), last=f"{result.job.name} {result.status}")

    for job in todo:
        if job.kept is not None:
            report(_kept_result(job))
    return results, report, [job for job in todo if job.kept is None]


def run_local(
    config: SweepConfig,
    jobs: int = 1,
    *,
    planned: Sequence[SweepJob] | None = None,
    on_result: OnResult | None = None,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Run the sweep on this machine, at most ``jobs`` ``cmbbench run`` subprocesses at once.

    Kept jobs are reported first and not run. ``planned``: the output of
    :func:`plan_sweep` (planned here when ``None``). ``on_result`` receives each
    :class:`JobResult` as the job ends, ``progress`` a ``"sweep"`` event per job. A failed
    job never stops the others. On
    ``KeyboardInterrupt`` the running subprocesses are terminated (their checkpoints stay
    for ``--resume``) and the interrupt propagates.
    """
    if jobs < 1:
        raise SweepError(f"--jobs must be at least 1, got {jobs}")
    todo = list(plan_sweep(config) if planned is None else planned)
    results, report, pending = _start_jobs(todo, progress, on_result)
    env = _job_env(min(jobs, len(pending)))
    live: set[subprocess.Popen[bytes]] = set()
    lock = threading.Lock()
    stopping = threading.Event()

    def run_one(job: SweepJob) -> JobResult:
        if stopping.is_set():
            return JobResult(job, "failed", reason="not started: the sweep was interrupted")
        cmd = job_command(config, job)
        _start_log(job, cmd, "local")
        t0 = time.perf_counter()
        with open(job.log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
            with lock:
                live.add(proc)
                if stopping.is_set():  # interrupted while this one was starting
                    proc.terminate()
            try:
                code = proc.wait()
            finally:
                with lock:
                    live.discard(proc)
        seconds = time.perf_counter() - t0
        return _finished(job, seconds, None if code == 0 else _exit_reason(code))

    if pending:
        pool = ThreadPoolExecutor(max_workers=min(jobs, len(pending)), thread_name_prefix="sweep")
        try:
            futures = {pool.submit(run_one, job) for job in pending}
            while futures:
                done, futures = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    report(fut.result())
        except BaseException:
            with lock:
                stopping.set()
                for proc in live:
                    proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return SweepResult([results[job.name] for job in todo])


def require_submitit() -> Any:
    """The ``submitit`` module; without it a :class:`SweepError` naming the extra to install."""
    try:
        import submitit
    except ImportError:
        raise SweepError(
            f"--slurm needs the optional package submitit: {SLURM_EXTRA_HINT}"
        ) from None
    return submitit


def _executor(folder: Path, cluster: str) -> Any:
    """The ``submitit.AutoExecutor`` jobs are submitted to (``cluster="slurm"``; ``"local"``
    or ``"debug"`` run them on this machine, for tests)."""
    submitit = require_submitit()
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise SweepError(
            "--slurm: the sbatch command is not found; submit the sweep from a Slurm login node"
        )
    return submitit.AutoExecutor(folder=folder, cluster=cluster)


def run_slurm(
    config: SweepConfig,
    slurm: SlurmOptions,
    *,
    planned: Sequence[SweepJob] | None = None,
    on_result: OnResult | None = None,
    on_submitted: Callable[[SweepJob, str], None] | None = None,
    progress: ProgressFn | None = None,
    cluster: str = "slurm",
    poll_s: float | None = None,
) -> SweepResult:
    """Submit each job that is not kept as one Slurm job through ``submitit``, wait, report.

    The job runs ``sh -c 'exec <job_command> >> run.log 2>&1'`` through
    ``submitit.helpers.CommandFunction`` in partition ``slurm.partition`` with its time
    limit, GPUs and CPUs; submitit's own files go to ``OUT/slurm/``. The Python that runs
    the jobs is this one (``sys.executable``): on a cluster it must be reachable from the
    compute nodes (a shared file system). ``on_submitted`` receives each job and its Slurm
    id; ``on_result`` each :class:`JobResult` as the job ends, ``progress`` a ``"sweep"``
    event per job. ``cluster``: submitit's executor (``"slurm"``; ``"local"``/``"debug"``
    run on this machine). ``poll_s``: seconds between status checks (default
    :data:`SLURM_POLL_S`). Without submitit installed: a :class:`SweepError` naming the
    extra to install.
    """
    submitit = require_submitit()
    todo = list(plan_sweep(config) if planned is None else planned)
    results, report, pending = _start_jobs(todo, progress, on_result)
    if pending:
        folder = Path(config.out) / SLURM_FOLDER
        executor = _executor(folder, cluster)
        submitted: dict[str, tuple[SweepJob, Any]] = {}
        for job in pending:
            cmd = job_command(config, job)
            _start_log(job, cmd, f"submitit {cluster}")
            executor.update_parameters(
                name=f"cmbbench-{job.name}",
                timeout_min=int(slurm.time_min),
                gpus_per_node=int(slurm.gpus),
                cpus_per_task=int(slurm.cpus),
                tasks_per_node=1,
                nodes=1,
                slurm_partition=slurm.partition,
            )
            log = shlex.quote(str(job.log_path.absolute()))
            shell = f"exec {shlex.join(cmd)} >> {log} 2>&1"
            fn = submitit.helpers.CommandFunction(["/bin/sh", "-c", shell], cwd=os.getcwd())
            sjob = executor.submit(fn)
            submitted[str(sjob.job_id)] = (job, sjob)
            logger.info("submitted %s as job %s", job.name, sjob.job_id)
            if on_submitted is not None:
                on_submitted(job, str(sjob.job_id))
        try:
            for sjob in submitit.helpers.as_completed(
                [s for _, s in submitted.values()],
                poll_frequency=SLURM_POLL_S if poll_s is None else poll_s,
            ):
                job = submitted[str(sjob.job_id)][0]
                err = sjob.exception()
                failure = None
                if err is not None:
                    failure = (
                        f"Slurm job {sjob.job_id} ended {sjob.state}; "
                        f"submitit's log {sjob.paths.stderr}"
                    )
                report(_finished(job, None, failure))
        except KeyboardInterrupt:
            logger.warning(
                "interrupted: the Slurm jobs keep running (cancel them with scancel %s)",
                " ".join(submitted),
            )
            raise
    return SweepResult([results[job.name] for job in todo])
