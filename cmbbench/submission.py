"""Submissions: a folder of predictions made outside cmbbench becomes a leaderboard record.

A group with outputs of its own pipeline (nnU-Net, a commercial tool, a paper's released
predictions) joins the board the way VALDO's leaderboard worked: predict the split's images
(``cmbbench data generate synthetic --split test --out TEST`` writes them for the default
set), then :func:`submit_folder` scores the predictions with the dataset's own evaluator and
writes a run record marked as a submission (``model.kind == "submission"``; no recipe, no
training time), which ``cmbbench leaderboard`` ranks beside the runs scored on the same
dataset version, split and rule.

Predictions are NIfTI files paired with the split's cases by case id (the ``"pairing"``
rule of :func:`cmbbench.io.case_id_from_filename`: ``sub-0007.nii.gz``,
``sub-0007_space-T2S_CMB.nii.gz`` and ``sub-0007_0000.nii.gz`` are all ``sub-0007``), in the
case's own grid (same shape and affine). A float map is scored at its operating threshold
(0.5 unless given) and keeps every candidate down to the candidate floor for the full FROC;
an integer or boolean mask is scored as it is.
Bad input (a missing case unless ``missing="empty"``, a shape or affine mismatch, NaN/Inf,
values outside [0, 1]) is an error naming the case; nothing is written. Torch is not needed.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmbbench import __version__
from cmbbench.engine.record import RunRecord
from cmbbench.errors import InputError
from cmbbench.progress import PhaseTracker, ProgressFn

log = logging.getLogger(__name__)

SUBMISSION_KIND = "submission"
#: the default operating threshold a submitted probability map is scored at
SUBMISSION_THRESHOLD = 0.5


def submit_folder(
    pred_dir: str | os.PathLike[str],
    dataset: str,
    *,
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "test",
    dataset_options: dict[str, Any] | None = None,
    description: str = "",
    url: str = "",
    missing: Literal["error", "empty"] = "error",
    threshold: float = SUBMISSION_THRESHOLD,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> RunRecord:
    """Score the predictions in ``pred_dir`` on ``split`` of ``dataset`` (its evaluator) and
    return a submission record (save it with :meth:`RunRecord.save`). ``name``: the row's
    name on the board; ``description``/``url``: shown with it. ``threshold``: the operating
    threshold that binarises probability maps (default 0.5, as in VALDO; recorded).
    ``missing="empty"`` scores a case without a prediction as empty (listed in the record)
    instead of failing."""
    import time

    from cmbbench.datasets.registry import dataset_info, load_dataset
    from cmbbench.scoring.folder import index_folder
    from cmbbench.scoring.metrics import aggregate

    if not name or not name.strip():
        raise InputError("a submission needs a --name (the row's name on the leaderboard)")
    if missing not in ("error", "empty"):
        raise InputError(f"missing must be 'error' or 'empty'; received {missing!r}")
    t0 = time.perf_counter()
    info = dataset_info(dataset)
    options = dict(dataset_options or {})
    root_s = None if root is None else str(root)
    ds = load_dataset(dataset, root=root_s, split=split, progress=progress or False, **options)
    cases = list(ds)
    if not cases:
        raise InputError(f"dataset {dataset!r}: split {split!r} holds no case")
    preds = index_folder(pred_dir, "prediction")
    ids = {c.case_id for c in cases}
    lacking = [c.case_id for c in cases if c.case_id not in preds]
    if lacking and missing == "error":
        more = f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else ""
        raise InputError(
            f"no prediction for this {split} case in {pred_dir}{more}; pass --missing empty "
            "to score missing predictions as empty",
            case=lacking[0],
        )
    extra = sorted(set(preds) - ids)
    for cid in extra:
        log.warning("prediction %r is not a case of %s %s; not scored", cid, dataset, split)
    evaluator = info.evaluator
    tracker = PhaseTracker(progress, "score", len(cases), f"scoring {len(cases)} cases")
    results = []
    for i, case in enumerate(cases):
        pred = _read_prediction(preds.get(case.case_id), case)
        res = evaluator.evaluate(pred, case, threshold=threshold)
        if pred.dtype.kind == "f":  # a map (a 0/1 float mask gives candidates scored 1)
            res.candidates = evaluator.candidates(pred, case, operating=pred >= threshold)
        results.append(res)
        case.release()
        tracker.emit(i + 1)
    score_s = time.perf_counter() - t0
    metrics = aggregate(results, n_bootstrap=n_bootstrap, seed=seed)
    return RunRecord(
        run_id=f"submission-{_slug(name)}",
        model={
            "name": name.strip(),
            "kind": SUBMISSION_KIND,
            "description": description,
            "url": url,
            "source": f"submission: {Path(pred_dir).resolve()}",
            "kwargs": {},
            "recipe_overrides": {},
        },
        recipe={},
        recipe_preset=SUBMISSION_KIND,
        recipe_sources={},
        dataset={
            "name": info.name,
            "version": ds.version,
            "split": split,
            "options": options,
            "root": root_s,
            "n_test": len(cases),
        },
        seed=int(seed),
        rule=evaluator.rule,
        params=dict(results[0].params),
        postprocess={
            "applied": False,
            "threshold": float(threshold),
            "note": f"external submission: maps scored as submitted, at threshold {threshold:g}",
        },
        training={},
        cases=results,
        metrics=metrics,
        environment={"device": "external"},
        hardware={"label": "external submission", "class": SUBMISSION_KIND},
        timings={"scoring_seconds": score_s},
        artifacts={
            "predictions": str(Path(pred_dir).resolve()),
            "missing_predictions_scored_empty": lacking,
            "unmatched_predictions": extra,
        },
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        cmbbench_version=__version__,
    )


def _read_prediction(path: Path | None, case: Any) -> np.ndarray:
    """The prediction of ``case`` from ``path`` (``None``: an empty map), checked against the
    case's grid (shape and affine)."""
    from cmbbench.io import load_nifti
    from cmbbench.scoring.case import check_affines

    if path is None:
        return np.zeros(tuple(case.shape), dtype=bool)
    pred, affine, _ = load_nifti(path, case=case.case_id)
    if tuple(pred.shape) != tuple(case.shape):
        raise InputError(
            f"shape mismatch: prediction {tuple(pred.shape)} ({Path(path).name}), image "
            f"{tuple(case.shape)}",
            case=case.case_id,
        )
    check_affines(affine, case.affine, case.case_id)
    return np.asarray(pred)


def _slug(name: str) -> str:
    keep = [ch.lower() if ch.isascii() and ch.isalnum() else "-" for ch in name.strip()]
    text = "".join(keep).strip("-")
    while "--" in text:
        text = text.replace("--", "-")
    return text or "unnamed"
