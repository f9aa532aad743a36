"""Per-image intensity standardisation: scale invariance, foreground statistics, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cmbbench.engine.normalize import foreground_mask, normalize_image, otsu_threshold
from cmbbench.errors import InputError


def _head(scale: float = 1.0) -> np.ndarray:
    """A bright noisy ball (the head, ~1000) in dark noisy air (~10), with a dark dot."""
    rng = np.random.default_rng(0)
    x, y, z = np.mgrid[:32, :32, :20]
    ball = (x - 16) ** 2 + (y - 16) ** 2 + ((z - 10) * 1.5) ** 2 < 12**2
    img = np.where(ball, 1000.0, 10.0) + rng.normal(0, 20, ball.shape)
    img[16, 16, 10] = 200.0  # a hypointense "CMB"
    return (img * scale).astype(np.float32)


def test_scale_invariant_across_two_orders_of_magnitude():
    a = normalize_image(_head(1.0))
    b = normalize_image(_head(100.0))
    c = normalize_image(_head(0.01))
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(a, c, atol=1e-4)


def test_foreground_statistics():
    img = _head()
    mask = foreground_mask(img)
    ball_fraction = mask.mean()
    assert 0.2 < ball_fraction < 0.6  # the ball, not the air
    out = normalize_image(img)
    assert abs(out[mask].mean()) < 1e-3 and abs(out[mask].std() - 1) < 1e-3
    assert out[16, 16, 10] < -10  # the dark dot stays far below the brain (≈ (200-1000)/20)
    whole = normalize_image(img, method="zscore")
    assert abs(whole.mean()) < 1e-4 and abs(whole.std() - 1) < 1e-3
    given = normalize_image(img, mask=np.ones(img.shape, bool))
    np.testing.assert_allclose(given, whole, atol=1e-4)


def test_otsu_splits_two_modes():
    v = np.concatenate([np.full(100, 1.0), np.full(300, 9.0)])
    assert 1.0 < otsu_threshold(v) < 9.0


def test_constant_and_bad_images():
    out = normalize_image(np.full((4, 4, 4), 7.0))
    assert np.all(out == 0)
    img = np.zeros((4, 4, 4), np.float32)
    img[0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"case 'c1'.*1 non-finite"):
        normalize_image(img, case_id="c1")
    with pytest.raises(InputError, match="3-D"):
        normalize_image(np.zeros((4, 4)))
    with pytest.raises(InputError, match="unknown normalisation"):
        normalize_image(np.zeros((4, 4, 4)), method="minmax")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="mask shape"):
        normalize_image(np.zeros((4, 4, 4)), mask=np.zeros((2, 2, 2), bool))
