"""NIfTI input/output (nibabel) with clear errors and atomic writes.

Arrays come back in the file's own voxel order (no reorientation); see :mod:`cmbbench.cases`.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from cmbbench.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_nifti_suffix(name: str) -> str | None:
    """``'sub-101.nii.gz' -> 'sub-101'``; ``None`` when ``name`` is not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def load_nifti(
    path: str | os.PathLike[str], *, case: str | None = None, allow_4d: bool = False
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI file; returns ``(array, affine (4, 4) float64, header)``.

    The array keeps the on-disk dtype where possible (``np.asarray(img.dataobj)``; scaled
    data becomes float). Raises :class:`InputError` naming the file for a missing,
    unreadable, truncated or (unless ``allow_4d``) non-3-D image; a trailing singleton 4th
    dimension is squeezed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", case=case, path=str(path))
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise InputError(
            f"unreadable or truncated NIfTI ({err})", case=case, path=str(path)
        ) from None
    except Exception as err:  # nibabel raises its own ImageFileError and friends
        raise InputError(
            f"unreadable NIfTI ({type(err).__name__}: {err})", case=case, path=str(path)
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 and not (allow_4d and data.ndim == 4):
        raise InputError(
            f"expected a 3-D image, got {data.ndim}-D with shape {tuple(data.shape)}",
            case=case,
            path=str(path),
        )
    return data, np.asarray(img.affine, dtype=np.float64), img.header


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the array axes (column norms of the affine's 3×3 part)."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def save_nifti(
    path: str | os.PathLike[str],
    array: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write ``array`` with ``affine`` to ``path`` atomically (temp file in the same folder, then rename).

    A crash never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64), header=header)
    if header is None:
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
