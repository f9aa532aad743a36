"""Point-annotated sets: images plus CMB centre coordinates (scored with the ``point`` rule).

::

    ROOT/images/<case>.nii.gz          (``<case>_0000.nii.gz`` tolerated)
    ROOT/points/<case>.csv             one file per case, header ``x,y,z[,space]``, or
    ROOT/points/<case>.mat             MATLAB: an N×3 list of 1-based voxel indices, or
    ROOT/points.csv                    one file, header ``case_id,x,y,z[,space]``

Coordinates:

- CSV ``space`` is ``voxel`` or ``world`` (mm, the image's RAS+ world), taken from the
  option ``space=`` or else from a ``space`` column (per row). Voxel coordinates in a CSV are
  0-based (as numpy/nibabel index) unless ``one_based=True``.
- ``.mat`` files hold 1-based voxel indices (MATLAB convention) unless ``one_based=False``.
  The variable is ``mat_key=`` when given, else the first of ``cen``, ``centers``,
  ``centres``, ``points``, ``coords``, ``coordinates``, ``cmb``, ``CMB`` present, else the only
  N×3 numeric variable in the file.
- With the single ``points.csv``, a case that has no rows has no CMBs (a negative case);
  with per-case files, a missing file is an error.

Every case's label is a float64 (N, 3) array of world-mm centres (voxel coordinates go
through the affine). A coordinate outside the image (beyond the outer voxel faces) is an
error naming the file and the row.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmbbench.cases import Case, CaseData
from cmbbench.datasets.common import (
    as_image,
    check_unique_ids,
    finish,
    image_case_id,
    nifti_files,
    read_header,
    reject_options,
    require_root,
)
from cmbbench.datasets.registry import Dataset, DatasetInfo, register_dataset
from cmbbench.errors import InputError
from cmbbench.io import load_nifti

Space = Literal["voxel", "world"]

MAT_KEYS = ("cen", "centers", "centres", "points", "coords", "coordinates", "cmb", "CMB")

INFO = DatasetInfo(
    name="points",
    description="Images with CMB centre coordinates (CSV voxel/world, or MATLAB .mat 1-based voxels)",
    version="1",
    default_rule="point",
    rule_params={"max_distance_mm": 5.0},
    label_kind="points",
    needs_root=True,
    expected_input_format=(
        "ROOT/images/<case>.nii.gz with ROOT/points/<case>.csv (x,y,z[,space]) or "
        "ROOT/points/<case>.mat (N×3 1-based voxels), or one ROOT/points.csv (case_id,x,y,z[,space])"
    ),
)

_Row = tuple[int, np.ndarray, str | None]  # (line number, xyz, space or None)


def _read_csv(path: Path, *, need_case_id: bool) -> list[tuple[str | None, _Row]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"unreadable CSV ({err})", path=str(path)) from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise InputError("empty CSV (expected a header row x,y,z)", path=str(path))
    header = [h.strip().lower() for h in rows[0]]
    needed = ["x", "y", "z"] + (["case_id"] if need_case_id else [])
    missing = [h for h in needed if h not in header]
    if missing:
        raise InputError(
            f"CSV header lacks column(s) {', '.join(missing)} (got {', '.join(header)})",
            path=str(path),
        )
    ix = [header.index(h) for h in ("x", "y", "z")]
    isp = header.index("space") if "space" in header else None
    icase = header.index("case_id") if need_case_id else None
    out: list[tuple[str | None, _Row]] = []
    for line, r in enumerate(rows[1:], start=2):
        try:
            xyz = np.array([float(r[i]) for i in ix], dtype=np.float64)
        except (IndexError, ValueError):
            raise InputError(
                f"row at line {line}: x,y,z must be numbers, got {r}", path=str(path)
            ) from None
        if not np.all(np.isfinite(xyz)):
            raise InputError(f"row at line {line}: non-finite coordinate {r}", path=str(path))
        space = r[isp].strip().lower() if isp is not None and isp < len(r) else None
        if space is not None and space not in ("voxel", "world"):
            raise InputError(
                f"row at line {line}: space must be 'voxel' or 'world', got {space!r}",
                path=str(path),
            )
        cid = r[icase].strip() if icase is not None and icase < len(r) else None
        out.append((cid, (line, xyz, space)))
    return out


def _read_mat(path: Path, mat_key: str | None) -> list[_Row]:
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        data = scipy.io.loadmat(str(path))
    except (OSError, ValueError, NotImplementedError, TypeError, MatReadError) as err:
        raise InputError(
            f"unreadable MATLAB file ({type(err).__name__}: {err})", path=str(path)
        ) from None
    variables = {k: v for k, v in data.items() if not k.startswith("__")}
    if mat_key is not None:
        if mat_key not in variables:
            raise InputError(
                f"variable {mat_key!r} not found; variables: {', '.join(sorted(variables)) or 'none'}",
                path=str(path),
            )
        key = mat_key
    else:
        key = next((k for k in MAT_KEYS if k in variables), None)
        if key is None:
            cands = [
                k
                for k, v in variables.items()
                if isinstance(v, np.ndarray)
                and v.ndim == 2
                and v.shape[1] == 3
                and np.issubdtype(v.dtype, np.number)
            ]
            if len(cands) != 1:
                raise InputError(
                    f"cannot tell which variable holds the N×3 CMB list (variables: "
                    f"{', '.join(sorted(variables)) or 'none'}); pass option mat_key=NAME",
                    path=str(path),
                )
            key = cands[0]
    arr = np.asarray(variables[key])
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(
            f"variable {key!r} must be a numeric N×3 array, got shape {arr.shape} {arr.dtype}",
            path=str(path),
        )
    return [(i + 1, arr[i].astype(np.float64), "voxel") for i in range(arr.shape[0])]


def _to_world(
    rows: list[_Row],
    *,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    space: Space | None,
    one_based: bool,
    path: Path,
    case: str,
    row_word: str,
) -> np.ndarray:
    """World-mm (N, 3) centres; checks every point lies inside the image (outer voxel faces)."""
    out = np.zeros((len(rows), 3), dtype=np.float64)
    inv = np.linalg.inv(affine)
    upper = np.asarray(shape, dtype=np.float64) - 0.5
    for n, (line, xyz, row_space) in enumerate(rows):
        sp = space or row_space
        if sp is None:
            raise InputError(
                "coordinate space not declared: pass option space='voxel' or 'world', "
                "or add a 'space' column",
                case=case,
                path=str(path),
            )
        if sp == "voxel":
            vox = xyz - (1.0 if one_based else 0.0)
            world = (affine @ np.append(vox, 1.0))[:3]
        else:
            world = xyz
            vox = (inv @ np.append(world, 1.0))[:3]
        if np.any(vox < -0.5 - 1e-6) or np.any(vox > upper + 1e-6):
            raise InputError(
                f"{row_word} {line}: point {xyz.tolist()} ({sp}) lies outside the image "
                f"(0-based voxel {np.round(vox, 2).tolist()}, image shape {list(shape)})",
                case=case,
                path=str(path),
            )
        out[n] = world
    return out


@register_dataset(INFO)
def load_points(
    root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    *,
    split_file: str | os.PathLike[str] | None = None,
    seed: int = 0,
    space: Space | None = None,
    one_based: bool | None = None,
    mat_key: str | None = None,
    **options: Any,
) -> Dataset:
    """Load images + centre coordinates; labels are (N, 3) world-mm arrays (``label_kind="points"``)."""
    reject_options(INFO, options, ["space", "one_based", "mat_key", "split_file", "seed"])
    if space not in (None, "voxel", "world"):
        raise InputError(f"points: space must be 'voxel' or 'world', got {space!r}")
    base = require_root(INFO, root)
    images = nifti_files(base / "images")
    if not images:
        raise InputError(
            f"no NIfTI images found in images/; expected layout: {INFO.expected_input_format}",
            path=str(base / "images"),
        )
    ids = [(image_case_id(p.name), p) for p in images]
    check_unique_ids(ids)
    per_case_dir = base / "points"
    single = base / "points.csv"
    by_case: dict[str, list[_Row]] | None = None
    if not per_case_dir.is_dir():
        if not single.is_file():
            raise InputError(
                f"no points/ folder and no points.csv; expected layout: {INFO.expected_input_format}",
                path=str(base),
            )
        known = {cid for cid, _ in ids}
        by_case = {cid: [] for cid in known}
        for cid, row in _read_csv(single, need_case_id=True):
            if cid not in known:
                raise InputError(
                    f"row at line {row[0]}: case_id {cid!r} has no image in images/",
                    path=str(single),
                )
            by_case[cid].append(row)

    cases = []
    for cid, img in ids:
        shape, affine = read_header(img, case=cid)
        if by_case is not None:
            rows, src, word, ob = by_case[cid], single, "row at line", bool(one_based)
        else:
            csv_p, mat_p = per_case_dir / f"{cid}.csv", per_case_dir / f"{cid}.mat"
            if csv_p.is_file():
                rows = [r for _, r in _read_csv(csv_p, need_case_id=False)]
                src, word, ob = csv_p, "row at line", bool(one_based)
            elif mat_p.is_file():
                rows = _read_mat(mat_p, mat_key)
                src, word, ob = mat_p, "row", True if one_based is None else bool(one_based)
            else:
                raise InputError(
                    "missing label file (expected points/<case>.csv or .mat)",
                    case=cid,
                    path=str(csv_p),
                )
        pts = _to_world(
            rows,
            shape=shape,
            affine=affine,
            space=space,
            one_based=ob,
            path=src,
            case=cid,
            row_word=word,
        )
        cases.append(_points_case(cid, img, shape, affine, pts, src))
    return finish(
        INFO,
        cases,
        split=split,
        split_file=split_file,
        seed=seed,
        options={"root": str(base), "space": space, "one_based": one_based, "mat_key": mat_key},
    )


def _points_case(
    cid: str, img: Path, shape: tuple[int, int, int], affine: np.ndarray, pts: np.ndarray, src: Path
) -> Case:
    def load() -> CaseData:
        image = as_image(load_nifti(img, case=cid)[0], case=cid, path=img)
        return CaseData(image=image, label=pts.copy())

    meta = {
        "cohort": "-",
        "image_path": str(img),
        "label_path": str(src),
        "cmbs": [{"center_mm": p.tolist()} for p in pts],
    }
    return Case(
        case_id=cid,
        affine=affine,
        shape=shape,
        label_kind="points",
        loader=load,
        meta=meta,
        label_loader=pts.copy,
    )
