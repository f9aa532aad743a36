"""CMB appearance on the target grid: the magnetic-dipole model with sub-voxel sampling.

A sphere of radius ``a`` (mm) with susceptibility excess Δχ in a field B0 along world z has
moment m = Δχ·(4/3)πa³ (ppm·mm³). Outside it the phase after echo time TE is
φ = γ·B0·TE·m·1e-6 / (4π r³) · (3cos²θ − 1); inside it the signal is ~0. A voxel's signal is
the average of exp(−iφ) over the voxel (sub-voxel sampling), and its magnitude is the
attenuation the CMB multiplies into the image (blooming = phase dispersion inside a voxel).
The ``gaussian`` model (an ablation) replaces this by 1 − 0.9·exp(−r²/2σ²) with σ tied to the
same bloom radius.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from cmbbench.datasets.synthetic.sampling import GAMMA_RAD_PER_S_T, bloom_radius_mm

LesionModel = Literal["dipole", "gaussian"]
LABEL_LOSS = 0.30  # a voxel belongs to a CMB where its own attenuation loses ≥ 30 %
KEEP_LOSS = 0.25  # a CMB whose strongest voxel loses < 25 % is "ignore"
IGNORE_LOSS = 0.10  # extent of an ignored CMB in the ignore mask
MAX_BOX_MM = 14.0
SUBSAMPLE_MM = 0.3  # sub-voxel sampling step (mm), 3 to 13 samples per axis


def _subsample_axes(voxel_mm: np.ndarray) -> list[np.ndarray]:
    """Per-axis sub-voxel sample offsets in voxel units, a regular grid inside [−0.5, 0.5]."""
    axes = []
    for v in voxel_mm:
        n = int(np.clip(np.ceil(v / SUBSAMPLE_MM), 3, 13))
        axes.append((np.arange(n, dtype=np.float64) + 0.5) / n - 0.5)
    return axes


def _subsample_offsets(voxel_mm: np.ndarray) -> np.ndarray:
    """Sub-voxel sample offsets (S, 3) in voxel units: the axes' grid, the last axis fastest."""
    g = np.meshgrid(*_subsample_axes(voxel_mm), indexing="ij")
    return np.stack([a.ravel() for a in g], axis=1)


def render_dipole(
    centre_mm: np.ndarray,
    moment: float,
    core_radius_mm: float,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    b0_t: float,
    te_ms: float,
    model: LesionModel = "dipole",
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Attenuation (float32, 0..1) of one dipole in a box of the grid ``(affine, shape)``.

    ``centre_mm`` is in world mm; the grid's affine must be diagonal (axis-aligned voxels).
    Returns ``(slices, attenuation)`` with ``attenuation.shape`` the box shape, or ``None``
    when the box lies outside the grid.
    """
    vox = np.abs(np.diag(affine)[:3]).astype(np.float64)
    c = np.asarray(centre_mm, dtype=np.float64)
    r_bloom = bloom_radius_mm(moment, b0_t, te_ms, phase_rad=0.1)
    half = min(max(r_bloom, core_radius_mm) + vox.max(), MAX_BOX_MM)
    inv = np.linalg.inv(affine)
    cijk = inv[:3, :3] @ c + inv[:3, 3]
    ext = half / vox
    lo = np.maximum(np.floor(cijk - ext).astype(int), 0)
    hi = np.minimum(np.ceil(cijk + ext).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    axes = _subsample_axes(vox)
    lin = affine[:3, :3]
    if np.array_equal(lin, np.diag(np.diag(lin))):
        # A diagonal affine makes the offset along axis k depend only on the voxel's and
        # the sample's index along k: each axis' squared offsets are a small (n_k, S_k)
        # table, broadcast into the (V, S) box. The element values are those of
        # ``(ijk + offs) · voxel size + (origin − centre)`` summed as (x² + y²) + z², with
        # no (V, S, 3) array of sample points.
        step = np.diag(lin)
        shift = affine[:3, 3] - c
        sq = []
        for ax in range(3):
            idx = np.arange(lo[ax], hi[ax]).astype(np.float64)
            d_ax = (idx[:, None] + axes[ax][None, :]) * step[ax] + shift[ax]  # (n_ax, S_ax) mm
            sq.append(d_ax * d_ax)
        z2 = sq[2][None, None, :, None, None, :]
        r2 = sq[0][:, None, None, :, None, None] + sq[1][None, :, None, None, :, None] + z2
        # r2: (n0, n1, n2, S0, S1, S2) mm² from the centre, C-contiguous, so its (V, S)
        # reshape below is the voxel-major, sample-minor layout of the general branch
    else:
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        ijk = np.stack([g.ravel() for g in grids], axis=1).astype(np.float64)  # (V, 3)
        x = ijk[:, None, :] + _subsample_offsets(vox)[None, :, :]  # (V, S, 3) voxels
        d = x @ lin.T + (affine[:3, 3] - c)  # (V, S, 3) mm from the centre
        r2 = np.einsum("vsk,vsk->vs", d, d)
        z2 = d[..., 2] ** 2  # (V, S)
    box = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    n_vox = int(np.prod(box))
    if model == "gaussian":
        sigma = max(bloom_radius_mm(moment, b0_t, te_ms), core_radius_mm) / 1.5
        att = np.abs(1.0 - 0.9 * np.exp(-r2 / (2.0 * sigma * sigma)))
        att = att.reshape(n_vox, -1).mean(axis=1)
    else:
        k = GAMMA_RAD_PER_S_T * b0_t * te_ms * 1e-3 * moment * 1e-6 / (4.0 * np.pi)
        r2 = np.maximum(r2, 1e-12)
        cos2 = z2 / r2
        phi = k * (3.0 * cos2 - 1.0) / (r2 * np.sqrt(r2))
        inside = r2 <= core_radius_mm * core_radius_mm  # the core contributes no signal
        re = np.cos(phi)
        np.copyto(re, 0.0, where=inside)
        im = np.sin(phi, out=phi)
        np.copyto(im, 0.0, where=inside)
        re = re.reshape(n_vox, -1).mean(axis=1)
        im = im.reshape(n_vox, -1).mean(axis=1)
        att = np.sqrt(re * re + im * im)
    slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return slices, np.clip(att, 0.0, 1.0).astype(np.float32).reshape(box)  # type: ignore[return-value]
