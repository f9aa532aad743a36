"""The stages of a run, each a function with typed inputs and outputs.

``cmbbench.run`` is, in order: :func:`load_run_data` (the dataset's splits, prepared by the
dataset itself) -> :func:`fit_network` or :func:`fit_detector` -> :func:`tune_postprocessing`
(networks; validation split only) -> :func:`cmbbench.engine.predictor.predict_and_score`
(the test split, the dataset's evaluator) -> the record (:mod:`cmbbench.engine.run`). Every
stage returns a dataclass; what each contributes to the run record is its
``record_*`` method, so the record is assembled in one place from typed parts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmbbench.cases import Case
from cmbbench.datasets.registry import Dataset, DatasetInfo
from cmbbench.engine.channels import channel_names
from cmbbench.engine.environment import peak_memory_kind
from cmbbench.errors import CmbbenchError
from cmbbench.progress import PhaseTracker, ProgressFn
from cmbbench.scoring.evaluator import Evaluator

SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------ data
@dataclass
class RunData:
    """The three splits of a run, the dataset options used, and the loading time (s)."""

    info: DatasetInfo
    root: str | None
    options: dict[str, Any]
    train: Dataset
    val: Dataset
    test: Dataset
    seconds: float
    #: the scored split's name in the record: ``test``, or a cross-validation fold's
    #: ``cv<k>-fold-<i>`` (whose record the leaderboard leaves to the pooled one)
    split: str = "test"

    def record_dataset(self) -> dict[str, Any]:
        """The run record's ``dataset`` block, with ``channels``: the input channels in order
        (``None``: the dataset's one main channel). A cross-validation fold's also names the cases
            it trained and validated on, so that anyone can check it never saw its test cases)."""
        block = {
            "name": self.info.name,
            "version": self.test.version,
            "split": self.split,
            "options": self.options,
            "root": self.root,
            "channels": channel_names(self.options),
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
        }
        cohorts = sorted({str(c.meta.get("cohort", "")) for c in self.train} - {""})
        if cohorts:  # what it was trained on (a generalisation matrix's diagonal)
            block["cohorts"] = cohorts
        if self.split != "test":
            block["train_ids"] = [c.case_id for c in self.train]
            block["val_ids"] = [c.case_id for c in self.val]
        return block


def load_run_data(
    dataset: str,
    *,
    root: str | None,
    options: dict[str, Any],
    ctx: Any,
    progress: ProgressFn | None = None,
) -> RunData:
    """Prepare the dataset once (rank 0; e.g. generate the synthetic subjects, with a progress
    bar), then load its train, val and test splits; an empty split is an error."""
    from cmbbench.datasets.registry import dataset_info, load_dataset, prepare_dataset
    from cmbbench.engine.distributed import barrier

    t0 = time.perf_counter()
    info = dataset_info(dataset)
    if ctx.is_main:
        prepare_dataset(dataset, root=root, progress=progress, **options)
    barrier(ctx)
    tracker = PhaseTracker(progress, "data", len(SPLITS), f"loading {dataset} splits")
    splits = []
    for i, split in enumerate(SPLITS):
        splits.append(load_dataset(dataset, root=root, split=split, progress=False, **options))
        tracker.emit(i + 1)
    for name, ds in zip(SPLITS, splits, strict=True):
        if len(ds) == 0:
            raise CmbbenchError(f"dataset {dataset!r}: the {name} split is empty")
    return RunData(info, root, options, *splits, seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------ networks
@dataclass
class NetworkFit:
    """A trained network (best weights loaded, eval mode) and what training produced."""

    net: Any
    result: Any  # cmbbench.engine.trainer.TrainResult
    validator: Any  # cmbbench.engine.validation.Validator
    val_set: Any  # cmbbench.engine.validation.ValidationSet
    divisor: Any
    output_kind: str
    n_parameters: int
    prepare_seconds: float

    def record_training(self) -> dict[str, Any]:
        """The run record's ``training`` block."""
        r = self.result
        return {
            "steps": r.steps,
            "amp_dtype": r.amp_dtype,
            "resumed_from_step": r.start_step if r.start_step else None,
            "best_step": r.best_step,
            "best_val_f1": r.best_metric,
            "validations": r.validations,
            "loss_first": r.losses[0] if r.losses else None,
            "loss_last": r.losses[-1] if r.losses else None,
            "loss_every_step": r.losses,
            "skipped_steps": r.skipped_steps,
            "fp32_retried_steps": r.fp32_retried_steps,
        }

    def record_timings(self, device: Any) -> dict[str, Any]:
        r = self.result
        return {
            "prepare_seconds": self.prepare_seconds,
            "train_seconds": r.train_seconds,
            "seconds_per_step": r.seconds_per_step,
            "validation_seconds": r.val_seconds,
            "peak_memory_bytes": r.peak_memory_bytes,
            "peak_memory_kind": peak_memory_kind(device),
        }

    def record_artifacts(self, run_dir: Path) -> dict[str, Any]:
        """The run record's ``artifacts``: checkpoints and training logs (``train_log``,
        ``validation_log``, ``tensorboard_dir``, ``training_plot``), relative to ``run_dir``."""
        return {
            "best_checkpoint": _relative(self.result.best_checkpoint, run_dir),
            "last_checkpoint": _relative(self.result.last_checkpoint, run_dir),
            **{key: _relative(path, run_dir) for key, path in self.result.log_files.items()},
        }


def fit_network(
    built: Any,
    recipe: Any,
    data: RunData,
    run_dir: Path,
    *,
    device: Any,
    ctx: Any,
    evaluator: Evaluator,
    resume: bool = False,
    progress: ProgressFn | None = None,
) -> NetworkFit:
    """Train ``built.model`` with the shared engine (patch sampler, loss, trainer, validation
    F1 on the val split, best checkpoint) and load its best weights. The input channels are
    the dataset's ``channels`` option (``data.options``): the main image, then its extras."""
    from cmbbench.engine.channels import extra_channels
    from cmbbench.engine.normalize import normalizer
    from cmbbench.engine.patches import PatchSampler, prepare_volumes
    from cmbbench.engine.trainer import load_best_weights, train
    from cmbbench.engine.validation import ValidationSet, Validator
    from cmbbench.models.detector import check_input_size, check_output_shape

    net, name, divisor = built.model, built.name, built.info.divisor
    check_input_size(built.info, recipe.patch_size)
    extras = extra_channels(data.options)
    output_kind = check_output_shape(
        net, recipe.patch_size, name=name, divisor=divisor, in_channels=1 + len(extras)
    )
    n_params = int(sum(p.numel() for p in net.parameters()))
    normalize = normalizer(recipe.normalize)

    t0 = time.perf_counter()
    volumes = prepare_volumes(
        list(data.train),
        normalize,
        progress,
        hard_negatives=recipe.hard_negative_fraction > 0,
        extra_channels=extras,
    )
    val_set = ValidationSet.build(list(data.val), normalize, ctx, extras)
    prepare_seconds = time.perf_counter() - t0

    sampler = PatchSampler.from_recipe(
        volumes, recipe, seed=recipe.seed, rank=ctx.rank, world_size=ctx.world_size
    )
    validator = Validator(
        val_set, recipe, device=device, divisor=divisor, evaluator=evaluator, ctx=ctx, name=name
    )
    result = train(
        net, sampler, recipe, out_dir=run_dir, device=device, validate=validator,
        resume=resume, progress=progress, dist_ctx=ctx,
    )  # fmt: skip
    del volumes, sampler
    load_best_weights(net, result)
    net.to(device).eval()
    return NetworkFit(
        net, result, validator, val_set, divisor, output_kind, n_params, prepare_seconds
    )


@dataclass
class Tuned:
    """The post-processing chosen on the validation split, with the whole grid it searched."""

    params: Any  # cmbbench.engine.postprocess.PostprocessParams
    best: Any  # cmbbench.engine.postprocess.GridPoint
    grid: list[Any]
    seconds: float

    def record_postprocess(self) -> dict[str, Any]:
        """The run record's ``postprocess`` block."""
        return {
            **self.params.to_dict(),
            "tuned_on": "val",
            "val_f1": self.best.f1,
            "val_counts": {"tp": self.best.tp, "fp": self.best.fp, "fn": self.best.fn},
            "grid": [g.to_dict() for g in self.grid],
        }


def tune_postprocessing(
    fit: NetworkFit,
    recipe: Any,
    val_cases: list[Case],
    evaluator: Evaluator,
    *,
    device: Any,
    name: str,
    ctx: Any,
    progress: ProgressFn | None = None,
) -> Tuned:
    """Threshold and minimum component size tuned on the validation split only: the best
    weights' validation maps (reused from the last validation when those were the best
    weights), scored over the recipe's grid (:func:`cmbbench.engine.postprocess.best_grid_point`)."""
    from cmbbench.engine.distributed import gather_by_case
    from cmbbench.engine.inference import predict_probability
    from cmbbench.engine.postprocess import PostprocessParams, best_grid_point, postprocess_grid

    t0 = time.perf_counter()
    val_set, validator, result = fit.val_set, fit.validator, fit.result
    tracker = PhaseTracker(progress, "tune", len(val_set.cases), "validation predictions")
    reuse = (
        validator.calls > 0
        and validator.last_probs is not None
        and bool(result.validations)
        and result.validations[-1]["step"] == result.best_step
    )
    if reuse:  # the best weights are the ones validated last: their maps are at hand
        val_probs = dict(validator.last_probs or {})
        tracker.emit(len(val_set.cases))
    else:
        val_probs = {}
        for i, (case, image) in enumerate(zip(val_set.cases, val_set.images, strict=True)):
            val_probs[case.case_id] = predict_probability(
                fit.net, image, recipe, device=device, divisor=fit.divisor, name=name
            )
            tracker.emit(i + 1)
    validator.last_probs = None
    probs = gather_by_case(val_probs, [c.case_id for c in val_cases], ctx)
    del val_probs
    grid = postprocess_grid(probs, val_cases, recipe.pp_thresholds, recipe.pp_min_sizes, evaluator)
    best = best_grid_point(grid)
    params = PostprocessParams(threshold=best.threshold, min_size=best.min_size)
    fit.val_set = None  # the validation images are not needed any more
    return Tuned(params, best, grid, time.perf_counter() - t0)


# ------------------------------------------------------------------------------ detectors
@dataclass
class DetectorFit:
    """A fitted detector, its fit time (s) and its fitted settings (JSON-able, or ``None``)."""

    det: Any
    seconds: float
    fitted: dict[str, Any] | None = field(default=None)

    def record_training(self) -> dict[str, Any]:
        training: dict[str, Any] = {"fit_seconds": self.seconds}
        if self.fitted is not None:
            training["fitted"] = self.fitted
        return training


def fit_detector(
    built: Any,
    recipe: Any,
    data: RunData,
    run_dir: Path,
    *,
    device: Any,
    evaluator: Evaluator,
    progress: ProgressFn | None = None,
    preset: str | None = None,
) -> DetectorFit:
    """``det.fit(train, val, config)``; ``config`` gives the recipe (and the name of its
    ``preset``, ``None`` when unknown), seed, device, run folder, the dataset's evaluator (and
    its rule and parameters) and the progress callback. The detector's optional ``config()``
    (fitted settings) must be JSON-able."""
    det = built.model
    config = {
        "recipe": recipe.to_dict(),
        "preset": preset,
        "seed": recipe.seed,
        "device": str(device),
        "out_dir": str(run_dir),
        "evaluator": evaluator,
        "rule": evaluator.rule,
        "rule_params": dict(evaluator.params),
        "progress": progress,
    }
    t0 = time.perf_counter()
    tracker = PhaseTracker(progress, "train", 1, f"fitting {built.name}")
    det.fit(data.train, data.val, config)
    tracker.emit(1)
    seconds = time.perf_counter() - t0
    fitted = None
    describe = getattr(det, "config", None)
    if callable(describe):
        try:
            fitted = json.loads(json.dumps(describe()))
        except (TypeError, ValueError) as err:
            raise CmbbenchError(
                f"model {built.name!r}: config() must return a JSON-able dict ({err})"
            ) from None
    return DetectorFit(det, seconds, fitted)


def _relative(path: Path | None, base: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)
