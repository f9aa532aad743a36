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

A run with several input channels (``dataset.channels`` in its record, e.g. T2S, T1, T2)
reads each case's channels from files named by ``channel_suffix``: nnU-Net's
``<case>_0000.nii.gz`` (the main channel), ``<case>_0001.nii.gz``, ... in the recorded
channel order by default, or e.g. ``"_{name}"`` for ``<case>_T2S.nii.gz``,
``<case>_T1.nii.gz``. Every channel of a case must exist and share its shape and affine;
the output is ``out_dir/<case>.nii.gz``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmbbench.cases import Case, CaseData
from cmbbench.engine.predictor import record_channels, run_predictor
from cmbbench.engine.record import load_run_record
from cmbbench.errors import CmbbenchError, InputError
from cmbbench.io import (
    NIFTI_SUFFIXES,
    case_id_from_filename,
    load_nifti,
    save_nifti,
    strip_nifti_suffix,
)
from cmbbench.progress import PhaseTracker, ProgressFn

logger = logging.getLogger(__name__)

#: nnU-Net's channel naming: ``<case>_0000.nii.gz`` (channel 0), ``<case>_0001.nii.gz``, ...
DEFAULT_CHANNEL_SUFFIX = "_{index:04d}"

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
    channel_suffix: str = DEFAULT_CHANNEL_SUFFIX,
) -> list[Path]:
    """Predict every NIfTI image in ``data_dir`` with the model of the run in ``model_dir``
    (a network's best checkpoint, or a detector's fitted settings); writes
    ``out_dir/<name>.nii.gz`` (float32, the input's affine) and returns the written paths in
    input order.

    ``output="prob"`` writes the raw probability map; ``"postprocessed"`` zeroes every voxel
    outside the components kept by the run's tuned post-processing (threshold, minimum size;
    for a detector: its own operating threshold, ``Prediction.meta["threshold"]`` or 0.5).
    ``channel_suffix``: for a run with several input channels, the file-name suffix of
    channel ``index`` (0 = main) named ``name`` (module docstring); unused otherwise.
    """
    if output not in ("prob", "postprocessed"):
        raise CmbbenchError(f"output must be 'prob' or 'postprocessed', got {output!r}")
    record = load_run_record(Path(model_dir))
    channels = record_channels(record)
    if channels is not None and len(channels) > 1:
        cases = channel_cases(data_dir, channels, channel_suffix)  # checked before the model
        predict_one = run_predictor(
            model_dir, device=device, postprocessed=output == "postprocessed", record=record
        )
        return _predict_cases(predict_one, cases, Path(out_dir), progress)
    predict_one = run_predictor(
        model_dir, device=device, postprocessed=output == "postprocessed", record=record
    )
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


def channel_file_suffix(template: str, index: int, name: str) -> str:
    """The file-name suffix of channel ``index`` (0 = main) called ``name``:
    ``template.format(index=index, name=name)``, e.g. ``"_{index:04d}"`` -> ``"_0001"``."""
    try:
        return template.format(index=index, name=name)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(
            f"channel suffix {template!r} must use {{index}} and/or {{name}} ({err})"
        ) from None


def channel_cases(
    data_dir: str | os.PathLike[str],
    channels: list[str],
    template: str = DEFAULT_CHANNEL_SUFFIX,
) -> list[Case]:
    """Unlabelled multi-channel cases from a folder: every ``<case><suffix 0>.nii[.gz]`` is a
    case (main channel ``channels[0]``) whose channel ``i`` is ``<case><suffix i>.nii[.gz]``
    (:func:`channel_file_suffix`), loaded lazily like a dataset's extras (NaNs of an extra
    channel become 0, left out of its normalisation). A missing channel file is an
    :class:`InputError` naming the case and the file looked for; channels of another shape
    or affine, one naming the case."""
    from cmbbench.datasets.common import nifti_case

    d = Path(data_dir)
    files = list_nifti(d)
    suffixes = [channel_file_suffix(template, i, n) for i, n in enumerate(channels)]
    if len(set(suffixes)) != len(suffixes):
        raise InputError(
            f"channel suffix {template!r} gives the same file name to several channels "
            f"({', '.join(suffixes)}); use {{index}} or {{name}}"
        )
    cases = []
    for path in files:
        stem = strip_nifti_suffix(path.name) or path.name
        if not stem.endswith(suffixes[0]) or len(stem) == len(suffixes[0]):
            continue
        case_id = stem[: len(stem) - len(suffixes[0])]
        ext = path.name[len(stem) :]
        extras = {}
        for name, suffix in zip(channels[1:], suffixes[1:], strict=True):
            found = [d / f"{case_id}{suffix}{e}" for e in NIFTI_SUFFIXES]
            hit = next((p for p in found if p.is_file()), None)
            if hit is None:
                raise InputError(
                    f"channel {name!r} missing: expected {case_id}{suffix}{ext} next to "
                    f"{path.name}",
                    case=case_id,
                    path=str(d / f"{case_id}{suffix}{ext}"),
                )
            extras[name] = hit
        cases.append(nifti_case(case_id, path, None, extras=extras, meta={"channels": channels}))
    if not cases:
        raise InputError(
            f"no image named <case>{suffixes[0]}.nii.gz (channel 0, {channels[0]}) in this "
            f"folder; the run's channels {', '.join(channels)} are read from "
            + ", ".join(f"<case>{s}.nii.gz" for s in suffixes),
            path=str(d),
        )
    return cases


def _predict_cases(
    predict_one: Any, cases: list[Case], out: Path, progress: ProgressFn | None
) -> list[Path]:
    """Predict ``cases`` and write ``out/<case>.nii.gz`` (float32, each case's affine)."""
    tracker = PhaseTracker(progress, "infer", len(cases), f"predicting {len(cases)} cases")
    written: list[Path] = []
    for i, case in enumerate(cases):
        t0 = time.perf_counter()
        pred = predict_one(case)
        if pred.scores is not None:
            raise CmbbenchError(
                f"case {case.case_id!r}: the model predicts points, which cannot be written as "
                "a NIfTI map"
            )
        logger.info("%s: %.1f s", case.case_id, time.perf_counter() - t0)
        written.append(
            save_nifti(
                out / f"{case.case_id}.nii.gz", np.asarray(pred.array, np.float32), case.affine
            )
        )
        case.release()
        tracker.emit(i + 1)
    return written
