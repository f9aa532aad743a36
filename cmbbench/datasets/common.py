"""Shared helpers of the file-based loaders (valdo, nnunet, points, folder).

What every loader does the same way: require a root folder, read NIfTI headers eagerly
(shape and affine are cheap and let grid mismatches fail at load time), build lazy
:class:`~cmbbench.cases.Case` objects whose arrays are read and validated on first access,
reject duplicate case ids, and apply a split (a split file, or deterministic stratified
splits computed only when a split is requested).

Validation happens in two places, both raising :class:`InputError` naming the file:

- when the dataset is loaded (headers only): missing files, unreadable headers, 4-D images,
  label/image shape or affine mismatch, duplicate case ids;
- when a case's arrays are first read: truncated data, NaN/inf in the main channel,
  label values other than 0/1 (binary masks) or non-integers (instance maps).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cmbbench.cases import Case, CaseData, LabelKind
from cmbbench.datasets.registry import Dataset, DatasetInfo
from cmbbench.datasets.splits import count_bin, resolve_split
from cmbbench.errors import InputError
from cmbbench.io import case_id_from_filename, load_nifti, strip_nifti_suffix

log = logging.getLogger(__name__)

#: tolerance (mm) when comparing the affines of an image and its label
AFFINE_ATOL_MM = 1e-3


def require_root(info: DatasetInfo, root: str | os.PathLike[str] | None) -> Path:
    """The dataset's root folder, or an :class:`InputError` telling the user the expected layout."""
    if root is None or str(root) == "":
        raise InputError(
            f"dataset {info.name!r} needs --root PATH; expected layout: {info.expected_input_format}"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputError(
            f"dataset {info.name!r}: root folder not found (expected layout: "
            f"{info.expected_input_format})",
            path=str(path),
        )
    return path


def reject_options(info: DatasetInfo, options: Mapping[str, Any], known: Sequence[str]) -> None:
    """Raise :class:`InputError` for options a loader does not understand (listing the known ones)."""
    if options:
        raise InputError(
            f"dataset {info.name!r}: unknown option(s) {', '.join(sorted(options))}; "
            f"known options: {', '.join(sorted(known)) or '(none)'}"
        )


def nifti_files(folder: Path) -> list[Path]:
    """NIfTI files (``.nii`` / ``.nii.gz``) directly in ``folder``, sorted by name; hidden files skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and strip_nifti_suffix(p.name) is not None
    )


def image_case_id(name: str) -> str:
    """Case id of an image file name (:func:`cmbbench.io.case_id_from_filename`, ``"image"``)."""
    return case_id_from_filename(name, "image") or name


def find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists (``None`` when neither)."""
    for suffix in (".nii.gz", ".nii"):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def check_unique_ids(items: Iterable[tuple[str, Path]]) -> None:
    """Raise :class:`InputError` naming both files when two files map to the same case id."""
    seen: dict[str, Path] = {}
    for cid, path in items:
        if cid in seen:
            raise InputError(
                f"duplicate case id {cid!r} (also from {seen[cid]})", case=cid, path=str(path)
            )
        seen[cid] = path


def read_header(path: Path, *, case: str | None = None) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (3 ints) and affine (4, 4) float64 of a NIfTI file, reading only its header.

    Raises :class:`InputError` naming the file when it is missing, unreadable, or not 3-D
    (a trailing singleton 4th axis is accepted, as :func:`cmbbench.io.load_nifti` squeezes it).
    """
    if not path.is_file():
        raise InputError("file not found", case=case, path=str(path))
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, gzip errors...
        raise InputError(
            f"unreadable NIfTI header ({type(err).__name__}: {err})", case=case, path=str(path)
        ) from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(
            f"expected a 3-D image, got {len(shape)}-D with shape {shape}",
            case=case,
            path=str(path),
        )
    return (shape[0], shape[1], shape[2]), affine


def check_same_grid(
    ref: tuple[tuple[int, int, int], np.ndarray],
    other: tuple[tuple[int, int, int], np.ndarray],
    *,
    case: str,
    path: Path,
    what: str = "label",
) -> None:
    """Raise :class:`InputError` when ``other`` (e.g. the label) is not on the image's grid."""
    (s0, a0), (s1, a1) = ref, other
    if tuple(s0) != tuple(s1):
        raise InputError(
            f"{what} shape {tuple(s1)} does not match the image shape {tuple(s0)}",
            case=case,
            path=str(path),
        )
    if not np.allclose(a0, a1, atol=AFFINE_ATOL_MM, rtol=0):
        worst = float(np.max(np.abs(a0 - a1)))
        raise InputError(
            f"{what} affine differs from the image affine by up to {worst:.4g} mm "
            f"(expected the image's grid; tolerance {AFFINE_ATOL_MM} mm)",
            case=case,
            path=str(path),
        )


def as_image(arr: np.ndarray, *, case: str, path: Path) -> np.ndarray:
    """The main channel as float32; NaN or inf is an :class:`InputError` naming the file."""
    out = np.asarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        raise InputError(
            f"main image channel contains {int(bad.sum())} NaN/inf voxel(s) "
            "(only extra channels may contain NaNs)",
            case=case,
            path=str(path),
        )
    return out


def as_extra(arr: np.ndarray, *, case: str, path: Path, name: str) -> np.ndarray:
    """An extra channel as float32 with NaN/inf replaced by 0 (logged as a warning)."""
    out = np.asarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        log.warning(
            "case %r: extra channel %s (%s) has %d NaN/inf voxel(s); replaced by 0",
            case,
            name,
            path,
            int(bad.sum()),
        )
        out = np.where(bad, np.float32(0), out)
    return out


def as_binary_mask(arr: np.ndarray, *, case: str, path: Path) -> np.ndarray:
    """A label stored as any numeric dtype with values 0/1 -> uint8 mask; other values are an error."""
    a = np.asarray(arr)
    if a.dtype == np.bool_:
        return a.astype(np.uint8)
    bad = (a != 0) & (a != 1)  # NaN compares unequal to both, so it is caught too
    if bad.any():
        vals = np.unique(a[bad])[:5]
        raise InputError(
            f"label must be binary (values 0/1), found {int(bad.sum())} voxel(s) with other "
            f"values, e.g. {', '.join(f'{v:g}' for v in vals.tolist())} "
            "(pass instance_labels=True for an instance map)",
            case=case,
            path=str(path),
        )
    return a.astype(np.uint8)


def as_instance_map(arr: np.ndarray, *, case: str, path: Path) -> np.ndarray:
    """An instance label map (0 = background, one positive integer per CMB) -> int32."""
    a = np.asarray(arr)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise InputError(
                "instance label map must hold whole numbers (0 = background, 1..N = CMBs)",
                case=case,
                path=str(path),
            )
    if a.size and a.min() < 0:
        raise InputError(
            f"instance label map has negative values (min {a.min():g})", case=case, path=str(path)
        )
    return a.astype(np.int32)


def nifti_case(
    case_id: str,
    image_path: Path,
    label_path: Path | None,
    *,
    label_kind: LabelKind = "mask",
    extras: Mapping[str, Path] | None = None,
    meta: dict[str, Any] | None = None,
) -> Case:
    """A lazy :class:`Case` from an image file, an optional label file and extra channels.

    Headers are read now (shape, affine; grid mismatches fail here); arrays are read and
    validated when the case's ``image``/``label`` are first used. ``label_path=None``
    makes an unlabelled case (``label_kind`` becomes ``"none"``).
    """
    shape, affine = read_header(image_path, case=case_id)
    if label_path is not None:
        check_same_grid(
            (shape, affine), read_header(label_path, case=case_id), case=case_id, path=label_path
        )
    extra_paths = dict(extras or {})
    for name, p in extra_paths.items():
        check_same_grid(
            (shape, affine),
            read_header(p, case=case_id),
            case=case_id,
            path=p,
            what=f"extra channel {name}",
        )
    kind: LabelKind = label_kind if label_path is not None else "none"

    def read_label() -> np.ndarray | None:
        if label_path is None:
            return None
        raw = load_nifti(label_path, case=case_id)[0]
        if kind == "instance":
            return as_instance_map(raw, case=case_id, path=label_path)
        return as_binary_mask(raw, case=case_id, path=label_path)

    def load() -> CaseData:
        image = as_image(load_nifti(image_path, case=case_id)[0], case=case_id, path=image_path)
        extra, missing = {}, {}
        for name, p in extra_paths.items():
            raw = np.asarray(load_nifti(p, case=case_id)[0])
            extra[name] = as_extra(raw, case=case_id, path=p, name=name)
            bad = ~np.isfinite(raw)
            if bad.any():
                missing[name] = bad
        return CaseData(image=image, label=read_label(), extra=extra, missing=missing)

    m = dict(meta or {})
    m.setdefault("image_path", str(image_path))
    if label_path is not None:
        m.setdefault("label_path", str(label_path))
    return Case(
        case_id=case_id,
        affine=affine,
        shape=shape,
        label_kind=kind,
        loader=load,
        meta=m,
        label_loader=read_label,
    )


def count_cmbs(label: np.ndarray | None, label_kind: str, *, connectivity: int = 26) -> int:
    """Number of CMBs in a label: connected components (mask), distinct ids (instance), rows (points)."""
    if label is None or label_kind == "none":
        return 0
    if label_kind == "points":
        return int(np.asarray(label).reshape(-1, 3).shape[0])
    if label_kind == "instance":
        ids = np.unique(label)
        return int(np.count_nonzero(ids))
    from cmbbench.scoring.components import label_volume

    return int(label_volume(label, connectivity).max())


# CMB counts of label files already read in this process, keyed by (path, size, mtime, kind):
# loading the train, val and test splits one after another reads each label only once
_COUNT_CACHE: dict[tuple[str, int, int, str], int] = {}
_COUNT_CACHE_MAX = 100_000


def _label_file_key(case: Case) -> tuple[str, int, int, str] | None:
    p = case.meta.get("label_path")
    if not p or case.label_kind not in ("mask", "instance"):
        return None
    try:
        st = os.stat(p)
    except OSError:
        return None
    return (str(p), int(st.st_size), int(st.st_mtime_ns), case.label_kind)


def count_strata(cases: Sequence[Case], *, group_key: str = "cohort") -> list[str]:
    """Stratum labels ``f"{meta[group_key]}|{count_bin(n_cmb)}"`` for :func:`make_splits`.

    Reads every label once via :meth:`Case.read_label` (the label file alone when the
    loader provides a label reader; otherwise the case is loaded and released again unless
    it was loaded before). Counts of label files are remembered for the process (keyed by
    path, size and modification time), so loading several splits reads each file once.
    Loaders call this only when a split is requested without a split file.
    """
    out = []
    for c in cases:
        key = _label_file_key(c)
        n = _COUNT_CACHE.get(key) if key is not None else None
        if n is None:
            was_loaded = c._data is not None
            label = None if c.label_kind == "none" else c.read_label()
            if not was_loaded:
                c.release()
            n = count_cmbs(label, c.label_kind)
            if key is not None:
                if len(_COUNT_CACHE) >= _COUNT_CACHE_MAX:
                    _COUNT_CACHE.clear()
                _COUNT_CACHE[key] = n
        out.append(f"{c.meta.get(group_key, '-')}|{count_bin(n)}")
    return out


def finish(
    info: DatasetInfo,
    cases: Sequence[Case],
    *,
    split: str | None,
    split_file: str | os.PathLike[str] | None,
    seed: int,
    options: dict[str, Any],
    group_key: str = "cohort",
) -> Dataset:
    """Check ids, apply the split and wrap the cases in a :class:`Dataset`."""
    check_unique_ids((c.case_id, Path(c.meta.get("image_path", c.case_id))) for c in cases)
    selected = resolve_split(
        cases,
        split,
        split_file=split_file,
        seed=seed,
        strata=lambda cs: count_strata(cs, group_key=group_key),
    )
    opts = dict(options)
    if split_file is not None:
        opts["split_file"] = str(split_file)
    opts["seed"] = seed
    return Dataset(info, selected, split=split, options=opts)
