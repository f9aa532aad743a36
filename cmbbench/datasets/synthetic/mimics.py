"""CMB mimics (never labelled): veins, calcifications, iron, air–bone drop-out.

- Veins: tube random walks (radius 0.3–1 mm, length 10–60 mm), radial from the ventricles or
  along the cortex, some running through the slices (dots on thick slices); rendered on the
  1 mm simulation grid as a multiplicative signal loss (centre loss from the protocol).
- Calcifications: diamagnetic dipoles (same magnitude pattern as a CMB, opposite phase) at
  the globus pallidus, choroid plexus glomus, pineal and dentate; 1–4 mm; in ~40 % of subjects.
- Iron: R2* × 1.5–3 in the iron-rich nuclei (:mod:`.anatomy`, :mod:`.contrast`) plus 0–3
  small punctate paramagnetic foci in the deep grey matter.
- Air–bone drop-out: field of air pockets (sinuses, mastoids) as dipole spheres; through-
  and in-plane dephasing |sinc(∂φ/∂x · Δx / 2)| per axis; cached per protocol.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from cmbbench.datasets.synthetic.anatomy import (
    CALCIFICATION_SITES,
    eligible_indices,
    load_anatomy,
)
from cmbbench.datasets.synthetic.sampling import GAMMA_RAD_PER_S_T

BRAIN_CENTRE_MNI = np.array([0.0, -15.0, 12.0])
AIR_CHI_PPM = 9.4  # susceptibility of air relative to tissue
#: air pockets next to the skull base: (centre MNI mm, radius mm)
AIR_POCKETS: dict[str, tuple[tuple[float, float, float], float]] = {
    "sphenoid_sinus": ((0.0, 10.0, -46.0), 13.0),
    "ethmoid_sinus": ((0.0, 42.0, -34.0), 12.0),
    "frontal_sinus": ((0.0, 66.0, -8.0), 9.0),
    "mastoid_left": ((-56.0, -32.0, -54.0), 12.0),
    "mastoid_right": ((56.0, -32.0, -54.0), 12.0),
}


@dataclass(frozen=True)
class Vein:
    """A vein centre line (N, 3) in MNI mm, its radius (mm) and its centre signal loss (0..1)."""

    points: np.ndarray
    radius_mm: float
    loss: float
    kind: str
    #: optional per-point multiplier (N,) of ``loss`` along the centre line (generator 2.x)
    profile: np.ndarray | None = None


@dataclass(frozen=True)
class Dipole:
    """A point-like susceptibility source (calcification or iron focus) in MNI mm."""

    kind: str
    centre_mni: tuple[float, float, float]
    moment: float  # ppm·mm³, negative = diamagnetic
    core_radius_mm: float
    site: str


def _in_box(p: np.ndarray, box: tuple[float, ...] | None, margin: float = 0.0) -> bool:
    if box is None:
        return True
    lo = np.asarray(box[0::2]) + margin
    hi = np.asarray(box[1::2]) - margin
    return bool(np.all(p >= lo) and np.all(p <= hi))


def plan_veins(
    rng: np.random.Generator, loss_range: tuple[float, float], box: tuple[float, ...] | None
) -> list[Vein]:
    """20–60 veins as persistent random walks (0.5 mm steps) inside the brain."""
    anat = load_anatomy()
    inv = np.linalg.inv(anat.affine)
    n = int(rng.integers(20, 61))
    peri = eligible_indices("subcortical_wm", box)
    peri = peri[anat.ventricle_dist[tuple(peri.T)] <= 10.0] if len(peri) else peri
    cort = eligible_indices("cortex_junction", box)
    veins: list[Vein] = []
    for _ in range(n):
        periventricular = rng.random() < 0.5 and len(peri) > 0
        pool = peri if periventricular or len(cort) == 0 else cort
        if len(pool) == 0:
            break
        p = anat.affine[:3, :3] @ pool[int(rng.integers(len(pool)))] + anat.affine[:3, 3]
        radial = p - BRAIN_CENTRE_MNI
        radial /= np.linalg.norm(radial) + 1e-9
        if periventricular:
            d = radial
        else:
            t = rng.standard_normal(3)
            d = t - (t @ radial) * radial
        if rng.random() < 0.35:  # runs through the slices: a dot on thick slices
            d = d + np.array([0.0, 0.0, rng.choice([-1.0, 1.0]) * 2.0])
        d = d / (np.linalg.norm(d) + 1e-9)
        length = float(rng.uniform(10.0, 60.0))
        pts = [p.copy()]
        for _step in range(int(length / 0.5)):
            d = d + 0.12 * rng.standard_normal(3)
            d /= np.linalg.norm(d)
            p = p + 0.5 * d
            ijk = np.rint(inv[:3, :3] @ p + inv[:3, 3]).astype(int)
            if np.any(ijk < 0) or np.any(ijk >= anat.shape) or not anat.brain[tuple(ijk)]:
                break
            if not _in_box(p, box):
                break
            pts.append(p.copy())
        radius = float(rng.uniform(0.3, 1.0))
        loss = float(rng.uniform(*loss_range))
        if len(pts) >= 6:
            kind = "medullary" if periventricular else "cortical"
            veins.append(Vein(np.asarray(pts, dtype=np.float64), radius, loss, kind))
    return veins


def render_veins(veins: list[Vein]) -> np.ndarray:
    """Multiplicative attenuation (float32, anatomy-grid shape) of all veins.

    Loss profile across a vein: ``loss · exp(−d² / 2w²)``, w = radius + 0.3 mm (blooming).
    """
    anat = load_anatomy()
    att = np.ones(anat.shape, dtype=np.float32)
    inv = np.linalg.inv(anat.affine)
    for v in veins:
        w = v.radius_mm + 0.3
        r = int(np.ceil(2.5 * w))
        rng1 = np.arange(-r, r + 1)
        offs = np.stack(np.meshgrid(rng1, rng1, rng1, indexing="ij"), axis=-1).reshape(-1, 3)
        ijk = np.rint(v.points @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
        cand = (ijk[:, None, :] + offs[None]).reshape(-1, 3)
        cand = cand[np.all((cand >= 0) & (cand < anat.shape), axis=1)]
        flat = np.unique(np.ravel_multi_index(tuple(cand.T), anat.shape))
        cand = np.stack(np.unravel_index(flat, anat.shape), axis=1)
        world = cand @ anat.affine[:3, :3].T + anat.affine[:3, 3]
        dist, _ = cKDTree(v.points).query(world)
        loss = v.loss * np.exp(-(dist**2) / (2.0 * w * w))
        idx = tuple(cand.T)
        att[idx] *= (1.0 - loss).astype(np.float32)
    return att


def plan_calcifications(rng: np.random.Generator, box: tuple[float, ...] | None) -> list[Dipole]:
    """Calcifications in 40 % of subjects: 1–2 sites, bilateral sites doubled w.p. 0.7."""
    if rng.random() >= 0.4:
        return []
    names = list(CALCIFICATION_SITES)
    k = int(rng.integers(1, 3))
    chosen = rng.choice(len(names), size=k, replace=False)
    out: list[Dipole] = []
    for i in sorted(int(c) for c in chosen):
        (cx, cy, cz), bilateral = CALCIFICATION_SITES[names[i]]
        sides = [1.0, -1.0] if (bilateral and rng.random() < 0.7) else [rng.choice([-1.0, 1.0])]
        for sx in sides:
            c = np.array([sx * cx, cy, cz]) + rng.uniform(-2.5, 2.5, size=3)
            diam = float(rng.uniform(1.0, 4.0))
            a = diam / 2.0
            moment = -float(rng.uniform(0.3, 1.0)) * (4.0 / 3.0) * np.pi * a**3
            if _in_box(c, box, margin=3.0):
                out.append(Dipole("calcification", tuple(float(v) for v in c), moment, a, names[i]))
    return out


def plan_iron_foci(rng: np.random.Generator, box: tuple[float, ...] | None) -> list[Dipole]:
    """0–3 small punctate paramagnetic foci in the basal ganglia / thalamus (unlabelled)."""
    anat = load_anatomy()
    n = int(rng.integers(0, 4))
    pools = [eligible_indices(r, box) for r in ("basal_ganglia", "thalamus")]
    pool = (
        np.concatenate([p for p in pools if len(p)], axis=0) if any(len(p) for p in pools) else None
    )
    out: list[Dipole] = []
    for _ in range(n if pool is not None else 0):
        ijk = pool[int(rng.integers(len(pool)))] + rng.uniform(-0.5, 0.5, size=3)
        c = anat.affine[:3, :3] @ ijk + anat.affine[:3, 3]
        m = float(rng.uniform(0.2, 0.8))
        out.append(Dipole("iron_focus", tuple(float(v) for v in c), m, 0.3, "deep_grey"))
    return out


@functools.lru_cache(maxsize=16)
def airbone_attenuation(
    b0_t: float, te_ms: float, voxel_mm: tuple[float, float, float]
) -> np.ndarray:
    """Signal kept (float32, anatomy-grid shape) after air–bone dephasing for one protocol.

    Phase φ = γ·B0·TE·Σ Δχ/3 · a³/r³ · (3cos²θ − 1) of the air pockets; each voxel keeps
    Π_axes |sinc(∂φ/∂x_i · Δx_i / 2)| (box-shaped voxel profile).
    """
    anat = load_anatomy()
    x, y, z = anat.world_coords()
    phi = np.zeros(anat.shape, dtype=np.float32)
    scale = GAMMA_RAD_PER_S_T * b0_t * te_ms * 1e-3 * AIR_CHI_PPM * 1e-6 / 3.0
    for (cx, cy, cz), a in AIR_POCKETS.values():
        dx, dy, dz = x - np.float32(cx), y - np.float32(cy), z - np.float32(cz)
        r2 = np.maximum(dx * dx + dy * dy + dz * dz, np.float32(a * a))
        phi += np.float32(scale * a**3) * (3.0 * dz * dz / r2 - 1.0) / (r2 * np.sqrt(r2))
    keep = np.ones(anat.shape, dtype=np.float32)
    for axis, v in enumerate(voxel_mm):
        g = np.gradient(phi, axis=axis)  # rad per mm (1 mm grid)
        keep *= np.abs(np.sinc(g * np.float32(v / 2.0) / np.float32(np.pi))).astype(np.float32)
    return keep


def dipole_record(d: Dipole, centre_world: np.ndarray) -> dict:
    """JSON-ready record of a calcification / iron focus (world mm of the case grid)."""
    rec = {
        "type": d.kind,
        "centre_mm": [round(float(v), 3) for v in centre_world],
        "site": d.site,
        "moment": round(float(d.moment), 4),
    }
    if d.kind in ("calcification", "macro_haemorrhage", "cavernoma"):
        rec["diameter_mm"] = round(2.0 * d.core_radius_mm, 3)
    return rec
