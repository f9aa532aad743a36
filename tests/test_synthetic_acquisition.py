"""Sampling through a warp (cmbbench.datasets.synthetic.acquisition): only where a region reaches."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cmbbench.datasets.synthetic.acquisition import (
    Grid,
    acquire,
    acquire_mask,
    nearest_voxels,
    sample_near,
)

SHAPE = (23, 19, 17)


def _full(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return ndi.map_coordinates(
        volume, coords, order=1, mode="nearest", prefilter=False, output=np.float32
    ).ravel()


@pytest.mark.parametrize("seed", range(6))
def test_sample_near_matches_full_sampling_and_leaves_out_only_unreached_voxels(seed):
    rng = np.random.default_rng(seed)
    volume = rng.uniform(0.0, 1.0, SHAPE).astype(np.float32)
    region = np.zeros(SHAPE, dtype=bool)
    for _ in range(3):  # a few blobs, one of them on the volume's edge
        c = rng.integers(0, SHAPE)
        c[seed % 3] = 0 if seed % 2 else SHAPE[seed % 3] - 1
        r = rng.integers(1, 4)
        region[tuple(slice(max(v - r, 0), v + r + 1) for v in c)] = True
    # sample points: a smooth random map that runs a few voxels past every edge
    grid = np.stack(np.meshgrid(*[np.linspace(-3, n + 2, 15) for n in SHAPE], indexing="ij"))
    coords = (grid + rng.normal(0.0, 0.7, grid.shape)).astype(np.float32)

    idx, values = sample_near(volume, coords, region, nearest_voxels(coords, SHAPE))
    full = _full(volume, coords)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values.view(np.uint32), full[idx].view(np.uint32))  # bitwise

    # every voxel left out is blind to the region: changing the region's values changes none
    out = np.setdiff1d(np.arange(full.size), idx)
    changed = np.where(region, np.float32(7.0), volume)
    np.testing.assert_array_equal(_full(changed, coords)[out], full[out])
    # and the sampled set is not everything (the test would be empty otherwise)
    assert 0 < len(idx) < full.size


def test_sample_near_empty_region():
    coords = np.zeros((3, 4, 4, 4), dtype=np.float32)
    region = np.zeros(SHAPE, dtype=bool)
    idx, values = sample_near(
        np.ones(SHAPE, np.float32), coords, region, nearest_voxels(coords, SHAPE)
    )
    assert idx.shape == values.shape == (0,)


def test_nearest_voxels_rounds_and_clamps():
    # points (x, y, z): (0.4, 1.6, 2.5) -> (0, 2, 2) (rint: ties to even); (-3, 30, 5.2) -> (0, 18, 5)
    coords = np.array([[0.4, -3.0], [1.6, 30.0], [2.5, 5.2]], dtype=np.float32)
    flat = nearest_voxels(coords, SHAPE)
    np.testing.assert_array_equal(flat, np.ravel_multi_index(([0, 0], [2, 18], [2, 5]), SHAPE))


@pytest.mark.parametrize("slice_mm", [1.0, 3.0, 4.0])  # 4 mm: a box profile that gives exactly 0.5
@pytest.mark.parametrize("seed", range(4))
def test_acquire_mask_through_warp_matches_full_acquisition(seed, slice_mm):
    rng = np.random.default_rng(seed)
    # a blobby mask that touches one face of the volume (so that its edge is sampled there)
    mask = ndi.gaussian_filter(rng.standard_normal(SHAPE), 2.0) > 0.0
    mask[:, :, :2] |= rng.random((SHAPE[0], SHAPE[1], 2)) < 0.5
    grid = Grid(np.diag([1.0, 1.0, slice_mm, 1.0]), (15, 15, 15))
    axes = np.meshgrid(*[np.linspace(-3, n + 2, 15) for n in SHAPE], indexing="ij")
    coords = (np.stack(axes) + rng.normal(0.0, 0.7, (3, 15, 15, 15))).astype(np.float32)
    sim_affine, pose = np.eye(4), np.eye(4)

    full = acquire(mask.astype(np.float32), sim_affine, pose, grid, coords=coords) >= 0.5
    fast = acquire_mask(
        mask, sim_affine, pose, grid, coords=coords, nearest=nearest_voxels(coords, SHAPE)
    )
    assert fast.dtype == bool and fast.shape == grid.shape
    np.testing.assert_array_equal(fast, full)
    assert 0 < full.sum() < full.size  # both sides of the edge are sampled


@pytest.mark.parametrize("seed", range(4))
def test_acquire_through_warp_skips_only_all_zero_neighbourhoods(seed):
    rng = np.random.default_rng(seed)
    # signal inside a blob (touching a face), exact zeros around it, as a brain in its crop
    inside = ndi.gaussian_filter(rng.standard_normal(SHAPE), 2.0) > 0.3
    inside[:, :, :2] |= rng.random((SHAPE[0], SHAPE[1], 2)) < 0.3
    volume = np.where(inside, rng.uniform(0.1, 2.0, SHAPE), 0.0).astype(np.float32)
    grid = Grid(np.diag([1.0, 1.0, 3.0, 1.0]), (15, 15, 15))
    axes = np.meshgrid(*[np.linspace(-3, n + 2, 15) for n in SHAPE], indexing="ij")
    coords = (np.stack(axes) + rng.normal(0.0, 0.7, (3, 15, 15, 15))).astype(np.float32)
    args = (volume, np.eye(4), np.eye(4), grid)

    full = acquire(*args, coords=coords)
    fast = acquire(*args, coords=coords, nearest=nearest_voxels(coords, SHAPE))
    assert fast.dtype == np.float32 and fast.shape == grid.shape
    np.testing.assert_array_equal(fast.view(np.uint32), full.view(np.uint32))  # bitwise
    assert 0 < np.count_nonzero(full) < full.size
