"""``render_dipole`` against a direct reference over a grid of seeded inputs.

The library builds each box's squared offsets from three per-axis tables; the reference
below computes the same quantity the direct way, from a (V, S, 3) array of every sub-voxel
sample point. For a diagonal affine the two must agree bit for bit: the element values and
the summation order are the same, so the generated datasets cannot change.
"""

from __future__ import annotations

import numpy as np
import pytest

from cmbbench.datasets.synthetic.lesions import (
    GAMMA_RAD_PER_S_T,
    MAX_BOX_MM,
    _subsample_offsets,
    bloom_radius_mm,
    render_dipole,
)


def _reference(centre, moment, core, affine, shape, b0, te, model):
    vox = np.abs(np.diag(affine)[:3]).astype(np.float64)
    c = np.asarray(centre, dtype=np.float64)
    half = min(max(bloom_radius_mm(moment, b0, te, phase_rad=0.1), core) + vox.max(), MAX_BOX_MM)
    inv = np.linalg.inv(affine)
    cijk = inv[:3, :3] @ c + inv[:3, 3]
    lo = np.maximum(np.floor(cijk - half / vox).astype(int), 0)
    hi = np.minimum(np.ceil(cijk + half / vox).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    ijk = np.stack([g.ravel() for g in grids], axis=1).astype(np.float64)
    x = ijk[:, None, :] + _subsample_offsets(vox)[None, :, :]
    d = x * np.diag(affine[:3, :3]) + (affine[:3, 3] - c)
    r2 = np.einsum("vsk,vsk->vs", d, d)
    if model == "gaussian":
        sigma = max(bloom_radius_mm(moment, b0, te), core) / 1.5
        att = np.abs(1.0 - 0.9 * np.exp(-r2 / (2.0 * sigma * sigma))).mean(axis=1)
    else:
        k = GAMMA_RAD_PER_S_T * b0 * te * 1e-3 * moment * 1e-6 / (4.0 * np.pi)
        r2 = np.maximum(r2, 1e-12)
        phi = k * (3.0 * d[..., 2] ** 2 / r2 - 1.0) / (r2 * np.sqrt(r2))
        outside = r2 > core * core
        re = np.where(outside, np.cos(phi), 0.0).mean(axis=1)
        im = np.where(outside, np.sin(phi), 0.0).mean(axis=1)
        att = np.sqrt(re * re + im * im)
    box = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return slices, np.clip(att, 0.0, 1.0).astype(np.float32).reshape(box)


VOXELS = [(1.0, 1.0, 3.0), (0.45, 0.45, 4.0), (0.94, 0.94, 1.75), (0.5, 0.5, 0.8)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("voxel", VOXELS)
@pytest.mark.parametrize("model", ["dipole", "gaussian"])
def test_matches_reference_bit_for_bit(seed: int, voxel: tuple, model: str) -> None:
    rng = np.random.default_rng(seed)
    shape = (40, 44, 24)
    # a flipped first axis and a shifted origin, as a real RAS/LPS header gives
    affine = np.diag([-voxel[0], voxel[1], voxel[2], 1.0])
    affine[:3, 3] = rng.uniform(-20, 20, 3)
    ext = np.abs(np.diag(affine)[:3]) * np.array(shape)
    lo_mm = np.minimum(affine[:3, 3], affine[:3, 3] + np.diag(affine)[:3] * np.array(shape))
    for _ in range(4):
        # centres inside the grid, near an edge (clipped box) and just outside it
        centre = lo_mm + rng.uniform(-0.1, 1.1, 3) * ext
        moment = float(rng.uniform(0.3, 3.0))
        core = float(rng.uniform(0.3, 1.5))
        b0, te = float(rng.choice([1.5, 3.0])), float(rng.uniform(10.0, 25.0))
        args = (centre, moment, core, affine, shape, b0, te)
        got, want = render_dipole(*args, model=model), _reference(*args, model)
        assert (got is None) == (want is None), f"box presence differs at centre {centre}"
        if want is None:
            continue
        assert got[0] == want[0]
        assert got[1].dtype == np.float32 and got[1].shape == want[1].shape
        assert got[1].tobytes() == want[1].tobytes(), f"attenuation differs at centre {centre}"


def test_box_outside_grid_is_none() -> None:
    # a 1 × 1 × 3 mm grid spans x in [0, 10) mm; a dipole 200 mm away has at most a
    # MAX_BOX_MM half-box, which cannot reach the grid
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    assert (
        render_dipole(np.array([200.0, 5.0, 5.0]), 1.0, 0.5, affine, (10, 10, 4), 3.0, 20.0) is None
    )


def test_dipole_is_dark_at_the_centre_and_mirror_symmetric() -> None:
    # the centre sits on a voxel centre (10, 10, 5) of a 1 mm isotropic grid; the dipole
    # field is even in x, y and z about it, so the box must be symmetric under each flip
    # (to float32 rounding), dark in the middle (the core gives no signal) and ~1 at the rim
    affine = np.eye(4)
    out = render_dipole(np.array([10.0, 10.0, 5.0]), 2.0, 0.8, affine, (21, 21, 11), 3.0, 20.0)
    assert out is not None
    slices, att = out
    centre_idx = (10 - slices[0].start, 10 - slices[1].start, 5 - slices[2].start)
    assert att[centre_idx] < 0.3
    assert att[0, 0, 0] > 0.9
    for axis in range(3):
        if slices[axis] == slice(0, (21, 21, 11)[axis]):
            np.testing.assert_allclose(att, np.flip(att, axis=axis), atol=1e-6)
