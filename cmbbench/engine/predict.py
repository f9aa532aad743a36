"""``cmbbench predict``: run a finished run's model on a folder of images.

:func:`predict_folder`: each input ``<name>.nii[.gz]`` gives ``out_dir/<name>.nii.gz``, a
float32 CMB probability map in the input's own voxel grid and world space (same shape, same
affine), so the folder can be scored by ``cmbbench score`` or any external tool. The model
is the run's own (:func:`cmbbench.engine.predictor.run_predictor`): for a network, its
recipe (normalisation, inference window, overlap), best checkpoint and tuned
post-processing from the run's record; a detector is rebuilt and given its fitted settings
back (``training.fitted``) through its optional ``load_config(fitted)`` method (see
:class:`cmbbench.models.detector.Detector`). Scoring a whole dataset is
:func:`cmbbench.engine.evaluate.evaluate_run`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np

from cmbbench.cases import Case, CaseData
from cmbbench.engine.predictor import run_predictor
from cmbbench.errors import CmbbenchError, InputError
from cmbbench.io import NIFTI_SUFFIXES, case_id_from_filename, load_nifti, save_nifti
from cmbbench.progress import PhaseTracker, ProgressFn

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
        case_id = case_id_from_filename(path.name, "stem") or path.name
        image, affine, _header = load_nifti(path, case=case_id)
        image = np.asarray(image, np.float32)
        case = Case(case_id, affine, tuple(image.shape), "none", lambda im=image: CaseData(im))
        t0 = time.perf_counter()
        pred = predict_one(case)
        if pred.scores is not None:
            raise CmbbenchError(
                f"image {case_id!r}: the model predicts points, which cannot be written as a "
                "NIfTI map"
            )
        logger.info("%s: %.1f s", case_id, time.perf_counter() - t0)
        written.append(
            save_nifti(out / f"{case_id}.nii.gz", np.asarray(pred.array, np.float32), affine)
        )
        tracker.emit(i + 1)
    return written
