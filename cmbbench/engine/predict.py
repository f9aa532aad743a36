"""Run a finished run's model on new data: a folder of images, or a whole dataset scored.

:func:`predict_folder`: each input ``<name>.nii[.gz]`` gives ``out_dir/<name>.nii.gz``, a
float32 CMB probability map in the input's own voxel grid and world space (same shape, same
affine), so the folder can be scored by ``cmbbench score`` or any external tool. For a
network, the model, its recipe (normalisation, inference window, overlap) and its tuned
post-processing are read from the run's record, the weights from its best checkpoint. A detector is rebuilt and given its
fitted settings back (``training.fitted`` in the record) through its optional
``load_config(fitted)`` method (see :class:`cmbbench.models.detector.Detector`).

:func:`evaluate_run`: the same model, with the run's tuned post-processing, on any split of
any dataset, scored with that dataset's rule: how a model trained on one set does on another
(more subjects of the synthetic set, or real data such as VALDO).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cmbbench.cases import Case, CaseData
from cmbbench.engine.progress import PhaseTracker, ProgressFn
from cmbbench.engine.record import RunRecord, load_run_record
from cmbbench.errors import CmbbenchError, InputError, UnknownNameError
from cmbbench.io import NIFTI_SUFFIXES, load_nifti, save_nifti, strip_nifti_suffix
from cmbbench.models.detector import divisor_triple

if TYPE_CHECKING:
    from cmbbench.scoring.records import ScoreReport

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
    predict_one = run_predictor(model_dir, device=device, postprocessed=output == "postprocessed")
    files = list_nifti(data_dir)
    out = Path(out_dir)
    tracker = PhaseTracker(progress, "infer", len(files), f"predicting {len(files)} images")
    written: list[Path] = []
    for i, path in enumerate(files):
        case_id = strip_nifti_suffix(path.name) or path.name
        image, affine, _header = load_nifti(path, case=case_id)
        image = np.asarray(image, np.float32)
        case = Case(case_id, affine, tuple(image.shape), "none", lambda im=image: CaseData(im))
        t0 = time.perf_counter()
        prob, _threshold, scores = predict_one(case)
        if scores is not None:
            raise CmbbenchError(
                f"image {case_id!r}: the model predicts points, which cannot be written as a "
                "NIfTI map"
            )
        logger.info("%s: %.1f s", case_id, time.perf_counter() - t0)
        written.append(save_nifti(out / f"{case_id}.nii.gz", prob.astype(np.float32), affine))
        tracker.emit(i + 1)
    return written


def evaluate_run(
    model_dir: str | os.PathLike[str],
    dataset: str,
    *,
    root: str | os.PathLike[str] | None = None,
    split: str | None = "test",
    dataset_options: dict[str, Any] | None = None,
    device: str = "auto",
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> ScoreReport:
    """Score the model of a finished run on ``split`` of ``dataset`` (``None``: every case).

    Each case is predicted exactly as the run predicted its own test split (same weights,
    recipe, tuned post-processing, or the detector's fitted settings) and scored with the
    dataset's default rule, ignore regions and label kind; the report (per-case results and
    aggregate metrics with ``n_bootstrap`` case-bootstrap CIs, seed ``seed``) can be saved
    with :func:`cmbbench.scoring.records.save_results` and compared with ``cmbbench compare``.
    ``dataset_options`` go to ``load_dataset``; on the run's own dataset they start from the
    options (and root) the run was trained with, so ``{"seed": 1, "n": 40}`` gives 40
    synthetic subjects of the run's preset that it never saw.
    """
    from cmbbench import __version__
    from cmbbench.datasets.registry import dataset_info, load_dataset
    from cmbbench.engine.distributed import DistContext
    from cmbbench.engine.run import generation_progress, resolve_device, score_cases
    from cmbbench.scoring.metrics import aggregate
    from cmbbench.scoring.records import ScoreReport

    run_dir = Path(model_dir)
    record = load_run_record(run_dir)
    info = dataset_info(dataset)
    predict_one = run_predictor(run_dir, device=device, postprocessed=True, record=record)
    root_s = None if root is None else str(root)
    options = dict(dataset_options or {})
    trained_on = record.dataset or {}
    if trained_on.get("name") == dataset:  # the run's own dataset: its options, then the user's
        options = {**dict(trained_on.get("options") or {}), **options}
        if root_s is None and trained_on.get("root"):
            root_s = str(trained_on["root"])
    load_options = dict(options)
    if dataset == "synthetic":  # subjects not in the cache yet are generated: show it
        load_options.setdefault("progress", generation_progress(progress))
    cases = list(load_dataset(dataset, root=root_s, split=split, **load_options))
    if not cases:
        raise CmbbenchError(f"dataset {dataset!r}: split {split!r} holds no case")
    rule, rule_params = info.default_rule, dict(info.rule_params)
    results, infer_s, _score_s = score_cases(
        predict_one,
        cases,
        ctx=DistContext(device=resolve_device(device)),
        rule=rule,
        rule_params=rule_params,
        progress=progress,
    )
    return ScoreReport(
        cases=results,
        metrics=aggregate(results, n_bootstrap=n_bootstrap, seed=seed),
        rule=rule,
        params=dict(results[0].params),
        info={
            "run": run_dir.name,
            "model": record.model.get("name"),
            "trained_on": record.dataset,
            "dataset": {
                "name": info.name,
                "split": split,
                "options": options,
                "root": root_s,
                "n_cases": len(cases),
            },
            "postprocess": record.postprocess,
            "inference_seconds_per_case": infer_s / len(cases),
        },
        cmbbench_version=__version__,
    )


# a case -> (map (X, Y, Z) float32, or world-mm points (N, 3); operating threshold; point scores)
Predictor = Callable[[Case], tuple[np.ndarray, float, np.ndarray | None]]


def run_predictor(
    model_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    postprocessed: bool = True,
    record: RunRecord | None = None,
) -> Predictor:
    """The model of a finished run as a function of a :class:`~cmbbench.cases.Case`.

    It returns what the run's own scoring used: the probability map (post-processed with the
    run's tuned threshold and minimum size when ``postprocessed``), the operating threshold,
    and point scores for a points detector (else ``None``).
    """
    run_dir = Path(model_dir)
    record = record or load_run_record(run_dir)
    kind = record.model.get("kind")
    if kind == "network":
        return _network_predictor(run_dir, record, device, postprocessed)
    if kind == "detector":
        return _detector_predictor(run_dir, record, postprocessed)
    raise CmbbenchError(f"run {run_dir}: unknown model kind {kind!r} in its record")


def _build(record: RunRecord, run_dir: Path):
    from cmbbench.models.registry import build_model

    name = str(record.model["name"])
    try:
        return build_model(name, **dict(record.model.get("kwargs") or {}))
    except UnknownNameError as err:
        raise CmbbenchError(
            f"{err}. The run in {run_dir} used model {name!r}; load the plug-in that registers "
            "it (--plugin MODULE) before predicting"
        ) from None


def _network_predictor(
    run_dir: Path, record: RunRecord, device: str, postprocessed: bool
) -> Predictor:
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

    def predict_one(case: Case):
        norm = np.asarray(normalize(np.asarray(case.image, np.float32)), np.float32)
        with torch.no_grad():
            prob = predict_probability(net, norm, recipe, device=dev, divisor=divisor, name=name)
        if pp is None:
            return prob, 0.5, None
        return (
            clean_probability(prob, pp.threshold, pp.min_size, pp.connectivity),
            pp.threshold,
            None,
        )

    return predict_one


def _detector_predictor(run_dir: Path, record: RunRecord, postprocessed: bool) -> Predictor:
    from cmbbench.engine.postprocess import clean_probability
    from cmbbench.engine.run import detector_output

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

    def predict_one(case: Case):
        out, threshold, scores = detector_output(det, built.name, case)
        if postprocessed and scores is None and np.issubdtype(np.asarray(out).dtype, np.floating):
            out = clean_probability(out, threshold, 1)  # the components the run's scoring counted
        return out, threshold, scores

    return predict_one
