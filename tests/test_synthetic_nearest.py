"""The tube rasteriser's nearest-point search against scipy's KD tree (its reference), over a
grid of seeded inputs: the distances and indices must be the tree's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from cmbbench.datasets.synthetic.nearest import nearest_points

SHAPE = (24, 20, 18)


def _affine(kind: str) -> np.ndarray:
    a = np.eye(4)
    a[:3, 3] = (-11.3, -9.7, -8.1)
    if kind == "aniso":  # 0.45 × 0.45 × 4 mm voxels
        a[:3, :3] = np.diag([0.45, 0.45, 4.0])
    elif kind == "oblique":  # rotated 20° about z and 10° about x, 0.9 × 0.9 × 1.75 mm
        cz, sz = np.cos(np.radians(20)), np.sin(np.radians(20))
        cx, sx = np.cos(np.radians(10)), np.sin(np.radians(10))
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        a[:3, :3] = rz @ rx @ np.diag([0.9, 0.9, 1.75])
    elif kind == "flipped":  # radiological x, as many NIfTI files have it
        a[0, 0] = -1.0
    return a


def _case(seed: int, kind: str, n_points: int, bound: float):
    rng = np.random.default_rng(seed)
    affine = _affine(kind)
    # candidate voxels: a random half of the grid, distinct and in flat order as the caller's
    flat = np.flatnonzero(rng.random(int(np.prod(SHAPE))) < 0.5)
    voxels = np.stack(np.unravel_index(flat, SHAPE), axis=1)
    world = voxels @ affine[:3, :3].T + affine[:3, 3]
    # points: random polylines 0.5 mm apart, some leaving the grid
    lo, hi = world.min(axis=0) - 2.0, world.max(axis=0) + 2.0
    starts = rng.uniform(lo, hi, size=(max(n_points // 20, 1), 3))
    dirs = rng.normal(size=starts.shape)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    steps = np.arange(20) * 0.5
    points = (starts[:, None, :] + steps[None, :, None] * dirs[:, None, :]).reshape(-1, 3)
    return points[:n_points], voxels, world, affine, bound


@pytest.mark.parametrize("kind", ["identity", "aniso", "oblique", "flipped"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bound", [0.3, 2.0, 6.2])
def test_matches_the_kd_tree_bit_for_bit(kind, seed, bound):
    points, voxels, world, affine, bound = _case(seed, kind, 200, bound)
    ref_d, ref_i = cKDTree(points).query(world, distance_upper_bound=bound)
    d, i = nearest_points(points, voxels, world, affine, SHAPE, bound)
    assert np.isfinite(ref_d).any() and not np.isfinite(ref_d).all()  # hits and misses
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(i, ref_i)


def test_a_hand_made_case():
    # 1 mm grid at the origin; points at x = 1.2 and x = 3.0 on the line y = z = 0.
    # voxel (0,0,0): 1.2 to point 0; voxel (2,0,0): 0.8 to point 0 (1.0 to point 1 ties not);
    # voxel (4,0,0): 1.0 to point 1; voxel (9,0,0): 6.0 > bound 2.5, a miss (inf, index 2)
    points = np.array([[1.2, 0.0, 0.0], [3.0, 0.0, 0.0]])
    voxels = np.array([[0, 0, 0], [2, 0, 0], [4, 0, 0], [9, 0, 0]])
    world = voxels.astype(float)
    d, i = nearest_points(points, voxels, world, np.eye(4), (10, 1, 1), 2.5)
    np.testing.assert_allclose(d[:3], [1.2, 0.8, 1.0])
    assert d[3] == np.inf
    assert i.tolist() == [0, 0, 1, 2]


def test_no_points_is_all_misses():
    voxels = np.array([[0, 0, 0], [1, 1, 1]])
    d, i = nearest_points(np.zeros((0, 3)), voxels, voxels * 1.0, np.eye(4), (2, 2, 2), 3.0)
    assert np.all(np.isinf(d)) and i.tolist() == [0, 0]


def test_bad_input_says_what_was_expected():
    voxels = np.array([[0, 0, 0]])
    with pytest.raises(ValueError, match="one world point per voxel, got 2 for 1"):
        nearest_points(np.zeros((1, 3)), voxels, np.zeros((2, 3)), np.eye(4), (1, 1, 1), 1.0)
    with pytest.raises(ValueError, match="finite positive distance bound"):
        nearest_points(np.zeros((1, 3)), voxels, np.zeros((1, 3)), np.eye(4), (1, 1, 1), np.inf)
