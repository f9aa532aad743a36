"""Per-case scoring speed and memory (pytest-benchmark), the SCORING.md "Performance contract".

One 322×375×262 case at 0.5 mm (uint8 masks, as read from NIfTI) with 20 CMBs (spheres,
radius 2-5 voxels) and 45 predicted components (15 on CMBs, 30 elsewhere):

(a) the seed-style baseline: ``scipy.ndimage.label`` of both volumes, then one full-volume
    mask per component;
(b) one ``cc3d`` labelling pass over both volumes (the target: ``score_case`` no slower);
(c) ``score_case`` (overlap rule) on masks, and (d) on a float32 probability map.

Run: ``pytest benchmarks/bench_scoring.py --benchmark-only`` (add ``-s`` to see the memory
line). Targets: (c) >= 50x faster than (a), and no slower than (b).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.ndimage as ndi

from cmbbench.scoring.case import score_case

SHAPE = (322, 375, 262)
SPACING = (0.5, 0.5, 0.5)


def _sphere(vol: np.ndarray, centre, radius: int, value=1) -> None:
    r = radius
    zz, yy, xx = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    ball = zz**2 + yy**2 + xx**2 <= r * r
    x, y, z = centre
    sl = vol[x - r : x + r + 1, y - r : y + r + 1, z - r : z + r + 1]
    sl[ball] = value


def make_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pred uint8, gt uint8, prob float32)`` of the benchmark case (deterministic)."""
    rng = np.random.default_rng(2021)
    gt = np.zeros(SHAPE, dtype=np.uint8)
    pred = np.zeros(SHAPE, dtype=np.uint8)
    prob = np.zeros(SHAPE, dtype=np.float32)
    # centres on a coarse grid so that spheres never touch each other
    grid = np.stack(np.meshgrid(*(np.arange(20, s - 20, 24) for s in SHAPE), indexing="ij"), -1)
    centres = rng.permutation(grid.reshape(-1, 3))[:50]
    for i, c in enumerate(centres[:20]):
        _sphere(gt, c, int(rng.integers(2, 6)))
        if i < 15:  # detected: a shifted sphere
            shifted = c + rng.integers(-1, 2, size=3)
            r = int(rng.integers(2, 5))
            _sphere(pred, shifted, r)
            _sphere(prob, shifted, r, value=float(rng.uniform(0.6, 0.99)))
    for c in centres[20:50]:  # false positives
        r = int(rng.integers(1, 4))
        _sphere(pred, c, r)
        _sphere(prob, c, r, value=float(rng.uniform(0.5, 0.9)))
    return pred, gt, prob


@pytest.fixture(scope="module")
def case():
    return make_case()


def seed_style(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """The seed's counts evaluation: scipy labelling, then one full-volume pass per component."""
    s = np.ones((3, 3, 3))
    lp, n_p = ndi.label(pred, structure=s)
    lg, n_g = ndi.label(gt, structure=s)
    tp = fp = 0
    for k in range(1, n_p + 1):
        m = lp == k
        if np.any(lg[m]):
            tp += 1
        else:
            fp += 1
    fn = sum(1 for j in range(1, n_g + 1) if not np.any(lp[lg == j]))
    return tp, fp, fn


def test_a_seed_style_baseline(benchmark, case):
    pred, gt, _ = case
    tp, fp, fn = benchmark.pedantic(seed_style, args=(pred, gt), rounds=3, iterations=1)
    assert (tp + fp, tp + fn) == (45, 20)


def test_b_cc3d_labelling_both(benchmark, case):
    import cc3d

    pred, gt, _ = case

    def both():
        return cc3d.connected_components(pred), cc3d.connected_components(gt)

    a, b = benchmark(both)
    assert a.max() == 45 and b.max() == 20


def test_c_score_case_masks(benchmark, case):
    pred, gt, _ = case
    r = benchmark(score_case, pred, gt, spacing=SPACING)
    assert (r.n_pred, r.n_gt, r.tp) == (45, 20, 15)
    tracemalloc.start()
    score_case(pred, gt, spacing=SPACING)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    benchmark.extra_info["peak_bytes"] = peak
    benchmark.extra_info["peak_over_uint8_volume"] = peak / gt.nbytes
    print(
        f"\nscore_case peak traced memory {peak / 2**20:.1f} MiB = {peak / gt.nbytes:.2f} x one uint8 volume"
    )


def test_d_score_case_probability(benchmark, case):
    _, gt, prob = case
    r = benchmark(score_case, prob, gt, spacing=SPACING)
    assert (r.n_pred, r.n_gt, r.tp) == (45, 20, 15)
    assert all(p.score is not None for p in r.pred)
    tracemalloc.start()
    score_case(prob, gt, spacing=SPACING)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    benchmark.extra_info["peak_over_float32_volume"] = peak / prob.nbytes
    print(
        f"\nscore_case(prob) peak traced memory {peak / 2**20:.1f} MiB = {peak / prob.nbytes:.2f} x one float32 volume"
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory, case):
    """Four copies of the case as NIfTI files (uint8, gzip), VALDO-style names."""
    from cmbbench.io import save_nifti

    root = tmp_path_factory.mktemp("folders")
    pred, gt, _ = case
    aff = np.diag([-0.5, 0.5, 0.5, 1.0])
    for i in range(4):
        save_nifti(root / "gt" / f"sub-{i:03d}_space-T2S_CMB.nii.gz", gt, aff)
        save_nifti(root / "pred" / f"sub-{i:03d}.nii.gz", pred, aff)
    return root


def test_e_read_folder_only(benchmark, folders):
    from cmbbench.io import load_nifti

    files = sorted((folders / "gt").iterdir()) + sorted((folders / "pred").iterdir())

    def read_all():
        return [load_nifti(f)[0].shape for f in files]

    benchmark.pedantic(read_all, rounds=3, iterations=1)


def test_f_score_folder(benchmark, folders):
    from cmbbench.scoring.folder import score_folder

    rep = benchmark.pedantic(
        score_folder,
        args=(folders / "pred", folders / "gt"),
        kwargs={"n_bootstrap": 200},
        rounds=3,
        iterations=1,
    )
    assert [c.tp for c in rep.cases] == [15] * 4
