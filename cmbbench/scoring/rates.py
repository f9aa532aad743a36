"""Detection rates: the one recall / precision / F1 of cmbbench, and safe division.

The precision, recall and F1 that cmbbench reports (pooled, per case, per stratum, per
bootstrap resample, per post-processing grid point) come from :func:`detection_rates`, so
they share one empty-input convention: **a rate whose denominator is 0 is undefined (NaN)**,
never 0 or 1.

- recall ``= tp / (tp + fn)``, NaN when ``tp + fn == 0`` (no CMB);
- precision ``= tp / (tp + fp)``, NaN when ``tp + fp == 0`` (no prediction);
- F1 ``= 2tp / (2tp + fp + fn)``, NaN when ``tp == fp == fn == 0`` (neither).

So a scan with CMBs and no prediction has recall 0, precision NaN and F1 0; a scan with
predictions and no CMB has recall NaN, precision 0 and F1 0; an empty scan has all three NaN.
Callers that average per-case rates skip the NaNs and say how many they skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

R = TypeVar("R", float, NDArray[np.float64])


def ratio(num: ArrayLike, den: ArrayLike) -> NDArray[np.float64]:
    """Elementwise ``num / den`` (float64, broadcast) with NaN where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    safe = np.where(den != 0, den, 1.0)
    return np.where(den != 0, num / safe, np.nan)


@dataclass(frozen=True)
class DetectionRates(Generic[R]):
    """Recall, precision and F1 (see the module docstring); floats, or arrays of one shape."""

    recall: R
    precision: R
    f1: R


@overload
def detection_rates(tp: float, fp: float, fn: float) -> DetectionRates[float]: ...
@overload
def detection_rates(
    tp: ArrayLike, fp: ArrayLike, fn: ArrayLike
) -> DetectionRates[NDArray[np.float64]]: ...
def detection_rates(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> DetectionRates:
    """Recall ``tp/(tp+fn)``, precision ``tp/(tp+fp)``, F1 ``2tp/(2tp+fp+fn)``, NaN where a
    denominator is 0.

    ``tp``, ``fp``, ``fn``: counts (lesions or scans; whole numbers, or bootstrap-weighted
    sums), Python numbers or arrays that broadcast together. Computed in float64, elementwise.
    Returns Python floats when all three inputs are scalars, else float64 arrays of the
    broadcast shape.
    """
    t, p, n = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (tp, fp, fn)))
    recall = ratio(t, t + n)
    precision = ratio(t, t + p)
    f1 = ratio(2 * t, 2 * t + p + n)
    if t.ndim == 0:
        return DetectionRates(float(recall), float(precision), float(f1))
    return DetectionRates(recall, precision, f1)
