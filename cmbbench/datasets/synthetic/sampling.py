"""Random draws of a subject: seeds, CMB counts, locations, moments.

Every random stream derives from ``(version, seed, subject id, component)`` through sha256 ->
:class:`numpy.random.SeedSequence`, so a subject is the same in any process and any
generation order (never Python's salted ``hash()``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cmbbench.datasets.synthetic.anatomy import (
    LOBAR_REGIONS,
    REGIONS,
    eligible_indices,
    load_anatomy,
)

GAMMA_RAD_PER_S_T = 2.675221874e8  # proton gyromagnetic ratio γ (rad s⁻¹ T⁻¹)

# hurdle model of CMB counts per subject (VALDO training set)
P_ZERO = 0.31
P_ONE_GIVEN_ANY = 0.60
NB_K = 0.31
NB_MEAN = 9.2

#: marginal CMB location frequencies (957 CMBs over five datasets)
REGION_FREQ: dict[str, float] = {
    "subcortical_wm": 0.40,
    "cortex_junction": 0.33,
    "cerebellum": 0.08,
    "basal_ganglia": 0.08,
    "thalamus": 0.05,
    "brainstem": 0.04,
}
P_LOBAR_ONLY = 0.35  # subjects whose CMBs are all lobar (amyloid-angiopathy-like)

# moment m = Δχ·(4/3)πa³ (ppm·mm³): log-normal, clipped
MOMENT_MEDIAN = 2.0
MOMENT_SIGMA = 0.7
MOMENT_RANGE = (0.3, 30.0)
CHI_RANGE_PPM = (2.0, 6.0)  # susceptibility excess of the hemosiderin core


def component_rng(version: str, seed: int, subject_id: str, component: str) -> np.random.Generator:
    """Independent generator for one component of one subject (sha256 -> SeedSequence)."""
    key = f"cmbbench.synthetic|{version}|{int(seed)}|{subject_id}|{component}".encode()
    entropy = int.from_bytes(hashlib.sha256(key).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence(entropy))


def sample_count(rng: np.random.Generator, cap: int = 60) -> int:
    """CMB count from the hurdle model: 0 w.p. 0.31, else 1 w.p. 0.60, else 2 + NegBin(0.31, mean 9.2), capped."""
    if rng.random() < P_ZERO:
        return 0
    if rng.random() < P_ONE_GIVEN_ANY:
        return min(1, cap)
    p = NB_K / (NB_K + NB_MEAN)
    return int(min(2 + rng.negative_binomial(NB_K, p), cap))


def region_weights(lobar_only: bool) -> dict[str, float]:
    """Per-subject region weights whose mixture over subjects gives :data:`REGION_FREQ`."""
    if lobar_only:
        w = {r: (REGION_FREQ[r] if r in LOBAR_REGIONS else 0.0) for r in REGIONS}
    else:
        lobar = sum(REGION_FREQ[r] for r in LOBAR_REGIONS)
        # 0.35·1 + 0.65·x = lobar share  ->  x
        x = (lobar - P_LOBAR_ONLY) / (1.0 - P_LOBAR_ONLY)
        deep = 1.0 - lobar
        w = {
            r: REGION_FREQ[r] * (x / lobar if r in LOBAR_REGIONS else (1.0 - x) / deep)
            for r in REGIONS
        }
    total = sum(w.values())
    return {r: v / total for r, v in w.items()}


def sample_moment(rng: np.random.Generator) -> tuple[float, float]:
    """(moment ppm·mm³, core radius mm) of one CMB."""
    m = float(np.clip(MOMENT_MEDIAN * np.exp(MOMENT_SIGMA * rng.standard_normal()), *MOMENT_RANGE))
    chi = float(rng.uniform(*CHI_RANGE_PPM))
    a = float((3.0 * m / (4.0 * np.pi * chi)) ** (1.0 / 3.0))
    return m, a


def bloom_radius_mm(moment: float, b0_t: float, te_ms: float, phase_rad: float = 1.0) -> float:
    """Distance (mm) along B0 at which the dipole's phase reaches ``phase_rad``.

    φ(r, θ) = γ·B0·TE·m·1e-6 / (4π r³) · (3cos²θ − 1) with m in ppm·mm³.
    """
    k = GAMMA_RAD_PER_S_T * b0_t * te_ms * 1e-3 * abs(moment) * 1e-6 / (4.0 * np.pi)
    return float((2.0 * k / phase_rad) ** (1.0 / 3.0))


@dataclass(frozen=True)
class CMBSpec:
    """One planned CMB in MNI (template) world mm."""

    centre_mni: tuple[float, float, float]
    moment: float
    core_radius_mm: float
    region: str


def place_cmbs(
    rng: np.random.Generator,
    count: int,
    weights: dict[str, float],
    b0_t: float,
    te_ms: float,
    box: tuple[float, ...] | None,
    avoid_points: np.ndarray | None = None,
    avoid_mm: float = 2.0,
    max_tries: int = 200,
    accept: Callable[[np.ndarray], bool] | None = None,
) -> list[CMBSpec]:
    """Draw ``count`` CMBs: region by ``weights``, centre uniform over that region's eligible
    voxels (+ sub-voxel jitter), apart from each other (≥ sum of bloom radii + 1 mm) and at
    least bloom radius + ``avoid_mm`` from every point of ``avoid_points`` (MNI mm, e.g. vein
    centre lines and calcifications). ``accept(centre)`` (MNI mm) may veto a site (e.g. one
    that atrophy turned into CSF). CMBs that find no place in ``max_tries`` are dropped.
    """
    from scipy.spatial import cKDTree

    anat = load_anatomy()
    pools = {r: eligible_indices(r, box) for r in REGIONS if weights.get(r, 0.0) > 0}
    names = [r for r in REGIONS if r in pools and len(pools[r]) > 0]
    if not names or count == 0:
        return []
    w = np.asarray([weights[r] for r in names], dtype=np.float64)
    w /= w.sum()
    tree = cKDTree(avoid_points) if avoid_points is not None and len(avoid_points) else None
    out: list[CMBSpec] = []
    radii: list[float] = []
    centres: list[np.ndarray] = []
    for _ in range(count):
        m, a = sample_moment(rng)
        region = names[int(rng.choice(len(names), p=w))]
        pool = pools[region]
        r_app = max(bloom_radius_mm(m, b0_t, te_ms), a)
        for _try in range(max_tries):
            ijk = pool[int(rng.integers(len(pool)))] + rng.uniform(-0.5, 0.5, size=3)
            c = anat.affine[:3, :3] @ ijk + anat.affine[:3, 3]
            if any(
                np.linalg.norm(c - c2) < r_app + r2 + 1.0
                for c2, r2 in zip(centres, radii, strict=True)
            ):
                continue
            if tree is not None and tree.query(c)[0] < r_app + avoid_mm:
                continue
            if accept is not None and not accept(c):
                continue
            out.append(CMBSpec(tuple(float(v) for v in c), m, a, region))
            radii.append(r_app)
            centres.append(c)
            break
    return out
