"""Pathology of generator 2.x, in template space on the 1 mm simulation crop: age, atrophy,
white-matter hyperintensities (WMH), lacunes, macro-haemorrhage / cavernoma and basal-ganglia
mineralisation. Patients with CMBs are old and have small-vessel disease; these give the
variety (and the mimics: a lacune is darker than white matter on SWI, a macro-bleed is a big
dark lesion that is not a CMB) that one average template lacks.

- **Age** 55–90 y (uniform) drives atrophy, WMH burden and lacune count.
- **Atrophy** ``a = clip((age − 55) / 35) · U(0.5, 1)``: the ventricles grow by up to
  ``4a`` mm into the surrounding tissue and cortex next to sulcal CSF loses up to ``0.6a`` of
  its grey matter to CSF (wider sulci, more CSF partial volume at the edge).
- **WMH** burden ``b = clip((age − 55) / 35 + N(0, 0.25))``: periventricular caps up to ``8b``
  mm thick and ``Poisson(6b)`` deep patches of 2–8 mm; a fraction of white matter with
  longer T1 and T2* (:data:`~.contrast.WMH_PARAMS`).
- **Lacunes** ``Poisson(2b)`` (≤ 5) CSF-filled ellipsoids of 3–12 mm in the basal ganglia,
  thalamus or deep white matter, with a 1 mm gliotic (WMH-like) rim.
- **Macro-haemorrhage** (4 % of subjects: one paramagnetic sphere of 4–9 mm core) and
  **cavernoma** (4 %: a cluster of 3–6 cores of 0.8–2 mm within 4 mm): dipoles like a CMB's,
  far larger; never labelled.
- **Mineralisation**: in ``30 % + 30 %·(age − 55) / 35`` of subjects 2–6 diamagnetic foci
  (0.5–1.5 mm) in the pallidum and putamen, on top of generator 1's calcifications.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from cmbbench.datasets.synthetic.anatomy import eligible_indices, load_anatomy
from cmbbench.datasets.synthetic.mimics import Dipole


def draw_age(rng: np.random.Generator) -> float:
    """Age in years, uniform 55–90."""
    return float(rng.uniform(55.0, 90.0))


def _age_frac(age: float) -> float:
    return float(np.clip((age - 55.0) / 35.0, 0.0, 1.0))


@dataclass(frozen=True)
class Blob:
    """A soft ellipsoid in template mm: centre (3,), semi-axes (3,) mm, what it is."""

    kind: str
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    region: str = ""


@dataclass
class Pathology:
    """A subject's planned pathology (template mm): atrophy amount, WMH burden and patches,
    lacunes, macro lesions and mineralisation foci."""

    age: float
    atrophy: float = 0.0
    wmh_burden: float = 0.0
    wmh_patches: list[Blob] = field(default_factory=list)
    lacunes: list[Blob] = field(default_factory=list)
    macro: list[Dipole] = field(default_factory=list)
    mineral: list[Dipole] = field(default_factory=list)

    def avoid_points(self) -> np.ndarray:
        """Template points (N, 3) mm CMBs keep clear of: lacune and macro-lesion surfaces."""
        pts = []
        for b in self.lacunes:
            pts.append(_sphere_points(np.asarray(b.centre), max(b.axes)))
        for d in self.macro:
            pts.append(_sphere_points(np.asarray(d.centre_mni), d.core_radius_mm + 3.0))
        for d in self.mineral:
            pts.append(np.asarray([d.centre_mni]))
        return np.concatenate(pts) if pts else np.zeros((0, 3))


def _sphere_points(c: np.ndarray, r: float) -> np.ndarray:
    """Centre plus 26 points on a sphere of radius ``r`` mm around ``c`` (3,)."""
    g = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], float)
    g = g[np.any(g != 0, axis=1)]
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return np.concatenate([c[None], c + r * g])


def _pick(rng: np.random.Generator, pool: np.ndarray) -> np.ndarray:
    anat = load_anatomy()
    ijk = pool[int(rng.integers(len(pool)))] + rng.uniform(-0.5, 0.5, size=3)
    return anat.affine[:3, :3] @ ijk + anat.affine[:3, 3]


def plan_atrophy(rng: np.random.Generator, age: float) -> float:
    """Atrophy amount 0–1 from age (see the module text)."""
    return _age_frac(age) * float(rng.uniform(0.5, 1.0))


def plan_wmh(rng: np.random.Generator, age: float, box) -> tuple[float, list[Blob]]:
    """WMH burden 0–1 and deep patches."""
    burden = float(np.clip(_age_frac(age) + 0.25 * rng.standard_normal(), 0.0, 1.0))
    pool = eligible_indices("subcortical_wm", box)
    patches: list[Blob] = []
    for _ in range(int(rng.poisson(6.0 * burden)) if len(pool) else 0):
        c = _pick(rng, pool)
        axes = rng.uniform(1.0, 4.0, size=3)
        patches.append(Blob("wmh", tuple(map(float, c)), tuple(map(float, axes)), "subcortical_wm"))
    return burden, patches


def plan_lacunes(rng: np.random.Generator, burden: float, box) -> list[Blob]:
    """``min(Poisson(2·burden), 5)`` lacunes of 3–12 mm."""
    out: list[Blob] = []
    regions = ("basal_ganglia", "thalamus", "subcortical_wm")
    for _ in range(min(int(rng.poisson(2.0 * burden)), 5)):
        region = regions[int(rng.choice(3, p=[0.45, 0.2, 0.35]))]
        pool = eligible_indices(region, box)
        if len(pool) == 0:
            continue
        c = _pick(rng, pool)
        d = float(rng.uniform(3.0, 12.0))
        axes = d / 2.0 * rng.uniform(0.7, 1.0, size=3)
        out.append(Blob("lacune", tuple(map(float, c)), tuple(map(float, axes)), region))
    return out


def plan_macro(rng: np.random.Generator, box) -> list[Dipole]:
    """A macro-haemorrhage (4 %) and / or a cavernoma (4 %): paramagnetic dipoles."""
    out: list[Dipole] = []
    lobar = eligible_indices("subcortical_wm", box)
    deep = eligible_indices("basal_ganglia", box)
    if rng.random() < 0.04 and len(lobar) + len(deep):
        pool = lobar if (rng.random() < 0.6 and len(lobar)) or not len(deep) else deep
        c = _pick(rng, pool)
        a = float(rng.uniform(4.0, 9.0))
        chi = float(rng.uniform(0.5, 1.5))
        m = chi * 4.0 / 3.0 * np.pi * a**3
        out.append(Dipole("macro_haemorrhage", tuple(map(float, c)), m, a, "lobar_or_deep"))
    if rng.random() < 0.04 and len(lobar):
        c = _pick(rng, lobar)
        for _ in range(int(rng.integers(3, 7))):
            off = rng.uniform(-4.0, 4.0, size=3)
            a = float(rng.uniform(0.8, 2.0))
            m = float(rng.uniform(2.0, 5.0)) * 4.0 / 3.0 * np.pi * a**3
            out.append(Dipole("cavernoma", tuple(map(float, c + off)), m, a, "subcortical_wm"))
    return out


def plan_mineralisation(rng: np.random.Generator, age: float, box) -> list[Dipole]:
    """Basal-ganglia mineralisation: 2–6 small diamagnetic foci in 30–60 % of subjects."""
    if rng.random() >= 0.3 + 0.3 * _age_frac(age):
        return []
    pool = eligible_indices("basal_ganglia", box)
    out: list[Dipole] = []
    for _ in range(int(rng.integers(2, 7)) if len(pool) else 0):
        c = _pick(rng, pool)
        a = float(rng.uniform(0.25, 0.75))
        m = -float(rng.uniform(0.3, 1.0)) * 4.0 / 3.0 * np.pi * a**3
        out.append(
            Dipole("calcification", tuple(map(float, c)), m, a, "basal_ganglia_mineralisation")
        )
    return out


# ------------------------------------------------------------------------------ on the crop
@functools.lru_cache(maxsize=1)
def sulcal_exposure() -> np.ndarray:
    """How exposed each template voxel is to sulcal CSF (0–1, anatomy-grid shape): the CSF
    fraction smoothed with a 1.5 mm Gaussian, × 2.5, clipped, and 0 within 12 mm of deep CSF
    (the ventricles grow instead)."""
    from scipy import ndimage as ndi

    anat = load_anatomy()
    s = np.clip(ndi.gaussian_filter(anat.csf, 1.5) * 2.5, 0.0, 1.0)
    return (s * (anat.ventricle_dist > 12)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def ventricle_index() -> np.ndarray:
    """The template's taxicab distance to deep CSF (mm, anatomy-grid shape) as ``intp``: the
    index :func:`_band` looks up (converted once per process, not twice per subject)."""
    return load_anatomy().ventricle_dist.astype(np.intp)


def _band(vdist: np.ndarray, width_mm: float) -> np.ndarray:
    """``clip((width − d) / 2 + 0.5, 0, 1)`` for ``d > 0`` (0 inside deep CSF), float32, by a
    lookup on the integer (taxicab) distances ``vdist`` (mm; :func:`ventricle_index`)."""
    vdist = vdist.astype(np.intp, copy=False)
    d = np.arange(int(vdist.max()) + 1, dtype=np.float32)
    lut = np.clip((np.float32(width_mm) - d) / 2.0 + 0.5, 0.0, 1.0)
    lut[0] = 0.0
    return lut[vdist]


def soft_blob(shape, affine: np.ndarray, blob: Blob, edge: float = 6.0):
    """``(slices, soft indicator)`` of ``blob`` on a grid ``(affine, shape)`` (diagonal affine,
    1 at the centre, 0.5 on the surface), or ``None`` when it misses the grid."""
    vox = np.abs(np.diag(affine)[:3])
    inv = np.linalg.inv(affine)
    c = inv[:3, :3] @ np.asarray(blob.centre) + inv[:3, 3]
    ext = (1.6 * np.asarray(blob.axes) + 1.0) / vox
    lo = np.maximum(np.floor(c - ext).astype(int), 0)
    hi = np.minimum(np.ceil(c + ext).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    g = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    r = np.sqrt(sum(((g[i] - c[i]) * vox[i] / blob.axes[i]) ** 2 for i in range(3)))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return sl, (1.0 / (1.0 + np.exp((r - 1.0) * edge))).astype(np.float32)


def apply_to_tissue(
    p: Pathology,
    gm: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    vdist: np.ndarray,
    sulc: np.ndarray,
    affine: np.ndarray,
    *,
    atrophy: bool,
    wmh: bool,
    lacunes: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Tissue fractions of the crop (``affine``: its voxel -> template mm) after atrophy,
    WMH and lacunes: ``(gm, wm, csf, wmh fraction or None, lacune fraction or None)``; the
    inputs are not modified. ``vdist``: integer distance to deep CSF (mm; the crop of
    :func:`ventricle_index`); ``sulc``: the crop of :func:`sulcal_exposure`."""
    gm, wm, csf = gm.copy(), wm.copy(), csf.copy()
    if atrophy and p.atrophy > 0:
        # in place where a temporary is not needed again (the same operations in the same
        # order as csf += gm·g + wm·f; gm ·= 1 − g; wm ·= 1 − f)
        f = _band(vdist, 4.0 * p.atrophy)
        g = np.multiply(sulc, np.float32(0.6 * p.atrophy))
        np.maximum(f, g, out=g)
        moved = gm * g
        moved += wm * f
        csf += moved
        gm *= np.subtract(1.0, g, out=g)
        wm *= np.subtract(1.0, f, out=f)
    wmh_frac = None
    if wmh and (p.wmh_burden > 0 or p.wmh_patches):
        wmh_frac = _band(vdist, 8.0 * p.wmh_burden) * np.float32(0.5 + 0.5 * p.wmh_burden)
        for b in p.wmh_patches:
            out = soft_blob(gm.shape, affine, b)
            if out is not None:
                wmh_frac[out[0]] = np.maximum(wmh_frac[out[0]], out[1])
        wmh_frac = np.minimum(wmh_frac, 1.0, out=wmh_frac)
        wmh_frac *= wm
    lac = None
    if lacunes and p.lacunes:
        lac = np.zeros(gm.shape, dtype=np.float32)
        rim = np.zeros(gm.shape, dtype=np.float32)
        boxes = []
        for b in p.lacunes:
            out = soft_blob(gm.shape, affine, b)
            if out is None:
                continue
            lac[out[0]] = np.maximum(lac[out[0]], out[1])
            big = Blob(b.kind, b.centre, tuple(a + 1.0 for a in b.axes))
            out2 = soft_blob(gm.shape, affine, big)
            boxes.append(out[0])
            if out2 is not None:
                rim[out2[0]] = np.maximum(rim[out2[0]], out2[1])
                boxes.append(out2[0])
        # Only the lacunes' box changes: outside it lac = rim = 0, and every fraction is
        # >= +0, so csf + tissue·0, gm·1, wm·1 and max(wmh·1, 0·wm) leave them bit for bit.
        if boxes:
            box = _union(boxes)
            g_, w_, c_, lac_ = gm[box], wm[box], csf[box], lac[box]
            tissue = g_ + w_
            c_ += tissue * lac_
            g_ *= 1.0 - lac_
            w_ *= 1.0 - lac_
            rim[box] = np.clip(rim[box] - lac_, 0.0, 1.0) * w_
            if wmh_frac is None:
                wmh_frac = rim
            else:
                wmh_frac[box] = np.maximum(wmh_frac[box] * (1.0 - lac_), rim[box])
        elif wmh_frac is None:
            wmh_frac = rim
    return gm, wm, csf, wmh_frac, lac


def _union(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    """The bounding box (slices) of ``boxes`` (each a tuple of slices with start/stop)."""
    return tuple(
        slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes))
        for i in range(len(boxes[0]))
    )
