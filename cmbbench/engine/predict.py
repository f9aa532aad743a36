"""``predict_folder``: run a finished run's model on a folder of NIfTI images.

Each input ``<name>.nii[.gz]`` gives ``out_dir/<name>.nii.gz``: a float32 CMB probability map
in the input's own voxel grid and world space (same shape, same affine), so the folder can
be scored by ``cmbbench score`` or any external tool. For a network, the model, its recipe
(normalisation, inference window, overlap) and its tuned post-processing are read from the
run's record, the weights from its best checkpoint. A detector is rebuilt and given its
fitted settings back (``training.fitted`` in the record) through its optional
``load_config(fitted)`` method (see :class:`cmbbench.models.detector.Detector`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from cmbbench.engine.progress import PhaseTracker, ProgressFn
from cmbbench.engine.record import load_run_record
from cmbbench.errors import CmbbenchError, InputError, UnknownNameError
from cmbbench.io import NIFTI_SUFFIXES, load_nifti, save_nifti, strip_nifti_suffix
from cmbbench.models.detector import divisor_triple

logger = logging.getLogger(__name__)

OutputKind = Literal["prob", "postprocessed"]


def list_nifti(folder: str | os.PathLike[str]) -> list[Path]:
    """The NIfTI files directly inside ``folder``, sorted by name."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError("not a folder", path=str(d))
    files = sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise InputError(
            f"no NIfTI images ({', '.join(NIFTI_SUFFIXES)}) in this folder", path=str(d)
        )
    return files


def predict_folder(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    output: OutputKind = "prob",
    progress: ProgressFn | None = None,
) -> list[Path]:
    """Predict every NIfTI image in ``data_dir`` with the model of the run in ``model_dir``
    (a network's best checkpoint, or a detector's fitted settings); writes
    ``out_dir/<name>.nii.gz`` (float32, the input's affine) and returns the written paths in
    input order.

    ``output="prob"`` writes the raw probability map; ``"postprocessed"`` zeroes every voxel
    outside the components kept by the run's tuned post-processing (threshold, minimum size;
    for a detector: its own operating threshold, ``Prediction.meta["threshold"]`` or 0.5).
    """
    if output not in ("prob", "postprocessed"):
        raise CmbbenchError(f"output must be 'prob' or 'postprocessed', got {output!r}")
    run_dir = Path(model_dir)
    record = load_run_record(run_dir)
    kind = record.model.get("kind")
    if kind == "network":
        predict_one = _network_predictor(run_dir, record, device, output)
    elif kind == "detector":
        predict_one = _detector_predictor(run_dir, record, output)
    else:
        raise CmbbenchError(f"run {run_dir}: unknown model kind {kind!r} in its record")

    files = list_nifti(data_dir)
    out = Path(out_dir)
    tracker = PhaseTracker(progress, "infer", len(files), f"predicting {len(files)} images")
    written: list[Path] = []
    for i, path in enumerate(files):
        case_id = strip_nifti_suffix(path.name) or path.name
        image, affine, _header = load_nifti(path, case=case_id)
        t0 = time.perf_counter()
        prob = predict_one(case_id, np.asarray(image, np.float32), affine)
        logger.info("%s: %.1f s", case_id, time.perf_counter() - t0)
        written.append(save_nifti(out / f"{case_id}.nii.gz", prob.astype(np.float32), affine))
        tracker.emit(i + 1)
    return written


# (case id, image float32 (X, Y, Z), affine) -> the map to write, float32 (X, Y, Z)
_Predictor = Callable[[str, np.ndarray, np.ndarray], np.ndarray]


def _build(record, run_dir: Path):
    from cmbbench.models.registry import build_model

    name = str(record.model["name"])
    try:
        return build_model(name, **dict(record.model.get("kwargs") or {}))
    except UnknownNameError as err:
        raise CmbbenchError(
            f"{err}. The run in {run_dir} used model {name!r}; load the plug-in that registers "
            "it (--plugin MODULE) before predicting"
        ) from None


def _network_predictor(run_dir: Path, record, device: str, output: OutputKind) -> _Predictor:
    import torch

    from cmbbench.engine.checkpoint import load_checkpoint
    from cmbbench.engine.evaluate import predict_probability
    from cmbbench.engine.postprocess import PostprocessParams, clean_probability
    from cmbbench.engine.recipe import Recipe
    from cmbbench.engine.run import normalizer, resolve_device

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
    normalize = normalizer(recipe.normalize)
    pp = None
    if output == "postprocessed":
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

    def predict_one(case_id: str, image: np.ndarray, affine: np.ndarray):
        norm = np.asarray(normalize(image), np.float32)
        with torch.no_grad():
            prob = predict_probability(net, norm, recipe, device=dev, divisor=divisor, name=name)
        if pp is None:
            return prob
        return clean_probability(prob, pp.threshold, pp.min_size, pp.connectivity)

    return predict_one


def _detector_predictor(run_dir: Path, record, output: OutputKind) -> _Predictor:
    from cmbbench.cases import Case, CaseData
    from cmbbench.engine.postprocess import clean_probability
    from cmbbench.models.detector import Prediction

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

    def predict_one(case_id: str, image: np.ndarray, affine: np.ndarray):
        case = Case(case_id, affine, tuple(image.shape), "none", lambda: CaseData(image))
        pred = det.predict(case)
        if not isinstance(pred, Prediction) or pred.kind == "points":
            raise CmbbenchError(
                f"detector {built.name!r}, image {case_id!r}: predict() must return a Prediction "
                "with a probability map or mask to be written as NIfTI"
            )
        prob = np.asarray(pred.array, np.float32)
        if prob.shape != image.shape:
            raise CmbbenchError(
                f"detector {built.name!r}, image {case_id!r}: prediction shape {prob.shape} "
                f"does not match the image {image.shape}"
            )
        if output != "postprocessed":
            return prob
        return clean_probability(prob, float((pred.meta or {}).get("threshold", 0.5)), 1)

    return predict_one
