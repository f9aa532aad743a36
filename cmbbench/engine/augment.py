"""Patch augmentation on numpy arrays (run inside data-loading workers).

All functions take an explicit ``numpy.random.Generator`` so that a patch's augmentation is
a pure function of the sampler's (seed, sample index).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def random_flip(
    arrays: list[np.ndarray], rng: np.random.Generator, axes: tuple[int, ...] = (0, 1, 2)
) -> list[np.ndarray]:
    """Flip all ``arrays`` together along each spatial axis with probability 0.5; each is
    (X, Y, Z) or (C, X, Y, Z) (every channel flipped alike), ``axes`` count spatial axes."""
    for ax in axes:
        if rng.random() < 0.5:
            arrays = [np.flip(a, axis=ax + a.ndim - 3) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def random_rotate(
    image: np.ndarray,
    others: list[np.ndarray],
    rng: np.random.Generator,
    max_deg: float,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rotate in-plane (about the third array axis) by a uniform angle in ±``max_deg`` degrees.

    ``image`` (X, Y, Z), or (C, X, Y, Z) with every channel rotated by the same angle, is
    interpolated linearly (edges replicated); ``others`` (label / valid masks, (X, Y, Z))
    with nearest neighbour, so instance values survive.
    """
    angle = float(rng.uniform(-max_deg, max_deg))
    if max_deg <= 0 or abs(angle) < 1e-3:
        return image, others
    if image.ndim == 4:
        img = np.stack([_rotate_linear(c, angle) for c in image])
    else:
        img = _rotate_linear(image, angle)
    rot = [
        ndimage.rotate(o, angle, axes=(0, 1), reshape=False, order=0, mode="constant", cval=0)
        for o in others
    ]
    return img.astype(np.float32, copy=False), rot


def _rotate_linear(image: np.ndarray, angle: float) -> np.ndarray:
    """One (X, Y, Z) image rotated in-plane by ``angle`` degrees, linear, edges replicated."""
    return ndimage.rotate(image, angle, axes=(0, 1), reshape=False, order=1, mode="nearest")


def random_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain U(0.9, 1.1), offset U(−0.1, 0.1) and Gaussian noise (σ up to 0.05) on a
    standardised image (units: standard deviations of the image)."""
    gain = rng.uniform(0.9, 1.1)
    offset = rng.uniform(-0.1, 0.1)
    sigma = rng.uniform(0.0, 0.05)
    out = image * np.float32(gain) + np.float32(offset)
    if sigma > 0:
        out = out + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return out.astype(np.float32, copy=False)


def augment_patch(
    image: np.ndarray,
    label: np.ndarray,
    valid: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool = True,
    rotate_deg: float = 0.0,
    intensity: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the configured augmentations to one patch, (X, Y, Z) or (C, X, Y, Z), and its
    (X, Y, Z) label/valid masks: flips and rotation are the same for every channel, the
    intensity change is drawn for each channel on its own (channel order)."""
    if flip:
        image, label, valid = random_flip([image, label, valid], rng)
    if rotate_deg > 0:
        image, (label, valid) = random_rotate(image, [label, valid], rng, rotate_deg)
    if intensity:
        if image.ndim == 4:
            image = np.stack([random_intensity(c, rng) for c in image])
        else:
            image = random_intensity(image, rng)
    return image, label, valid
