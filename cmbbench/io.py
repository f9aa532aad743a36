"""File input/output: atomic writes, deterministic JSON, NIfTI (nibabel) with clear errors.

Every file cmbbench writes goes through :func:`write_atomic` (temp file in the same folder,
fsync, rename; NIfTI files without the fsync), so a crash never leaves a half-written file
under the final name; the file gets the permissions a plain ``open`` would give it (``0o666``
less the umask), so a cache filled by one user is readable by the others it is shared with. ``.nii.gz`` files are gzipped by :func:`gzip_bytes` (ISA-L). JSON is
written by :func:`dumps` (sorted keys, 2-space indent, NaN/Inf as ``null``): the same data
always gives the same bytes. NIfTI arrays come back in the file's own voxel order (no
reorientation); see :mod:`cmbbench.cases`. nibabel is imported only when a NIfTI file is
read or written, so scoring arrays in memory never loads it.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cmbbench.errors import InputError

if TYPE_CHECKING:
    import nibabel as nib

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and tuples to plain JSON types; NaN/Inf become ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    return obj


def dumps(data: Any) -> str:
    """Deterministic JSON text (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(jsonable(data), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    sync_folder: bool = False,
    fsync: bool = True,
) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically: a temp file in the same
    folder, fsync (unless ``fsync`` is false), rename; with ``sync_folder`` the folder is
    fsynced after the rename too, so successive writes reach the disk in order (checkpoints).
    Raises ``OSError`` (the temp file removed, nothing under the final name changed) on
    failure."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0o600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync_folder:
        _fsync_folder(path.parent)
    return path


def _umask() -> int:
    """This process's file-creation mask (``/proc/self/status`` on Linux; elsewhere read by
    setting and restoring it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where a folder cannot be opened: nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system that cannot sync folders keeps the rename as it is
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as deterministic JSON (:func:`dumps`) to ``path`` atomically."""
    return write_atomic(path, dumps(data))


CaseIdRule = Literal["pairing", "image", "stem"]

_BIDS = re.compile(r"^(sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)(?:_.*)?$")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def case_id_from_filename(name: str, rule: CaseIdRule = "pairing") -> str | None:
    """The case id a NIfTI file name stands for; ``None`` when it is not a NIfTI name.

    The one file-name rule of cmbbench, in three documented strengths:

    - ``"pairing"`` (pairing predictions with ground truths, ``cmbbench score``): the suffix
      removed; a BIDS-style name becomes its subject (and session) entity
      (``'sub-101_space-T2S_CMB.nii.gz' -> 'sub-101'``, ``'sub-2_ses-3_x.nii' -> 'sub-2_ses-3'``);
      otherwise a trailing nnU-Net channel ``_NNNN`` is removed (``'case_0000' -> 'case'``);
    - ``"image"`` (a dataset's image folder): the suffix and an nnU-Net channel ``_0000``
      removed (other channel numbers are other images of a case, so they stay);
    - ``"stem"`` (``cmbbench predict`` names its output like its input): the suffix only.
    """
    stem = strip_nifti_suffix(name)
    if stem is None or rule == "stem":
        return stem
    if rule == "pairing":
        m = _BIDS.match(stem)
        if m:
            return m.group(1)
    m = _CHANNEL.match(stem)
    if m and (rule == "pairing" or m.group("ch") == "0000"):
        return m.group("case")
    return stem


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
    import nibabel as nib

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
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64), header=header)
    if header is None:
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
    raw = img.to_bytes()  # the single-file NIfTI-1 stream, exactly what nib.save writes
    if path.name.endswith(".nii.gz"):
        raw = gzip_bytes(raw)
    # no fsync: a cache or prediction file lost in a crash is remade; its sidecar or record,
    # written last, is synced
    return write_atomic(path, raw, fsync=False)


def gzip_bytes(data: bytes) -> bytes:
    """``data`` as one gzip member with a fixed header (mtime 0, no file name), so equal
    data always gives equal files.

    Compressed with ISA-L (the ``isal`` package; about 8× faster than zlib at its fastest
    level, and as small, on a noisy float32 volume: 11 ms against 89 ms for a 5.5 MB
    ``quick`` image) where it is installed, else with zlib at level 1, nibabel's own choice.
    Both are standard gzip: nibabel, ``gzip`` and every NIfTI reader open either."""
    try:
        from isal import igzip
    except ImportError:  # a platform without an isal wheel
        return gzip.compress(data, compresslevel=1, mtime=0)
    return igzip.compress(data, compresslevel=1, mtime=0)
