"""Tube-shaped mimics of generator 2.x: veins at real density, arterial flow voids and
cortical superficial siderosis; all rendered by one rasteriser (:func:`render_tubes`).

- **Veins**: radial medullary veins from the ventricle walls through the white matter (above
  the ventricles they run nearly along z, so thick axial slices show them as dots) and
  cortical veins along the cortex, 35 % of them diving through the slices at 15–60° from
  B0 (sulcal and bridging veins: ovals and dots on thick slices). Counts per sequence (:data:`VEIN_COUNTS`): by the
  hundred on SWI, fewer on T2*-GRE; radius 0.3–0.6 mm (medullary) / 0.4–1.0 mm (cortical).
- **Flow voids**: fast arterial flow (basilar, vertebral, internal carotid, M1, A1, P1) loses
  its signal on gradient echo: near-black tubes of 0.9–1.8 mm radius near the skull base
  (:data:`ARTERIES`, MNI mm, jittered per subject).
- **Superficial siderosis**: haemosiderin lining the cortical surface, a dark band 0.8–1.5 mm
  wide and 15–40 mm long, 1–3 bands, in 25 % of lobar-only (amyloid-angiopathy-like)
  subjects and 4 % of the others.

A tube's loss across its centre line is ``loss · exp(−d² / 2w²)``, ``w`` = radius + 0.3 mm,
its loss varying along a vein (:func:`beading`);
a vein's radius grows with its extravascular blooming, up to :func:`bloom_factor` (2.2× at
3 T, TE 23 ms) when it runs perpendicular to B0 and not at all along it (:func:`tube_set`).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from cmbbench.datasets.synthetic.anatomy import eligible_indices, indices_in_box, load_anatomy
from cmbbench.datasets.synthetic.mimics import BRAIN_CENTRE_MNI, Vein
from cmbbench.datasets.synthetic.nearest import nearest_points
from cmbbench.datasets.synthetic.sampling import GAMMA_RAD_PER_S_T

#: (medullary, cortical) vein count ranges per sequence
VEIN_COUNTS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "SWI": ((150, 260), (80, 140)),
    "T2*-GRE 3D": ((70, 130), (40, 80)),
    "T2*-GRE 2D": ((60, 120), (40, 80)),
}
#: arterial centre lines (MNI mm; x mirrored when bilateral) and radius (mm)
ARTERIES: dict[str, tuple[tuple[tuple[float, float, float], ...], float, bool]] = {
    "basilar": (((0.0, -26.0, -44.0), (0.0, -22.0, -28.0), (0.0, -18.0, -14.0)), 1.4, False),
    "vertebral": (((11.0, -42.0, -62.0), (6.0, -36.0, -54.0), (2.0, -28.0, -45.0)), 1.1, True),
    "internal_carotid": (((17.0, 0.0, -36.0), (16.0, 4.0, -22.0), (15.0, 4.0, -12.0)), 1.8, True),
    "middle_cerebral_m1": (((15.0, 4.0, -12.0), (28.0, 6.0, -9.0), (40.0, 8.0, -5.0)), 1.3, True),
    "anterior_cerebral_a1": (((15.0, 4.0, -12.0), (8.0, 12.0, -8.0), (3.0, 18.0, -5.0)), 0.9, True),
    "posterior_cerebral_p1": (
        ((3.0, -20.0, -14.0), (12.0, -28.0, -10.0), (22.0, -40.0, -4.0)),
        1.0,
        True,
    ),
}
STEP_MM = 0.5


@dataclass(frozen=True)
class TubeSet:
    """Every tube of one kind, concatenated: centre-line ``points`` (M, 3) MNI mm, and per
    point its tube index ``tube`` (M,), blooming width ``width`` (M,) mm and ``loss`` (M,)."""

    points: np.ndarray
    tube: np.ndarray
    width: np.ndarray
    loss: np.ndarray


def _inside(points: np.ndarray, box: tuple[float, ...] | None) -> np.ndarray:
    """Which template points (…, 3) mm lie in the brain mask (and the box)."""
    anat = load_anatomy()
    inv = np.linalg.inv(anat.affine)
    ijk = np.rint(points @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
    ok = np.all((ijk >= 0) & (ijk < np.asarray(anat.shape)), axis=-1)
    ijk = np.where(ok[..., None], ijk, 0)
    ok &= anat.brain[ijk[..., 0], ijk[..., 1], ijk[..., 2]]
    if box is not None:
        lo, hi = np.asarray(box[0::2]), np.asarray(box[1::2])
        ok &= np.all((points >= lo) & (points <= hi), axis=-1)
    return ok


def random_walks(
    rng: np.random.Generator,
    starts: np.ndarray,
    directions: np.ndarray,
    lengths_mm: np.ndarray,
    box: tuple[float, ...] | None,
    wiggle: float = 0.12,
) -> list[np.ndarray]:
    """Persistent random walks (0.5 mm steps) from ``starts`` (n, 3) along ``directions``
    (n, 3), each stopped at its length or where it leaves the brain: centre lines (k, 3)."""
    n = len(starts)
    if n == 0:
        return []
    steps = int(np.ceil(lengths_mm.max() / STEP_MM))
    noise = rng.standard_normal((steps, n, 3)) * wiggle
    d = directions / (np.linalg.norm(directions, axis=1, keepdims=True) + 1e-9)
    dirs = np.empty((steps, n, 3))
    for s in range(steps):
        d = d + noise[s]
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        dirs[s] = d
    pts = np.concatenate([starts[None], starts[None] + np.cumsum(dirs * STEP_MM, axis=0)])
    ok = _inside(pts, box)
    ok &= (np.arange(steps + 1)[:, None] * STEP_MM) <= lengths_mm[None, :]
    keep = np.cumprod(ok, axis=0).astype(bool)
    return [pts[keep[:, i], i] for i in range(n)]


def _pick(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """``n`` template points (n, 3) mm drawn from voxel indices ``pool`` (+ sub-voxel jitter)."""
    anat = load_anatomy()
    ijk = pool[rng.integers(len(pool), size=n)] + rng.uniform(-0.5, 0.5, size=(n, 3))
    return ijk @ anat.affine[:3, :3].T + anat.affine[:3, 3]


def _tangent(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """Random directions (n, 3) perpendicular to the radial one at points ``p`` (n, 3)."""
    radial = p - BRAIN_CENTRE_MNI
    radial /= np.linalg.norm(radial, axis=1, keepdims=True) + 1e-9
    t = rng.standard_normal(p.shape)
    return t - (t * radial).sum(axis=1, keepdims=True) * radial


def plan_veins_v2(
    rng: np.random.Generator,
    sequence: str,
    loss_range: tuple[float, float],
    box: tuple[float, ...] | None,
) -> list[Vein]:
    """Medullary and cortical veins at the density of ``sequence`` (:data:`VEIN_COUNTS`)."""
    anat = load_anatomy()
    (m_lo, m_hi), (c_lo, c_hi) = VEIN_COUNTS.get(sequence, VEIN_COUNTS["T2*-GRE 2D"])
    n_med, n_cort = int(rng.integers(m_lo, m_hi + 1)), int(rng.integers(c_lo, c_hi + 1))
    peri = eligible_indices("subcortical_wm", box)
    if len(peri):
        peri = peri[anat.ventricle_dist[tuple(peri.T)] <= 8.0]
    cort = eligible_indices("cortex_junction", box)
    veins: list[Vein] = []
    for kind, pool, n in (("medullary", peri, n_med), ("cortical", cort, n_cort)):
        if len(pool) == 0 or n == 0:
            continue
        starts = _pick(rng, pool, n)
        if kind == "medullary":
            d = starts - BRAIN_CENTRE_MNI
            lengths = rng.uniform(10.0, 35.0, size=n)
            radii = rng.uniform(0.3, 0.6, size=n)
            wiggle = 0.06
        else:
            d = _tangent(rng, starts)
            d = d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9)
            # 35 % dive through the slices (sulcal and bridging veins) at 15-60 degrees from
            # B0 (z): ovals and dots on thick slices, blooming with the tilt (tube_set)
            dive = rng.random(n) < 0.35
            tilt = np.deg2rad(rng.uniform(15.0, 60.0, size=n))
            up = rng.choice([-1.0, 1.0], size=n)
            flat = d.copy()
            flat[:, 2] = 0.0
            flat /= np.linalg.norm(flat, axis=1, keepdims=True) + 1e-9
            dived = np.sin(tilt)[:, None] * flat + (np.cos(tilt) * up)[:, None] * np.eye(3)[2]
            d = np.where(dive[:, None], dived, d)
            lengths = rng.uniform(15.0, 60.0, size=n)
            radii = rng.uniform(0.4, 1.0, size=n)
            wiggle = 0.12
        losses = rng.uniform(*loss_range, size=n)
        for line, r, loss in zip(
            random_walks(rng, starts, d, lengths, box, wiggle), radii, losses, strict=True
        ):
            if len(line) >= 6:
                veins.append(Vein(line, float(r), float(loss), kind, beading(rng, len(line))))
    return veins


def beading(rng: np.random.Generator, n: int) -> np.ndarray:
    """A vein's loss multiplier (n,) along its centre line (0.5 mm steps): calibre and
    partial-volume variation with a ~3 mm correlation length, ``clip(0.55 + 0.45 z, 0.1, 1)``
    for a smoothed unit-variance ``z``, so a small vein shows as a chain of dots and short
    segments rather than one even tube."""
    from scipy.ndimage import gaussian_filter1d

    z = gaussian_filter1d(rng.standard_normal(n + 24), 6.0, mode="nearest")[12 : 12 + n]
    z /= np.std(z) + 1e-9
    return np.clip(0.55 + 0.45 * z, 0.1, 1.0)


def plan_flow_voids(rng: np.random.Generator, box: tuple[float, ...] | None) -> list[Vein]:
    """The arteries of :data:`ARTERIES` (jittered ≤ 2 mm, loss 0.85–0.97) inside the brain."""
    out: list[Vein] = []
    for name, (knots, radius, bilateral) in ARTERIES.items():
        for sx in (1.0, -1.0) if bilateral else (1.0,):
            k = np.asarray(knots, dtype=np.float64) * np.array([sx, 1.0, 1.0])
            k = k + rng.uniform(-2.0, 2.0, size=k.shape)
            seg = [
                a + (b - a) * t[:, None]
                for a, b in itertools.pairwise(k)
                for t in [np.arange(0.0, 1.0, STEP_MM / max(np.linalg.norm(b - a), 1e-6))]
            ]
            line = np.concatenate([*seg, k[-1:]])
            line = line[_inside(line, box)]
            r = float(radius * rng.uniform(0.85, 1.15))
            if len(line) >= 4:
                side = "" if not bilateral else ("_right" if sx > 0 else "_left")
                out.append(Vein(line, r, float(rng.uniform(0.85, 0.97)), f"flow_void:{name}{side}"))
    return out


@functools.lru_cache(maxsize=4)
def cortical_surface_indices(box: tuple[float, ...] | None = None) -> np.ndarray:
    """Voxel indices (N, 3) of cortex next to sulcal CSF (where siderosis lines the brain)."""
    from scipy import ndimage as ndi

    anat = load_anatomy()
    near_csf = ndi.maximum_filter(anat.csf, size=3) > 0.5
    mask = (anat.gm > 0.4) & near_csf & (anat.ventricle_dist > 12) & (anat.regions == 1)
    return indices_in_box(np.argwhere(mask), box)


def plan_siderosis(
    rng: np.random.Generator, lobar_only: bool, box: tuple[float, ...] | None
) -> list[Vein]:
    """Cortical superficial siderosis: 1–3 dark bands along the cortex, in 25 % of lobar-only
    subjects and 4 % of the others (none otherwise)."""
    if rng.random() >= (0.25 if lobar_only else 0.04):
        return []
    pool = cortical_surface_indices(box)
    if len(pool) == 0:
        return []
    n = int(rng.integers(1, 4))
    starts = _pick(rng, pool, n)
    lines = random_walks(rng, starts, _tangent(rng, starts), rng.uniform(15.0, 40.0, size=n), box)
    widths = rng.uniform(0.8, 1.5, size=n)
    losses = rng.uniform(0.5, 0.85, size=n)
    return [
        Vein(line, float(w), float(loss), "siderosis")
        for line, w, loss in zip(lines, widths, losses, strict=True)
        if len(line) >= 6
    ]


#: susceptibility excess of venous blood over tissue (ppm, SI): Hct 0.4 · (1 − Y 0.6) · 3.39
VENOUS_CHI_PPM = 0.54


def bloom_factor(b0_t: float, te_ms: float) -> float:
    """How much wider than its lumen a vein perpendicular to B0 looks: the radius where the
    extravascular phase γ·B0·Δχ/2·TE·(a/r)² falls to 1 rad, over the lumen radius ``a``."""
    phase = GAMMA_RAD_PER_S_T * b0_t * VENOUS_CHI_PPM * 1e-6 / 2.0 * te_ms * 1e-3
    return float(np.sqrt(max(phase, 1.0)))


def tube_set(tubes: list[Vein], bloom: float = 0.0) -> TubeSet:
    """The tubes' centre lines concatenated with their per-point width and loss.

    Width ``w`` = radius + 0.3 mm, and for ``bloom`` > 0 (veins: :func:`bloom_factor`) the
    extravascular blooming of a cylinder, which grows with the angle θ between the vessel and
    B0 (z): ``w = max(radius, bloom · radius · sin θ) + 0.3`` (none along B0, where the field
    outside a cylinder vanishes)."""
    if not tubes:
        z = np.zeros(0)
        return TubeSet(np.zeros((0, 3)), z.astype(np.int64), z, z)
    pts = np.concatenate([t.points for t in tubes])
    n = [len(t.points) for t in tubes]
    tube = np.repeat(np.arange(len(tubes)), n)
    radius = np.repeat([t.radius_mm for t in tubes], n)
    if bloom > 0:
        sin_t = np.concatenate([_sin_to_z(t.points) for t in tubes])
        radius = np.maximum(radius, bloom * radius * sin_t)
    loss = np.concatenate(
        [t.loss * (np.ones(len(t.points)) if t.profile is None else t.profile) for t in tubes]
    )
    return TubeSet(pts, tube, radius + 0.3, loss)


def _sin_to_z(points: np.ndarray) -> np.ndarray:
    """sin of the angle between the local direction of a centre line (k, 3) and z, per point."""
    if len(points) < 2:
        return np.ones(len(points))
    d = np.gradient(points, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
    return np.sqrt(np.clip(1.0 - d[:, 2] ** 2, 0.0, 1.0))


def _unique_flat(keys: np.ndarray, size: int) -> np.ndarray:
    """The sorted distinct values of ``keys`` (flat indices < ``size``), as ``np.unique``
    gives them, by marking a bitmap (far faster than sorting millions of keys)."""
    mark = np.zeros(size, dtype=bool)
    mark[keys] = True
    return np.flatnonzero(mark)


def _ball(r: int) -> np.ndarray:
    g = np.arange(-r, r + 1)
    offs = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    return offs[(offs**2).sum(axis=1) <= (r + 0.5) ** 2]


def render_tubes(tubes: list[Vein], bloom: float = 0.0) -> np.ndarray:
    """Multiplicative attenuation (float32, anatomy-grid shape) of ``tubes``: each voxel within
    2.5 widths of a centre line keeps ``1 − loss · exp(−d² / 2w²)`` of its signal, with ``d``,
    ``w`` and ``loss`` of its nearest centre-line point (one nearest-point search for all
    tubes: :func:`cmbbench.datasets.synthetic.nearest.nearest_points`);
    ``bloom``: see :func:`tube_set`."""
    anat = load_anatomy()
    att = np.ones(anat.shape, dtype=np.float32)
    ts = tube_set(tubes, bloom)
    if len(ts.points) == 0:
        return att
    inv = np.linalg.inv(anat.affine)
    ijk = np.rint(ts.points @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
    reach = np.ceil(2.5 * ts.width).astype(int)
    size = int(np.prod(anat.shape))
    # Candidate voxels: a ball around every other centre-line point (1 mm apart: the same
    # voxels, half the work), marked in flat indices of a grid padded by the largest ball so
    # that no offset can wrap around an edge; the interior of the mark is the candidate set.
    pad = int(reach.max()) + 2
    padded = tuple(n + 2 * pad for n in anat.shape)
    strides = np.array([padded[1] * padded[2], padded[2], 1], dtype=np.int64)
    mark = np.zeros(padded, dtype=bool)
    for r in np.unique(reach):
        base = np.clip(ijk[reach == r][::2], 0, np.asarray(anat.shape) - 1)
        base = _unique_flat(np.ravel_multi_index(tuple(base.T), anat.shape), size)
        base = np.stack(np.unravel_index(base, anat.shape), axis=1) + pad
        mark.ravel()[((base @ strides)[:, None] + _ball(int(r) + 1) @ strides).ravel()] = True
    interior = tuple(slice(pad, pad + n) for n in anat.shape)
    flat = np.flatnonzero(mark[interior])
    cand = np.stack(np.unravel_index(flat, anat.shape), axis=1)
    world = cand @ anat.affine[:3, :3].T + anat.affine[:3, 3]
    dist, nearest = nearest_points(
        ts.points, cand, world, anat.affine, anat.shape, 2.5 * float(ts.width.max())
    )
    hit = np.isfinite(dist)
    w = ts.width[nearest[hit]]
    loss = ts.loss[nearest[hit]] * np.exp(-(dist[hit] ** 2) / (2.0 * w * w))
    att.ravel()[flat[hit]] = (1.0 - loss).astype(np.float32)
    return att
