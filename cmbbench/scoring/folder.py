"""Score a folder of NIfTI predictions against a folder of NIfTI ground truths.

Files are paired by **case id** (:func:`case_id_from_filename`):

1. the NIfTI suffix (``.nii.gz`` / ``.nii``) is removed;
2. a BIDS-style name (VALDO: ``sub-101_space-T2S_CMB``) becomes its subject entity, plus the
   session entity when present: ``sub-101``, ``sub-101_ses-2``;
3. otherwise a trailing nnU-Net channel suffix ``_NNNN`` (4 digits) is removed:
   ``case_0000`` -> ``case``;
4. anything else is the case id as is.

Files are taken from the folder itself; when it holds no NIfTI file, from its sub-folders
one level down (a VALDO root ``sub-XXX/sub-XXX_space-T2S_CMB.nii.gz``). When several files of
one folder map to one case id and exactly one of them has the ``_CMB`` label suffix, that
one is used; otherwise it is an error naming the files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmbbench.errors import InputError
from cmbbench.io import case_id_from_filename, load_nifti, strip_nifti_suffix
from cmbbench.progress import PhaseTracker, ProgressFn
from cmbbench.scoring.case import GtKind, PredKind, check_affines
from cmbbench.scoring.evaluator import Evaluator
from cmbbench.scoring.records import CaseResult, ScoreReport

log = logging.getLogger(__name__)

_LABEL_SUFFIX = "_CMB"


def index_folder(folder: str | os.PathLike[str], what: str) -> dict[str, Path]:
    """``{case id: file}`` for the NIfTI files of ``folder`` (see the module docstring)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{what} folder not found or not a folder", path=str(root))
    files = sorted(p for p in root.iterdir() if p.is_file() and strip_nifti_suffix(p.name))
    if not files:
        files = sorted(
            p
            for sub in root.iterdir()
            if sub.is_dir()
            for p in sub.iterdir()
            if p.is_file() and strip_nifti_suffix(p.name)
        )
    groups: dict[str, list[Path]] = {}
    for p in files:
        cid = case_id_from_filename(p.name)
        assert cid is not None
        groups.setdefault(cid, []).append(p)
    out: dict[str, Path] = {}
    for cid, paths in groups.items():
        if len(paths) == 1:
            out[cid] = paths[0]
            continue
        labels = [p for p in paths if strip_nifti_suffix(p.name).endswith(_LABEL_SUFFIX)]  # type: ignore[union-attr]
        if len(labels) == 1:
            out[cid] = labels[0]
            continue
        raise InputError(
            f"several {what} files map to this case id: {', '.join(p.name for p in paths)}",
            case=cid,
            path=str(root),
        )
    return out


def _n_cores() -> int:
    """CPU cores available to this process."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _score_one(job: tuple[str, str | None, str, dict[str, Any]]) -> CaseResult:
    """Load one (prediction, ground truth) pair and score it (runs in a worker process)."""
    case_id, pred_path, gt_path, kwargs = job
    gt, gt_aff, _ = load_nifti(gt_path, case=case_id)
    if pred_path is None:  # missing="empty"
        dtype = np.float32 if kwargs.get("pred_kind") == "probability" else bool
        pred: np.ndarray = np.zeros(gt.shape, dtype=dtype)
    else:
        pred, pred_aff, _ = load_nifti(pred_path, case=case_id)
        if pred.shape != gt.shape:
            raise InputError(
                f"shape mismatch: prediction {tuple(pred.shape)} ({Path(pred_path).name}), "
                f"ground truth {tuple(gt.shape)} ({Path(gt_path).name})",
                case=case_id,
            )
        check_affines(pred_aff, gt_aff, case_id)
    evaluator: Evaluator = kwargs.pop("evaluator")
    return evaluator.evaluate_arrays(pred, gt, affine=gt_aff, case_id=case_id, **kwargs)


def pair_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    missing: Literal["error", "empty"] = "error",
) -> tuple[list[tuple[str, Path | None, Path]], list[str]]:
    """Pair prediction and ground-truth files by case id.

    Returns ``([(case id, prediction file or None, ground-truth file), ...] sorted by case
    id, [prediction case ids without ground truth])``. Raises :class:`InputError` for an
    empty ground-truth folder, no pairs at all, or (``missing="error"``) a ground-truth case
    without prediction.
    """
    if missing not in ("error", "empty"):
        raise InputError(f"missing must be 'error' or 'empty'; received {missing!r}")
    gts = index_folder(gt_dir, "ground-truth")
    preds = index_folder(pred_dir, "prediction")
    if not gts:
        raise InputError("no NIfTI ground-truth files found (empty test set)", path=str(gt_dir))
    lacking = sorted(set(gts) - set(preds))
    if lacking and missing == "error":
        more = (
            f" (and {len(lacking) - 1} more: {', '.join(lacking[1:6])})" if len(lacking) > 1 else ""
        )
        raise InputError(
            f"no prediction for this ground-truth case in {pred_dir}{more}; "
            "pass --missing empty / missing='empty' to score missing predictions as empty",
            case=lacking[0],
        )
    if len(lacking) == len(gts):
        raise InputError(
            f"no prediction file matches any ground-truth case (ground truth in {gt_dir})",
            path=str(pred_dir),
        )
    unmatched = sorted(set(preds) - set(gts))
    jobs = [(cid, preds.get(cid), gts[cid]) for cid in sorted(gts)]
    return jobs, unmatched


def score_folder(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    evaluator: Evaluator | None = None,
    rule: str = "overlap",
    threshold: float = 0.5,
    connectivity: int = 26,
    min_overlap_voxels: int = 1,
    max_distance_mm: float | None = None,
    gt_kind: GtKind | None = None,
    pred_kind: PredKind = "auto",
    missing: Literal["error", "empty"] = "error",
    workers: int | None = None,
    progress: ProgressFn | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    case_meta: Callable[[str], Mapping[str, Any]] | None = None,
) -> ScoreReport:
    """Score every ground-truth case of ``gt_dir`` against ``pred_dir`` (NIfTI files).

    ``evaluator`` (e.g. a dataset's, :attr:`DatasetInfo.evaluator`) decides the rule, its
    parameters and the label kind; without one, an evaluator is built from ``rule``,
    ``connectivity``, ``min_overlap_voxels``, ``max_distance_mm`` (mm) and ``gt_kind``
    (default ``"auto"``). ``gt_kind`` given with an evaluator overrides its label kind.
    ``threshold`` binarises probability maps (``>=``).

    Pairing, loading (``np.asarray(dataobj)``), shape and affine checks, then the evaluator
    per case (:meth:`~cmbbench.scoring.evaluator.Evaluator.evaluate_arrays`), in parallel over ``workers``
    processes (default: all cores; ``1`` scores in this process). Results are in case-id
    order. ``progress`` receives a ``"score"`` phase (cases done; metric ``case``: the last one). Aggregates come from
    :func:`cmbbench.scoring.metrics.aggregate` (``n_bootstrap`` case resamples, ``seed``).
    ``case_meta(case_id)`` supplies per-case metadata (cohort, protocol, ...).
    A prediction without ground truth is logged as a warning and listed in
    ``report.info["unmatched_predictions"]``. Any bad case raises :class:`InputError`
    naming it; nothing is scored half-way.
    """
    from cmbbench import __version__
    from cmbbench.scoring.metrics import aggregate

    pairs, unmatched = pair_folders(pred_dir, gt_dir, missing=missing)
    for cid in unmatched:
        log.warning("prediction %r has no ground truth; not scored", cid)
    if evaluator is None:
        evaluator = Evaluator(
            rule,
            {
                "connectivity": connectivity,
                "min_overlap_voxels": min_overlap_voxels,
                "max_distance_mm": max_distance_mm,
            },
        )
        gt_kind = gt_kind or "auto"
    kwargs: dict[str, Any] = {
        "evaluator": evaluator,
        "threshold": threshold,
        "gt_kind": evaluator.gt_kind if gt_kind is None else gt_kind,
        "pred_kind": pred_kind,
    }
    jobs = []
    for cid, pp, gp in pairs:
        kw = dict(kwargs)
        if case_meta is not None:
            kw["meta"] = dict(case_meta(cid))
        jobs.append((cid, None if pp is None else str(pp), str(gp), kw))
    n_workers = max(1, min(workers or _n_cores(), len(jobs)))
    tracker = PhaseTracker(progress, "score", len(jobs), "scoring")
    results: dict[str, CaseResult] = {}
    if n_workers == 1:
        for job in jobs:
            results[job[0]] = _score_one(job)
            tracker.emit(len(results), case=job[0])
    else:
        with ProcessPoolExecutor(max_workers=n_workers) as pool:
            futures = {pool.submit(_score_one, job): job[0] for job in jobs}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in sorted(done, key=lambda f: futures[f]):
                    err = fut.exception()
                    if err is not None:
                        for other in pending:
                            other.cancel()
                        raise err
                    results[futures[fut]] = fut.result()
                    tracker.emit(len(results), case=futures[fut])
    cases = [results[cid] for cid, _, _ in pairs]
    metrics = aggregate(cases, n_bootstrap=n_bootstrap, seed=seed)
    info: dict[str, Any] = {
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "unmatched_predictions": unmatched,
        "missing_predictions_scored_empty": [cid for cid, pp, _ in pairs if pp is None],
        "missing": missing,
    }
    return ScoreReport(
        cases=cases,
        metrics=metrics,
        rule=evaluator.rule,
        params=dict(cases[0].params),
        info=info,
        cmbbench_version=__version__,
    )
