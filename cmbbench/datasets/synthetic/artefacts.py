"""Acquisition artefacts of generator 2.x, on the target grid (phase encoding along y, the
second axis; slices along z):

- **Motion ghosting** (15 % of scans): the head moved during a fraction (5–25 %) of the
  phase-encode lines; each such line carries the phase of a 0.5–2.5 voxel shift, so the
  object's ghosts repeat along y (every slice, 2D acquisitions).
- **Ringing** (15 % of scans, independent): k-space truncated in-plane to 70–90 % of its
  extent (a lower acquired matrix, zero-filled), giving Gibbs rings at sharp edges.
- **Noise texture** (parallel imaging, 50 % of scans): a smooth g-factor map (1 at the
  edge, 1.1–1.6 in the centre) scales the noise, and the noise is correlated between
  in-plane neighbours (a [¼, ½, ¼] kernel, renormalised to unit variance).

Every draw comes from the subject's ``"motion"`` or ``"noise_texture"`` stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class MotionPlan:
    """What the ``"motion"`` stream drew: ghosting (fraction of lines, shift range in voxels)
    and ringing (kept k-space fraction); ``None`` = absent."""

    ghost_fraction: float | None
    ghost_shift_vox: float | None
    ringing_keep: float | None
    seed: int

    def record(self) -> dict | None:
        if self.ghost_fraction is None and self.ringing_keep is None:
            return None
        return {
            "type": "motion",
            "ghost_fraction": None
            if self.ghost_fraction is None
            else round(self.ghost_fraction, 3),
            "ghost_shift_vox": None
            if self.ghost_shift_vox is None
            else round(self.ghost_shift_vox, 3),
            "ringing_keep": None if self.ringing_keep is None else round(self.ringing_keep, 3),
        }


def plan_motion(rng: np.random.Generator) -> MotionPlan:
    """Draw ghosting (15 %) and ringing (15 %) for one scan."""
    ghost = rng.random() < 0.15
    frac = float(rng.uniform(0.05, 0.25))
    shift = float(rng.uniform(0.5, 2.5))
    ring = rng.random() < 0.15
    keep = float(rng.uniform(0.7, 0.9))
    seed = int(rng.integers(2**31))
    return MotionPlan(
        frac if ghost else None, shift if ghost else None, keep if ring else None, seed
    )


def apply_motion(image: np.ndarray, plan: MotionPlan) -> None:
    """In place: ghosting and / or ringing of ``image`` (X, Y, Z) as ``plan`` says."""
    if plan.ghost_fraction is None and plan.ringing_keep is None:
        return
    rng = np.random.default_rng(plan.seed)
    k = np.fft.fft2(image.astype(np.complex64), axes=(0, 1))
    nx, ny = image.shape[0], image.shape[1]
    if plan.ghost_fraction is not None:
        lines = rng.random(ny) < plan.ghost_fraction
        shifts = rng.uniform(-plan.ghost_shift_vox, plan.ghost_shift_vox, size=ny) * lines
        ky = np.fft.fftfreq(ny)
        k *= np.exp(-2j * np.pi * ky * shifts).astype(np.complex64)[None, :, None]
    if plan.ringing_keep is not None:
        fx = np.abs(np.fft.fftfreq(nx)) <= 0.5 * plan.ringing_keep
        fy = np.abs(np.fft.fftfreq(ny)) <= 0.5 * plan.ringing_keep
        k *= (fx[:, None] & fy[None, :]).astype(np.complex64)[:, :, None]
    image[...] = np.abs(np.fft.ifft2(k, axes=(0, 1))).astype(np.float32)


@dataclass(frozen=True)
class NoiseTexture:
    """Parallel-imaging noise: centre g-factor (≥ 1) and in-plane correlation on/off."""

    g_max: float
    correlated: bool

    def record(self) -> dict:
        return {
            "type": "noise_texture",
            "g_max": round(self.g_max, 3),
            "correlated": self.correlated,
        }


def plan_noise_texture(rng: np.random.Generator) -> NoiseTexture | None:
    """Parallel imaging in 50 % of scans: g-factor 1.1–1.6, correlated noise."""
    if rng.random() >= 0.5:
        return None
    return NoiseTexture(float(rng.uniform(1.1, 1.6)), True)


def textured_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], tex: NoiseTexture
) -> np.ndarray:
    """A noise field (float32, ``shape``) of unit variance where g = 1, scaled by the g-factor
    map and correlated in-plane."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if tex.correlated:
        kern = np.array([0.25, 0.5, 0.25], dtype=np.float32)
        n = ndi.convolve1d(n, kern, axis=0, mode="wrap")
        n = ndi.convolve1d(n, kern, axis=1, mode="wrap")
        n /= np.float32(np.sqrt(float((kern**2).sum()) ** 2))
    u = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape[:2]]
    g = 1.0 + np.float32(tex.g_max - 1.0) * np.exp(
        -(u[0][:, None] ** 2) / 0.5 - (u[1][None, :] ** 2) / 0.3
    )
    return n * g[:, :, None]
