"""Tiny on-disk dataset trees with the exact real file names, dtypes and orientations.

Each builder writes into a folder (``tmp_path``) and returns what it wrote, including the
expected CMB count per case so tests can check loaders against the worked-out answer.
CMBs are 2×2×1-voxel blocks (one connected component each) placed on a coarse grid so
they never touch: ``n_cmb`` blocks -> ``n_cmb`` components.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

# VALDO cohort grids scaled down (spacing kept, shape shrunk): 1xx 0.45×0.45×4 mm 512×512×35,
# 2xx 0.49×0.49×0.8 mm 512×512×192, 3xx 1×1×3 mm 256×256×36 -> small versions
VALDO_GRIDS = {
    "1": ((0.45, 0.45, 4.0), (32, 32, 5)),
    "2": ((0.49, 0.49, 0.8), (32, 32, 24)),
    "3": ((1.0, 1.0, 3.0), (16, 16, 6)),
}
# label dtypes as released: float64, float32, uint16 (values 0/1)
VALDO_LABEL_DTYPES = {"1": np.float64, "2": np.float32, "3": np.uint16}


def las_affine(spacing, origin=(60.0, -80.0, -40.0)) -> np.ndarray:
    """LAS voxel axes: the first axis runs right-to-left (negative x column), like VALDO."""
    a = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    a[:3, 3] = origin
    return a


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def cmb_centres(shape, n_cmb: int) -> list[tuple[int, int, int]]:
    """Voxel indices (block corners) of ``n_cmb`` non-touching 2×2×1 blocks."""
    out = []
    for i in range(2, shape[0] - 2, 4):
        for j in range(2, shape[1] - 2, 4):
            out.append((i, j, (i + j) % shape[2]))
    assert n_cmb <= len(out), "grid too small for that many CMBs"
    return out[:n_cmb]


def case_arrays(shape, n_cmb: int, seed: int, *, scale: float = 100.0):
    """(image float32, mask uint8, block corners): bright noisy tissue with dark CMB blocks."""
    rng = np.random.default_rng(seed)
    image = (scale * (1.0 + 0.05 * rng.standard_normal(shape))).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    corners = cmb_centres(shape, n_cmb)
    for i, j, k in corners:
        mask[i : i + 2, j : j + 2, k] = 1
        image[i : i + 2, j : j + 2, k] = 0.1 * scale
    return image, mask, corners


def write_valdo_tree(root: Path, subjects: dict[str, int] | None = None, *, extras: bool = True):
    """VALDO Task 2 layout; ``subjects`` maps ``sub-XXX`` to its CMB count. Returns the counts.

    Main channel float32 scaled per cohort (intensity scales differ by 100× across cohorts);
    T1/T2 extras contain NaNs outside the "brain" (the first row of voxels).
    """
    subjects = subjects or {"sub-101": 2, "sub-102": 0, "sub-201": 3, "sub-202": 1, "sub-301": 1}
    for n, (sid, n_cmb) in enumerate(sorted(subjects.items())):
        cohort = sid[4]
        spacing, shape = VALDO_GRIDS[cohort]
        aff = las_affine(spacing)
        scale = {"1": 1.0, "2": 100.0, "3": 10.0}[cohort]
        image, mask, _ = case_arrays(shape, n_cmb, seed=n, scale=scale)
        d = root / sid
        write_nifti(d / f"{sid}_space-T2S_desc-masked_T2S.nii.gz", image, aff)
        write_nifti(d / f"{sid}_space-T2S_CMB.nii.gz", mask.astype(VALDO_LABEL_DTYPES[cohort]), aff)
        if extras:
            for ch in ("T1", "T2"):
                extra = image.copy()
                extra[0] = np.nan
                write_nifti(d / f"{sid}_space-T2S_desc-masked_{ch}.nii.gz", extra, aff)
    return dict(subjects)


def write_folder_tree(
    root: Path, cases: dict[str, int] | None = None, *, nnunet_suffix: bool = False
) -> dict[str, int]:
    """``images/<case>[_0000].nii.gz`` + ``labels/<case>.nii.gz`` (uint8 0/1, LAS 1×1×3 mm)."""
    cases = cases or {"case_a": 2, "case_b": 0, "case_c": 3, "case_d": 1, "case_e": 1}
    aff = las_affine((1.0, 1.0, 3.0))
    for n, (cid, n_cmb) in enumerate(sorted(cases.items())):
        image, mask, _ = case_arrays((16, 16, 6), n_cmb, seed=n)
        name = f"{cid}_0000" if nnunet_suffix else cid
        write_nifti(root / "images" / f"{name}.nii.gz", image, aff)
        write_nifti(root / "labels" / f"{cid}.nii.gz", mask, aff)
    return dict(cases)


def write_nnunet_tree(root: Path, cases: dict[str, int] | None = None, *, channels=("T2S",)):
    """An nnU-Net v2 raw folder with dataset.json; returns the counts."""
    import json

    cases = cases or {"cmb_001": 1, "cmb_002": 0, "cmb_003": 2}
    aff = las_affine((0.5, 0.5, 0.8))
    for n, (cid, n_cmb) in enumerate(sorted(cases.items())):
        image, mask, _ = case_arrays((16, 16, 8), n_cmb, seed=n)
        for c in range(len(channels)):
            write_nifti(root / "imagesTr" / f"{cid}_{c:04d}.nii.gz", image + c, aff)
        write_nifti(root / "labelsTr" / f"{cid}.nii.gz", mask, aff)
    spec = {
        "channel_names": {str(i): ch for i, ch in enumerate(channels)},
        "labels": {"background": 0, "CMB": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return dict(cases)
