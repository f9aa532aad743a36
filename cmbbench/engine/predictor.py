"""One predictor for every path that turns a case into a scored prediction.

A :data:`Predictor` maps a :class:`~cmbbench.cases.Case` to a :class:`CasePrediction` (a map
in the case's grid or world-mm points, the operating threshold, point scores). The same
builders serve ``cmbbench run`` (the test split), ``cmbbench predict`` (a folder of images)
and ``cmbbench evaluate`` (another dataset): :func:`network_predictor` (normalise, sliding
window, optional tuned post-processing), :func:`detector_predictor` (a fitted detector's
``predict``) and :func:`run_predictor` (either, rebuilt from a finished run's record).
:func:`predict_and_score` runs a predictor over cases and scores each with the dataset's
evaluator, sharded over ranks under torchrun.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmbbench.cases import Case
from cmbbench.engine.record import RunRecord, load_run_record
from cmbbench.errors import CmbbenchError, UnknownNameError
from cmbbench.models.detector import Divisor, divisor_triple
from cmbbench.progress import PhaseTracker, ProgressFn
from cmbbench.scoring.evaluator import Evaluator
from cmbbench.scoring.records import CaseResult


@dataclass(frozen=True)
class CasePrediction:
    """A model's output for one case: ``array`` is a float32/bool map (X, Y, Z) in the case's
    grid or world-mm points (N, 3); ``threshold`` the operating threshold that binarises a
    map; ``scores`` one score per point (points only, else ``None``); ``raw``: the model's
    probability map before its operating point (networks: before post-processing), from
    which every candidate is taken for the full FROC (``None``: no candidates)."""

    array: np.ndarray
    threshold: float = 0.5
    scores: np.ndarray | None = None
    raw: np.ndarray | None = None


Predictor = Callable[[Case], CasePrediction]


def network_predictor(
    net: Any,
    recipe: Any,
    *,
    device: Any,
    divisor: Divisor,
    name: str,
    postprocess: Any = None,
    extra_channels: Sequence[str] = (),
) -> Predictor:
    """A trained network as a predictor: per-image normalisation (``recipe.normalize``; with
    ``extra_channels``, each of the case's channels on its own, stacked (C, X, Y, Z) after
    the main image in that order, :func:`cmbbench.engine.channels.normalized_channels`),
    sliding-window inference, then, when ``postprocess`` (a
    :class:`~cmbbench.engine.postprocess.PostprocessParams`) is given, the tuned threshold and
    minimum size (the map keeps only the kept components); without it the raw map at 0.5."""
    import torch

    from cmbbench.engine.channels import normalized_channels
    from cmbbench.engine.inference import predict_probability
    from cmbbench.engine.normalize import normalizer
    from cmbbench.engine.postprocess import clean_probability

    normalize = normalizer(recipe.normalize)

    def predict_one(case: Case) -> CasePrediction:
        if extra_channels:
            image = normalized_channels(case, normalize, extra_channels)
        else:
            image = np.asarray(normalize(np.asarray(case.image, np.float32)), np.float32)
        with torch.no_grad():
            prob = predict_probability(
                net, image, recipe, device=device, divisor=divisor, name=name
            )
        if postprocess is None:
            return CasePrediction(prob, 0.5, raw=prob)
        pp = postprocess
        return CasePrediction(
            clean_probability(prob, pp.threshold, pp.min_size, pp.connectivity),
            pp.threshold,
            raw=prob,
        )

    return predict_one


def detector_output(det: Any, name: str, case: Case) -> CasePrediction:
    """``det.predict(case)`` checked and unpacked: the map (X, Y, Z) or world-mm points (N, 3),
    the operating threshold (``Prediction.meta["threshold"]``, default 0.5), point scores and
    the candidates' map (``Prediction.meta["raw"]``, default the probability map itself)."""
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
    meta = pred.meta or {}
    threshold = float(meta.get("threshold", 0.5))
    if pred.kind == "points":
        return CasePrediction(pred.array, threshold, pred.scores)
    arr = np.asarray(pred.array)
    # a probability map holds the detector's candidates below its threshold too; a detector
    # that post-processes its map gives the map before it as meta["raw"] (X, Y, Z)
    raw = arr if pred.kind == "prob" and np.issubdtype(arr.dtype, np.floating) else None
    if meta.get("raw") is not None:
        raw = np.asarray(meta["raw"], np.float32)
        if raw.shape != arr.shape:
            raise CmbbenchError(
                f"model {name!r}, case {case.case_id!r}: meta['raw'] shape {raw.shape} does "
                f"not match the prediction {arr.shape}"
            )
    return CasePrediction(arr, threshold, raw=raw)


def detector_predictor(det: Any, name: str, *, clean: bool = False) -> Predictor:
    """A fitted detector as a predictor. ``clean``: a probability map keeps only the voxels
    of its components at the detector's own threshold (exactly what scoring counts)."""
    from cmbbench.engine.postprocess import clean_probability

    def predict_one(case: Case) -> CasePrediction:
        out = detector_output(det, name, case)
        arr = np.asarray(out.array)
        if clean and out.scores is None and np.issubdtype(arr.dtype, np.floating):
            cleaned = clean_probability(arr, out.threshold, 1)
            return CasePrediction(cleaned, out.threshold, raw=out.raw)
        return out

    return predict_one


@dataclass(frozen=True)
class ScoredCases:
    """Per-case results in case order (every rank), and the summed inference and scoring
    seconds (over ranks)."""

    results: list[CaseResult]
    inference_seconds: float
    scoring_seconds: float


def predict_and_score(
    predictor: Predictor,
    cases: Sequence[Case],
    evaluator: Evaluator,
    *,
    ctx: Any,
    progress: ProgressFn | None = None,
    phase: str = "infer",
) -> ScoredCases:
    """Predict this rank's shard of ``cases`` and score each with ``evaluator`` (at the
    prediction's own threshold); a prediction with a ``raw`` map also records every
    candidate of it (:meth:`~cmbbench.scoring.evaluator.Evaluator.candidates`) for the full
    FROC. The results of every rank are gathered in case order."""
    from cmbbench.engine.distributed import all_reduce_sum, gather_by_case, shard

    mine = shard(cases, ctx)
    tracker = PhaseTracker(progress, phase, len(mine), f"{phase} {len(cases)} cases")
    results: dict[str, CaseResult] = {}
    infer_s = score_s = 0.0
    for i, case in enumerate(mine):
        t0 = time.perf_counter()
        pred = predictor(case)
        t1 = time.perf_counter()
        result = evaluator.evaluate(pred.array, case, threshold=pred.threshold, scores=pred.scores)
        if pred.raw is not None:
            result.candidates = evaluator.candidates(
                pred.raw, case, operating=np.asarray(pred.array) >= pred.threshold
            )
        results[case.case_id] = result
        score_s += time.perf_counter() - t1
        infer_s += t1 - t0
        case.release()
        tracker.emit(i + 1)
    ordered = gather_by_case(results, [c.case_id for c in cases], ctx)
    infer_s, score_s = all_reduce_sum([infer_s, score_s], ctx)
    return ScoredCases(ordered, infer_s, score_s)


# ------------------------------------------------------------------ from a finished run
def run_predictor(
    model_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    postprocessed: bool = True,
    record: RunRecord | None = None,
) -> Predictor:
    """The model of a finished run as a predictor, exactly as the run's own scoring used it:
    a network's best checkpoint (with the run's tuned post-processing when
    ``postprocessed``), or a detector given back its fitted settings."""
    run_dir = Path(model_dir)
    record = record or load_run_record(run_dir)
    kind = record.model.get("kind")
    if kind == "network":
        return _network_from_record(run_dir, record, device, postprocessed)
    if kind == "detector":
        return _detector_from_record(run_dir, record, postprocessed)
    raise CmbbenchError(f"run {run_dir}: unknown model kind {kind!r} in its record")


def record_channels(record: RunRecord) -> list[str] | None:
    """The input channels of a finished run, in order (``dataset.channels``, else the
    dataset option ``channels``); ``None`` for a single-channel run that named none."""
    names = record.dataset.get("channels")
    if names is None:
        names = (record.dataset.get("options") or {}).get("channels")
    if names is None:
        return None
    return [names] if isinstance(names, str) else [str(n) for n in names]


def _build(record: RunRecord, run_dir: Path) -> Any:
    from cmbbench.models.registry import build_model

    name = str(record.model["name"])
    stored = record.model.get("in_channels")
    in_channels = None if stored is None else int(stored)
    try:
        return build_model(name, in_channels=in_channels, **dict(record.model.get("kwargs") or {}))
    except UnknownNameError as err:
        raise CmbbenchError(
            f"{err}. The run in {run_dir} used model {name!r}; load the plug-in that registers "
            "it (--plugin MODULE) before predicting"
        ) from None


def _network_from_record(
    run_dir: Path, record: RunRecord, device: str, postprocessed: bool
) -> Predictor:
    from cmbbench.engine.checkpoint import load_checkpoint
    from cmbbench.engine.environment import resolve_device
    from cmbbench.engine.postprocess import PostprocessParams
    from cmbbench.engine.recipe import Recipe

    built = _build(record, run_dir)
    name = built.name
    recipe = Recipe.from_dict(record.recipe)
    ckpt_rel = record.artifacts.get("best_checkpoint") or record.artifacts.get("last_checkpoint")
    if not ckpt_rel:
        raise CmbbenchError(f"run record in {run_dir} names no checkpoint")
    ckpt = run_dir / ckpt_rel
    state = load_checkpoint(ckpt)
    net = built.model
    try:
        net.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise CmbbenchError(f"checkpoint {ckpt} does not fit model {name!r} ({err})") from None
    dev = resolve_device(device)
    net.to(dev).eval()
    pp = None
    if postprocessed:
        try:
            pp = PostprocessParams(
                threshold=float(record.postprocess["threshold"]),
                min_size=int(record.postprocess["min_size"]),
                connectivity=int(record.postprocess.get("connectivity", 26)),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CmbbenchError(
                f"run record in {run_dir} has no usable post-processing ({err})"
            ) from None
    stored = record.model.get("divisor")
    divisor = divisor_triple(stored if stored else built.info.divisor, name=f"model {name!r}")
    channels = record_channels(record)
    return network_predictor(
        net,
        recipe,
        device=dev,
        divisor=divisor,
        name=name,
        postprocess=pp,
        extra_channels=tuple(channels[1:]) if channels else (),
    )


def _detector_from_record(run_dir: Path, record: RunRecord, postprocessed: bool) -> Predictor:
    built = _build(record, run_dir)
    det = built.model
    restore = getattr(det, "load_config", None)
    fitted = record.training.get("fitted")
    if not callable(restore) or fitted is None:
        raise CmbbenchError(
            f"run {run_dir}: detector {built.name!r} cannot be restored from its record "
            "(it needs config() at fit time, stored as training.fitted, and load_config(fitted))"
        )
    restore(fitted)
    return detector_predictor(det, built.name, clean=postprocessed)
