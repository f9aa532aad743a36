"""``cmbbench.run``: train, tune, predict and score one model on one dataset; one run record.

The same pipeline for every model: a network (``nn.Module``) is trained by the shared
engine (patch sampler, loss, trainer, validation F1, best checkpoint), post-processing
(threshold, minimum component size) is tuned on the validation split only, the test split
is predicted by sliding-window inference and scored with the dataset's default rule; a
detector (``fit``/``predict``) is fitted on train/val and predicts the test split itself.
Per-case records, aggregate metrics with bootstrap CIs, the resolved recipe (and which keys
were overridden by the model or the user), the environment and the timings go into one
JSON run record (``docs/run-record.md``).

Under ``torchrun`` the training runs with DDP and prediction/scoring is sharded across
ranks; rank 0 writes the record.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cmbbench import __version__
from cmbbench.datasets.registry import DEFAULT_DATASET
from cmbbench.engine.environment import DeviceName, configure_openmp, environment, resolve_device
from cmbbench.engine.record import RECORD_NAME, RunRecord
from cmbbench.errors import CmbbenchError
from cmbbench.progress import ProgressFn

logger = logging.getLogger(__name__)

__all__ = ["DeviceName", "RunDirError", "default_run_dir", "resolve_device", "run"]


class RunDirError(CmbbenchError):
    """The run directory cannot be used (read-only, full disk, or holds another run)."""


def default_run_dir(model: str, dataset: str, preset: str, seed: int) -> Path:
    """``./runs/<model>-<dataset>-<preset>-s<seed>``."""
    return Path("runs") / f"{model}-{dataset}-{preset}-s{seed}"


def check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there (clear error otherwise)."""
    probe = out / ".write-test"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as err:
        if probe.exists():
            probe.unlink()
        if err.errno == errno.ENOSPC:
            raise RunDirError(f"cannot write to run directory {out}: the disk is full") from None
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RunDirError(
                f"cannot write to run directory {out}: it is read-only or not writable"
            ) from None
        raise RunDirError(f"cannot write to run directory {out}: {err.strerror or err}") from None


def run(
    model: str,
    dataset: str = DEFAULT_DATASET,
    *,
    root: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    device: DeviceName = "auto",
    seed: int | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overrides: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
) -> RunRecord:
    """Train (or fit) ``model`` on ``dataset``, score its test split, write one run record.

    ``preset``: the recipe preset, ``"tiny"``, ``"quick"`` (CPU) or ``"full"`` (the seed
    recipe, GPU); ``None`` picks ``"full"`` on CUDA and ``"quick"`` on CPU (logged).
    ``device``: ``"auto"`` falls back to CPU without a GPU; ``"cuda"`` without one is an
    error. ``seed``: initialisation, sampling and bootstrap (default 0; ``overrides={"seed":
    N}`` is the same, and a different value in both is an error). ``out``: the run directory
    (default ``./runs/<model>-<dataset>-<preset>-s<seed>/``), which receives ``record.json``
    and ``checkpoints/``. ``resume``: continue an interrupted run from its last checkpoint.
    ``overrides``: recipe entries (see :class:`cmbbench.engine.recipe.Recipe`), which win over
    the preset and the model's own overrides. ``dataset_options``: passed to
    ``load_dataset``, over the dataset's own options for the recipe preset
    (:func:`cmbbench.datasets.registry.options_for_recipe`; synthetic: tiny -> tiny, quick ->
    quick, full -> default). ``model_kwargs``: passed to the model factory. ``progress``:
    receives :class:`~cmbbench.progress.ProgressEvent` for every long phase. Returns
    the :class:`RunRecord` (also written to ``out/record.json``).
    """
    configure_openmp()

    from cmbbench.datasets.registry import options_for_recipe
    from cmbbench.engine.channels import channel_names
    from cmbbench.engine.distributed import shutdown
    from cmbbench.engine.stages import load_run_data

    t_start = time.perf_counter()
    setup = setup_run(model, dataset, preset, device, seed, overrides, model_kwargs, n_bootstrap)
    run_dir = (
        Path(out) if out is not None else default_run_dir(model, dataset, setup.preset, setup.seed)
    )
    claim_run_dir(run_dir, resume, setup.ctx)
    options = options_for_recipe(dataset, setup.preset, dataset_options)
    built, recipe, sources = build_for_run(setup, channel_names(options))
    root_s = None if root is None else str(root)
    data = load_run_data(dataset, root=root_s, options=options, ctx=setup.ctx, progress=progress)
    fit_and_score(setup, built, recipe, sources, data, run_dir, resume, progress, t_start)
    shutdown(setup.ctx)
    from cmbbench.engine.record import load_run_record

    # every rank returns exactly what the file holds (JSON types: lists, not tuples)
    return load_run_record(run_dir / RECORD_NAME)


@dataclasses.dataclass
class RunSetup:
    """What every run of one command shares: model, recipe preset, seed, device, the
    distributed context and the user's overrides."""

    model: str
    preset: str
    seed: int
    device: Any
    ctx: Any
    overrides: dict[str, Any]
    model_kwargs: dict[str, Any]
    n_bootstrap: int


def setup_run(
    model, dataset, preset, device, seed, overrides, model_kwargs, n_bootstrap
) -> RunSetup:
    from cmbbench.datasets.registry import dataset_info
    from cmbbench.engine.distributed import init_distributed

    dataset_info(dataset)  # an unknown name fails before anything starts, listing the known
    overrides = dict(overrides or {})
    seed = _run_seed(seed, overrides)
    dev = resolve_device(device)
    ctx = init_distributed(dev)
    if preset is None:
        preset = "full" if ctx.device.type == "cuda" else "quick"
        logger.warning("no --preset given: using %r on %s", preset, ctx.device)
    return RunSetup(
        model, preset, seed, ctx.device, ctx, overrides, dict(model_kwargs or {}), n_bootstrap
    )


def claim_run_dir(run_dir: Path, resume: bool, ctx: Any) -> None:
    if not resume and (run_dir / "checkpoints" / "last.pt").exists():
        raise RunDirError(
            f"run directory {run_dir} already holds a run; pass --resume to continue it "
            "or choose another --out"
        )
    if ctx.is_main:
        check_writable(run_dir)


def build_for_run(
    setup: RunSetup, channels: list[str] | None = None
) -> tuple[Any, Any, dict[str, str]]:
    """Seed torch and numpy, build the model, resolve its recipe: ``(built, recipe, sources)``.

    ``channels``: the run's input channels (the dataset's ``channels`` option; ``None``: one
    main channel); the model is built for that many, and one that cannot take them fails
    here, before any data is prepared or trained on."""
    import torch

    from cmbbench.engine.recipe import resolve_recipe
    from cmbbench.models.registry import build_model, check_in_channels

    kwargs = dict(setup.model_kwargs)
    in_channels = kwargs.pop("in_channels", None)
    if channels is not None:
        if in_channels is not None and int(in_channels) != len(channels):
            raise CmbbenchError(
                f"model argument in_channels={in_channels} does not match the "
                f"{len(channels)} dataset channels ({', '.join(channels)})"
            )
        in_channels = len(channels)
        check_in_channels(setup.model, len(channels), channels)
    torch.manual_seed(setup.seed)
    np.random.seed(setup.seed % 2**32)
    built = build_model(setup.model, in_channels=in_channels, **kwargs)
    resolved = resolve_recipe(setup.preset, built.recipe_overrides, setup.overrides)
    recipe = dataclasses.replace(resolved.recipe, seed=setup.seed)
    sources = dict(resolved.sources)
    if setup.seed != resolved.recipe.seed:
        sources["seed"] = "user"
    return built, recipe, sources


def fit_and_score(
    setup: RunSetup,
    built: Any,
    recipe: Any,
    sources: dict[str, str],
    data: Any,
    run_dir: Path,
    resume: bool,
    progress: ProgressFn | None,
    t_start: float,
) -> RunRecord | None:
    """Fit, tune, predict and score ``data``'s test split; write ``run_dir/record.json`` (rank
    0, which also gets the record back; other ranks ``None``)."""
    dev, ctx = setup.device, setup.ctx
    evaluator = data.info.evaluator
    timings: dict[str, Any] = {"data_seconds": data.seconds}
    if built.kind == "network":
        outcome = _network_stages(
            built, recipe, data, run_dir, evaluator, dev, ctx, resume, progress
        )
    else:
        outcome = _detector_stages(
            built, recipe, data, run_dir, evaluator, dev, ctx, progress, setup.preset
        )
    timings.update(outcome.timings)
    if not ctx.is_main:
        return None
    from cmbbench.scoring.metrics import aggregate

    t0 = time.perf_counter()
    cases = outcome.scored.results
    metrics = aggregate(cases, n_bootstrap=setup.n_bootstrap, seed=setup.seed)
    timings["aggregate_seconds"] = time.perf_counter() - t0
    timings["total_seconds"] = time.perf_counter() - t_start
    record = RunRecord(
        run_id=run_dir.name,
        model={**_model_block(built), **outcome.model_extra},
        recipe=recipe.to_dict(),
        recipe_preset=setup.preset,
        recipe_sources=sources,
        dataset=data.record_dataset(),
        seed=setup.seed,
        rule=evaluator.rule,
        params=dict(cases[0].params),
        postprocess=outcome.postprocess,
        training=outcome.training,
        cases=cases,
        metrics=metrics,
        environment=environment(dev, ctx.world_size),
        timings=timings,
        artifacts=outcome.artifacts,
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        cmbbench_version=__version__,
    )
    save_record(record, run_dir / RECORD_NAME)
    return record


def save_record(record: RunRecord, path: Path) -> Path:
    """Write a run record, a :class:`RunDirError` naming the file when it cannot be."""
    try:
        record.save(path)
    except OSError as err:
        raise RunDirError(f"cannot write the run record to {path}: {err.strerror or err}") from None
    logger.info("run record written to %s", path)
    return path


def _run_seed(seed: int | None, overrides: dict[str, Any]) -> int:
    """The run's seed: ``seed``, or a ``seed`` recipe override (popped from ``overrides``); a
    different value in both is an error, never silently resolved."""
    if "seed" not in overrides:
        return 0 if seed is None else int(seed)
    raw = overrides.pop("seed")
    try:
        given = int(str(raw).strip())
    except ValueError:
        raise CmbbenchError(f"recipe key 'seed': expected an integer, got {raw!r}") from None
    if seed is not None and int(seed) != given:
        raise CmbbenchError(
            f"two seeds given: --seed {seed} and --set seed={raw}; give one (they are the same "
            "setting: initialisation, patch sampling and the bootstrap)"
        )
    return given


def _model_block(built: Any) -> dict[str, Any]:
    """The run record's ``model`` block (a network's stages add ``output`` and
    ``n_parameters``)."""
    return {
        "name": built.name,
        "kind": built.kind,
        "description": built.info.description,
        "source": built.info.source,
        "kwargs": dict(built.kwargs),
        "recipe_overrides": dict(built.recipe_overrides),
        "divisor": built.info.divisor,
        "in_channels": built.in_channels,
    }


@dataclasses.dataclass
class _Outcome:
    """What the model-specific stages give the record."""

    scored: Any  # cmbbench.engine.predictor.ScoredCases
    postprocess: dict[str, Any]
    training: dict[str, Any]
    timings: dict[str, Any]
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _network_stages(
    built, recipe, data, run_dir, evaluator, dev, ctx, resume, progress
) -> _Outcome:
    """fit -> tune on val -> predict + score the test split, for a network."""
    import torch

    from cmbbench.engine.channels import extra_channels
    from cmbbench.engine.predictor import network_predictor, predict_and_score
    from cmbbench.engine.stages import fit_network, tune_postprocessing

    fit = fit_network(
        built, recipe, data, run_dir, device=dev, ctx=ctx, evaluator=evaluator,
        resume=resume, progress=progress,
    )  # fmt: skip
    timings = fit.record_timings(dev)
    tuned = tune_postprocessing(
        fit, recipe, list(data.val), evaluator, device=dev, name=built.name, ctx=ctx,
        progress=progress,
    )  # fmt: skip
    timings["tune_seconds"] = tuned.seconds
    predictor = network_predictor(
        fit.net,
        recipe,
        device=dev,
        divisor=fit.divisor,
        name=built.name,
        postprocess=tuned.params,
        extra_channels=extra_channels(data.options),
    )
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    scored = predict_and_score(predictor, list(data.test), evaluator, ctx=ctx, progress=progress)
    timings.update(_inference_timings(scored, len(data.test)))
    return _Outcome(
        scored,
        tuned.record_postprocess(),
        fit.record_training(),
        timings,
        fit.record_artifacts(run_dir),
        {"output": fit.output_kind, "n_parameters": fit.n_parameters},
    )


def _detector_stages(
    built, recipe, data, run_dir, evaluator, dev, ctx, progress, preset=None
) -> _Outcome:
    """fit (on train/val) -> predict + score the test split, for a detector (``preset``: the
    recipe preset's name, given to its ``fit`` as ``config["preset"]``)."""
    from cmbbench.engine.predictor import detector_predictor, predict_and_score
    from cmbbench.engine.stages import fit_detector

    fit = fit_detector(
        built, recipe, data, run_dir, device=dev, evaluator=evaluator, progress=progress,
        preset=preset,
    )  # fmt: skip
    predictor = detector_predictor(fit.det, built.name)
    scored = predict_and_score(predictor, list(data.test), evaluator, ctx=ctx, progress=progress)
    from cmbbench.engine.environment import peak_memory_bytes, peak_memory_kind

    timings = {
        "train_seconds": fit.seconds,
        **_inference_timings(scored, len(data.test)),
        # the process's peak over fit and prediction (a detector's own worker processes,
        # e.g. nnU-Net's augmentation workers, are not included)
        "peak_memory_bytes": peak_memory_bytes(dev),
        "peak_memory_kind": peak_memory_kind(dev),
    }
    return _Outcome(
        scored,
        {"applied": False, "note": "detectors post-process their own output"},
        fit.record_training(),
        timings,
    )


def _inference_timings(scored: Any, n_cases: int) -> dict[str, float]:
    return {
        "inference_seconds": scored.inference_seconds,
        "inference_seconds_per_case": scored.inference_seconds / n_cases,
        "scoring_seconds": scored.scoring_seconds,
    }
