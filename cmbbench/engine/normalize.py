"""Per-image intensity standardisation.

VALDO cohorts differ in raw intensity scale by two orders of magnitude, so every image is
standardised on its own: z-score with the mean and standard deviation of a foreground
(head/brain) estimate. The estimate is an Otsu threshold on the image's intensities
(between its 0.5th and 99.5th percentiles), which does not depend on the intensity scale:
``normalize_image(100 * x) == normalize_image(x)``. Dark CMBs inside the brain may fall
below the threshold; that only leaves them out of the statistics — every voxel is
normalised. This module does not import torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import numpy as np

from cmbbench.errors import CmbbenchError, InputError

NormalizeMethod = Literal["zscore_foreground", "zscore", "none"]
METHODS: tuple[str, ...] = ("zscore_foreground", "zscore", "none")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D array of intensities (maximises between-class variance)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """bool (X, Y, Z) estimate of the head/brain: voxels above the Otsu threshold of the
    intensities clipped to the 0.5th–99.5th percentiles (falls back to all voxels when the
    estimate is nearly empty, e.g. a constant image)."""
    image = np.asarray(image)
    lo, hi = np.percentile(image, [0.5, 99.5])
    if hi <= lo:
        return np.ones(image.shape, dtype=bool)
    t = otsu_threshold(np.clip(image, lo, hi))
    mask = image > t
    if mask.sum() < max(8, image.size // 1000):
        return np.ones(image.shape, dtype=bool)
    return mask


def normalize_image(
    image: np.ndarray,
    *,
    method: NormalizeMethod = "zscore_foreground",
    mask: np.ndarray | None = None,
    case_id: str | None = None,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Standardise one image (X, Y, Z) to float32.

    ``"zscore_foreground"``: ``(image - mean) / std`` with the statistics of ``mask`` (bool,
    same shape) or, when ``mask`` is None, of :func:`foreground_mask`. ``"zscore"``: the
    statistics of all voxels. ``"none"``: a float32 copy. A constant region gives std 0,
    which is treated as 1 (the result is then centred only). Non-finite voxels raise
    :class:`~cmbbench.errors.InputError` naming ``case_id``. ``exclude`` (bool, same shape,
    optional): voxels without a value (e.g. the NaNs outside VALDO's T1/T2 brain mask), left
    out of the statistics, allowed to be non-finite, and set to 0 in the result.
    """
    if method not in METHODS:
        raise InputError(
            f"unknown normalisation {method!r}; expected one of {METHODS}", case=case_id
        )
    if exclude is not None:
        return _normalize_excluding(image, np.asarray(exclude, bool), method, mask, case_id)
    image = np.asarray(image)
    if image.ndim != 3:
        raise InputError(f"image must be 3-D (X, Y, Z), got shape {image.shape}", case=case_id)
    data = image.astype(np.float32, copy=True)
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(f"image has {int(bad.sum())} non-finite voxels (NaN/inf)", case=case_id)
    if method == "none":
        return data
    if method == "zscore":
        sel = data
    else:
        if mask is None:
            mask = foreground_mask(data)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise InputError(
                f"normalisation mask shape {mask.shape} differs from image shape {data.shape}",
                case=case_id,
            )
        sel = data[mask] if mask.any() else data
    stats = sel.astype(np.float64)
    mean, std = float(stats.mean()), float(stats.std())
    if not std > 0:
        std = 1.0
    data -= np.float32(mean)
    data /= np.float32(std)
    return data


def _normalize_excluding(
    image: np.ndarray,
    exclude: np.ndarray,
    method: NormalizeMethod,
    mask: np.ndarray | None,
    case_id: str | None,
) -> np.ndarray:
    """:func:`normalize_image` with the ``exclude`` voxels zeroed before, left out of the
    statistics and zeroed again after."""
    image = np.asarray(image)
    if exclude.shape != image.shape:
        raise InputError(
            f"exclude mask shape {exclude.shape} differs from image shape {image.shape}",
            case=case_id,
        )
    data = np.where(exclude, np.float32(0), np.asarray(image, np.float32))
    keep = ~exclude
    if method == "zscore_foreground":
        fg = foreground_mask(data) if mask is None else np.asarray(mask, bool)
        keep = keep & fg if (keep & fg).any() else keep
    if method != "none":
        method = "zscore_foreground"  # the statistics of ``keep`` (all valued voxels for zscore)
    out = normalize_image(data, method=method, mask=keep, case_id=case_id)
    out[exclude] = 0
    return out


def normalizer(method: str) -> Callable[[np.ndarray], np.ndarray]:
    """The per-image normalisation named by ``recipe.normalize``, as a function of an image."""
    if method not in METHODS:
        raise CmbbenchError(f"recipe normalize {method!r}: expected one of {METHODS}")
    return functools.partial(normalize_image, method=method)
