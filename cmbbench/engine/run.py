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
import functools
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmbbench import __version__
from cmbbench.cases import Case
from cmbbench.engine.progress import PhaseTracker, ProgressFn
from cmbbench.engine.record import RECORD_NAME, RunRecord
from cmbbench.errors import CmbbenchError

logger = logging.getLogger(__name__)

DeviceName = Literal["auto", "cpu", "cuda"]

# recipe preset -> the synthetic dataset preset it is designed for
SYNTHETIC_PRESET = {"tiny": "tiny", "quick": "quick", "full": "default"}


class RunDirError(CmbbenchError):
    """The run directory cannot be used (read-only, full disk, or holds another run)."""


def resolve_device(device: DeviceName | str) -> Any:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" or str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise CmbbenchError(
                "--device cuda was requested but no CUDA GPU is available to torch "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                "use --device cpu or --device auto"
            )
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise CmbbenchError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda'")


def default_run_dir(model: str, dataset: str, preset: str, seed: int) -> Path:
    """``./runs/<model>-<dataset>-<preset>-s<seed>``."""
    return Path("runs") / f"{model}-{dataset}-{preset}-s{seed}"


def _check_writable(out: Path) -> None:
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


def git_revision() -> str | None:
    """The git commit of the cmbbench source tree, when it is a git checkout."""
    src = Path(__file__).resolve().parents[2]
    if not (src / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        rev = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: Any, world_size: int = 1) -> dict[str, Any]:
    """cmbbench version and git revision, Python, torch, CUDA, device name, CPU count."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {
        "cmbbench_version": __version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
    }


def normalizer(method: str) -> Callable[[np.ndarray], np.ndarray]:
    """The per-image normalisation named by ``recipe.normalize`` (see ``engine.normalize``)."""
    from cmbbench.engine.normalize import METHODS, normalize_image

    if method not in METHODS:
        raise CmbbenchError(f"recipe normalize {method!r}: expected one of {METHODS}")
    return functools.partial(normalize_image, method=method)


def generation_progress(progress: ProgressFn | None) -> Callable[[int, int], None]:
    """A synthetic dataset's ``progress(done, total)`` callback drawing one "data" phase."""
    tracker: list[PhaseTracker] = []

    def generated(done: int, total: int) -> None:
        if not tracker:
            tracker.append(PhaseTracker(progress, "data", total, "generating synthetic data"))
        tracker[0].emit(done)

    return generated


def run(
    model: str,
    dataset: str = "synthetic",
    *,
    root: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    device: DeviceName = "auto",
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overrides: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
) -> RunRecord:
    """Train (or fit) ``model`` on ``dataset``, score its test split, write one run record.

    ``preset``: ``"tiny"``, ``"quick"`` (CPU) or ``"full"`` (the seed recipe, GPU); ``None``
    picks ``"full"`` on CUDA and ``"quick"`` on CPU (logged). ``device``: ``"auto"`` falls
    back to CPU without a GPU; ``"cuda"`` without one is an error. ``out``: the run directory
    (default ``./runs/<model>-<dataset>-<preset>-s<seed>/``), which receives ``record.json``
    and ``checkpoints/``. ``resume``: continue an interrupted run from its last checkpoint.
    ``overrides``: recipe entries (see :class:`cmbbench.engine.recipe.Recipe`), which win over
    the preset and the model's own overrides. ``dataset_options``: passed to
    ``load_dataset`` (for ``synthetic`` the dataset preset defaults to the recipe preset's:
    tiny -> tiny, quick -> quick, full -> default). ``model_kwargs``: passed to the model
    factory. ``progress``: receives :class:`~cmbbench.engine.progress.ProgressEvent` for
    every long phase. Returns the :class:`RunRecord` (also written to ``out/record.json``).
    """
    import torch

    from cmbbench.datasets.registry import dataset_info
    from cmbbench.engine.distributed import init_distributed, shutdown
    from cmbbench.engine.recipe import resolve_recipe
    from cmbbench.models.registry import build_model

    t_start = time.perf_counter()
    dev = resolve_device(device)
    ctx = init_distributed(dev)
    dev = ctx.device
    if preset is None:
        preset = "full" if dev.type == "cuda" else "quick"
        logger.warning("no --preset given: using %r on %s", preset, dev)
    info = dataset_info(dataset)
    run_dir = Path(out) if out is not None else default_run_dir(model, dataset, preset, seed)
    if not resume and (run_dir / "checkpoints" / "last.pt").exists():
        raise RunDirError(
            f"run directory {run_dir} already holds a run; pass --resume to continue it "
            "or choose another --out"
        )
    if ctx.is_main:
        _check_writable(run_dir)

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    built = build_model(model, **dict(model_kwargs or {}))
    resolved = resolve_recipe(preset, built.recipe_overrides, dict(overrides or {}))
    recipe = dataclasses.replace(resolved.recipe, seed=int(seed))
    sources = dict(resolved.sources)
    if seed != resolved.recipe.seed:
        sources["seed"] = "user"

    options = dict(dataset_options or {})
    if dataset == "synthetic":
        options.setdefault("preset", SYNTHETIC_PRESET[preset])
    t0 = time.perf_counter()
    from cmbbench.datasets.registry import load_dataset
    from cmbbench.engine.distributed import barrier

    root_s = None if root is None else str(root)
    load_options = dict(options)
    if dataset == "synthetic":
        # generate (or find in the cache) every subject once, in parallel, with a progress bar
        load_options.setdefault("progress", False)
        if ctx.is_main:
            load_dataset(
                dataset,
                root=root_s,
                split=None,
                **{**load_options, "progress": generation_progress(progress)},
            )
        barrier(ctx)
    data_tracker = PhaseTracker(progress, "data", 3, f"loading {dataset} splits")
    splits = []
    for i, split in enumerate(("train", "val", "test")):
        splits.append(load_dataset(dataset, root=root_s, split=split, **load_options))
        data_tracker.emit(i + 1)
    train_ds, val_ds, test_ds = splits
    for name, ds in (("train", train_ds), ("val", val_ds), ("test", test_ds)):
        if len(ds) == 0:
            raise CmbbenchError(f"dataset {dataset!r}: the {name} split is empty")
    data_seconds = time.perf_counter() - t0

    rule, rule_params = info.default_rule, dict(info.rule_params)
    timings: dict[str, Any] = {"data_seconds": data_seconds}
    model_record: dict[str, Any] = {
        "name": model,
        "kind": built.kind,
        "description": built.info.description,
        "source": built.info.source,
        "kwargs": dict(built.kwargs),
        "recipe_overrides": dict(built.recipe_overrides),
        "divisor": built.info.divisor,
    }
    if built.kind == "network":
        outcome = _run_network(
            built, recipe, train_ds, val_ds, test_ds, run_dir,
            device=dev, ctx=ctx, rule=rule, rule_params=rule_params,
            resume=resume, progress=progress, timings=timings,
        )  # fmt: skip
        model_record.update(outcome.pop("model_extra"))
    else:
        outcome = _run_detector(
            built, recipe, train_ds, val_ds, test_ds, run_dir,
            device=dev, ctx=ctx, rule=rule, rule_params=rule_params,
            progress=progress, timings=timings,
        )  # fmt: skip

    if ctx.is_main:
        from cmbbench.scoring.metrics import aggregate

        t0 = time.perf_counter()
        cases = outcome["cases"]
        metrics = aggregate(cases, n_bootstrap=n_bootstrap, seed=seed)
        timings["aggregate_seconds"] = time.perf_counter() - t0
        timings["total_seconds"] = time.perf_counter() - t_start
        record = RunRecord(
            run_id=run_dir.name,
            model=model_record,
            recipe=recipe.to_dict(),
            recipe_preset=preset,
            recipe_sources=sources,
            dataset={
                "name": info.name,
                "version": test_ds.version,
                "split": "test",
                "options": options,
                "root": None if root is None else str(root),
                "n_train": len(train_ds),
                "n_val": len(val_ds),
                "n_test": len(test_ds),
            },
            seed=int(seed),
            rule=rule,
            params=dict(cases[0].params) if cases else rule_params,
            postprocess=outcome["postprocess"],
            training=outcome["training"],
            cases=cases,
            metrics=metrics,
            environment=environment(dev, ctx.world_size),
            timings=timings,
            artifacts=outcome.get("artifacts", {}),
            created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            cmbbench_version=__version__,
        )
        try:
            record.save(run_dir / RECORD_NAME)
        except OSError as err:
            raise RunDirError(
                f"cannot write the run record to {run_dir / RECORD_NAME}: {err.strerror or err}"
            ) from None
        logger.info("run record written to %s", run_dir / RECORD_NAME)
    shutdown(ctx)
    from cmbbench.engine.record import load_run_record

    # every rank returns exactly what the file holds (JSON types: lists, not tuples)
    return load_run_record(run_dir / RECORD_NAME)


def score_cases(
    predict_one,
    cases: Sequence[Case],
    *,
    ctx,
    rule: str,
    rule_params: dict[str, Any],
    progress: ProgressFn | None,
    phase: str = "infer",
) -> tuple[list[Any], float, float]:
    """Predict + score this rank's shard of ``cases``; returns (results in case order on
    every rank, inference seconds, scoring seconds)."""
    from cmbbench.engine.distributed import shard
    from cmbbench.engine.evaluate import case_meta, gather_by_case

    mine = shard(cases, ctx)
    tracker = PhaseTracker(progress, phase, len(mine), f"{phase} {len(cases)} cases")
    results: dict[str, Any] = {}
    infer_s = score_s = 0.0
    for i, case in enumerate(mine):
        t0 = time.perf_counter()
        pred, threshold, scores = predict_one(case)
        t1 = time.perf_counter()
        from cmbbench.scoring.case import score_case

        results[case.case_id] = score_case(
            pred,
            case.label,
            affine=case.affine,
            rule=rule,
            threshold=threshold,
            ignore=case.ignore,
            lesion_attrs=case.meta.get("lesion_attrs"),
            case_id=case.case_id,
            meta=case_meta(case),
            gt_kind=case.gt_kind,
            pred_scores=scores,
            **rule_params,
        )
        score_s += time.perf_counter() - t1
        infer_s += t1 - t0
        case.release()
        tracker.emit(i + 1)
    ordered = gather_by_case(results, [c.case_id for c in cases], ctx)
    from cmbbench.engine.distributed import all_reduce_sum

    infer_s, score_s = all_reduce_sum([infer_s, score_s], ctx)
    return ordered, infer_s, score_s


def _run_network(
    built,
    recipe,
    train_ds,
    val_ds,
    test_ds,
    run_dir: Path,
    *,
    device,
    ctx,
    rule: str,
    rule_params: dict[str, Any],
    resume: bool,
    progress: ProgressFn | None,
    timings: dict[str, Any],
) -> dict[str, Any]:
    import torch

    from cmbbench.engine.evaluate import (
        ValidationSet,
        gather_by_case,
        make_validator,
        predict_probability,
    )
    from cmbbench.engine.patches import PatchSampler, prepare_volumes
    from cmbbench.engine.postprocess import (
        PostprocessParams,
        best_grid_point,
        clean_probability,
        postprocess_grid,
    )
    from cmbbench.engine.trainer import load_best_weights, train
    from cmbbench.models.detector import check_input_size, check_output_shape

    net = built.model
    name = built.name
    divisor = built.info.divisor
    check_input_size(built.info, recipe.patch_size)
    output_kind = check_output_shape(net, recipe.patch_size, name=name, divisor=divisor)
    n_params = int(sum(p.numel() for p in net.parameters()))
    normalize = normalizer(recipe.normalize)

    t0 = time.perf_counter()
    prep = PhaseTracker(progress, "data", len(train_ds), "preparing training volumes")
    volumes = prepare_volumes(
        list(train_ds),
        normalize,
        lambda d, t: prep.emit(d),
        hard_negatives=recipe.hard_negative_fraction > 0,
    )
    val_set = ValidationSet.build(list(val_ds), normalize, ctx)
    timings["prepare_seconds"] = time.perf_counter() - t0

    sampler = PatchSampler.from_recipe(
        volumes, recipe, seed=recipe.seed, rank=ctx.rank, world_size=ctx.world_size
    )
    validator = make_validator(
        val_set, recipe, device=device, divisor=divisor, rule=rule,
        rule_params=rule_params, ctx=ctx, name=name,
    )  # fmt: skip
    result = train(
        net, sampler, recipe, out_dir=run_dir, device=device, validate=validator,
        resume=resume, progress=progress, dist_ctx=ctx,
    )  # fmt: skip
    del volumes, sampler
    timings.update(
        train_seconds=result.train_seconds,
        seconds_per_step=result.seconds_per_step,
        validation_seconds=result.val_seconds,
        peak_memory_bytes=result.peak_memory_bytes,
        peak_memory_kind="cuda_max_allocated" if device.type == "cuda" else "cpu_max_rss",
    )
    load_best_weights(net, result)
    net.to(device).eval()

    # post-processing tuned on the validation split only
    t0 = time.perf_counter()
    tune_tracker = PhaseTracker(progress, "tune", len(val_set.cases), "validation predictions")
    reuse = (
        validator.calls > 0
        and validator.last_probs is not None
        and bool(result.validations)
        and result.validations[-1]["step"] == result.best_step
    )
    if reuse:  # the best weights are the ones validated last: their maps are at hand
        val_probs = dict(validator.last_probs or {})
        tune_tracker.emit(len(val_set.cases))
    else:
        val_probs = {}
        for i, (case, image) in enumerate(zip(val_set.cases, val_set.images, strict=True)):
            val_probs[case.case_id] = predict_probability(
                net, image, recipe, device=device, divisor=divisor, name=name
            )
            tune_tracker.emit(i + 1)
    validator.last_probs = None
    probs = gather_by_case(val_probs, [c.case_id for c in val_ds], ctx)
    del val_probs
    grid = postprocess_grid(
        probs,
        list(val_ds),
        recipe.pp_thresholds,
        recipe.pp_min_sizes,
        rule=rule,
        rule_params=rule_params,
    )
    best = best_grid_point(grid)
    pp = PostprocessParams(threshold=best.threshold, min_size=best.min_size)
    del probs, val_set
    timings["tune_seconds"] = time.perf_counter() - t0

    def predict_one(case: Case):
        image = np.asarray(normalize(np.asarray(case.image, np.float32)), np.float32)
        prob = predict_probability(net, image, recipe, device=device, divisor=divisor, name=name)
        return (
            clean_probability(prob, pp.threshold, pp.min_size, pp.connectivity),
            pp.threshold,
            None,
        )

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cases, infer_s, score_s = score_cases(
        predict_one, list(test_ds), ctx=ctx, rule=rule, rule_params=rule_params, progress=progress
    )
    timings.update(
        inference_seconds=infer_s,
        inference_seconds_per_case=infer_s / len(test_ds),
        scoring_seconds=score_s,
    )
    return {
        "cases": cases,
        "postprocess": {
            **pp.to_dict(),
            "tuned_on": "val",
            "val_f1": best.f1,
            "val_counts": {"tp": best.tp, "fp": best.fp, "fn": best.fn},
            "grid": [g.to_dict() for g in grid],
        },
        "training": {
            "steps": result.steps,
            "amp_dtype": result.amp_dtype,
            "resumed_from_step": result.start_step if result.start_step else None,
            "best_step": result.best_step,
            "best_val_f1": result.best_metric,
            "validations": result.validations,
            "loss_first": result.losses[0] if result.losses else None,
            "loss_last": result.losses[-1] if result.losses else None,
            "loss_every_step": result.losses,
            "skipped_steps": result.skipped_steps,
        },
        "artifacts": {
            "best_checkpoint": _rel(result.best_checkpoint, run_dir),
            "last_checkpoint": _rel(result.last_checkpoint, run_dir),
        },
        "model_extra": {"output": output_kind, "n_parameters": n_params},
    }


def detector_output(det: Any, name: str, case: Case) -> tuple[np.ndarray, float, Any]:
    """``det.predict(case)`` checked and unpacked for scoring: (map (X, Y, Z) or world-mm
    points (N, 3), operating threshold (``Prediction.meta["threshold"]``, default 0.5),
    point scores or ``None``)."""
    from cmbbench.models.detector import Prediction

    pred = det.predict(case)
    if not isinstance(pred, Prediction):
        raise CmbbenchError(
            f"model {name!r}: predict() returned {type(pred).__name__}, expected a Prediction"
        )
    if pred.kind != "points" and tuple(pred.array.shape) != tuple(case.shape):
        raise CmbbenchError(
            f"model {name!r}, case {case.case_id!r}: prediction shape "
            f"{tuple(pred.array.shape)} does not match the image {tuple(case.shape)}"
        )
    threshold = float((pred.meta or {}).get("threshold", 0.5))
    return pred.array, threshold, pred.scores if pred.kind == "points" else None


def _rel(path: Path | None, base: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


def _run_detector(
    built,
    recipe,
    train_ds,
    val_ds,
    test_ds,
    run_dir: Path,
    *,
    device,
    ctx,
    rule: str,
    rule_params: dict[str, Any],
    progress: ProgressFn | None,
    timings: dict[str, Any],
) -> dict[str, Any]:
    det = built.model
    config = {
        "recipe": recipe.to_dict(),
        "seed": recipe.seed,
        "device": str(device),
        "out_dir": str(run_dir),
        "rule": rule,
        "rule_params": dict(rule_params),
        "progress": progress,
    }
    t0 = time.perf_counter()
    PhaseTracker(progress, "train", 1, f"fitting {built.name}")
    det.fit(train_ds, val_ds, config)
    PhaseTracker(progress, "train", 1, f"fitting {built.name}").emit(1)
    timings["train_seconds"] = time.perf_counter() - t0

    def predict_one(case: Case):
        return detector_output(det, built.name, case)

    cases, infer_s, score_s = score_cases(
        predict_one, list(test_ds), ctx=ctx, rule=rule, rule_params=rule_params, progress=progress
    )
    timings.update(
        inference_seconds=infer_s,
        inference_seconds_per_case=infer_s / len(test_ds),
        scoring_seconds=score_s,
    )
    training: dict[str, Any] = {"fit_seconds": timings["train_seconds"]}
    describe = getattr(det, "config", None)
    if callable(describe):
        fitted = describe()
        try:
            training["fitted"] = json.loads(json.dumps(fitted))
        except (TypeError, ValueError) as err:
            raise CmbbenchError(
                f"model {built.name!r}: config() must return a JSON-able dict ({err})"
            ) from None
    return {
        "cases": cases,
        "postprocess": {"applied": False, "note": "detectors post-process their own output"},
        "training": training,
        "artifacts": {},
    }
