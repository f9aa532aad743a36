"""Case-resampling bootstrap: resample matrices, percentile intervals, paired p-values.

A resample draws ``n_cases`` cases with replacement. It is stored as a count matrix
``W`` of shape ``(n_bootstrap, n_cases)``: ``W[b, c]`` is how often case ``c`` was drawn in
resample ``b`` (each row sums to ``n_cases``). Any statistic that is a function of per-case
sums is then a matrix product: ``W @ per_case_counts`` gives every resample's totals at once.

The draws come from ``numpy.random.default_rng(seed)``; callers put the cases in a
canonical order (sorted by case id) first, so that the intervals do not depend on the order
in which cases were given. A paired comparison applies the same ``W`` to both result sets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cmbbench.errors import InputError


def validate(n_bootstrap: int, ci: float) -> None:
    """Check bootstrap settings: ``n_bootstrap >= 0`` (0 disables intervals), ``0 < ci < 1``."""
    if (
        not isinstance(n_bootstrap, (int, np.integer))
        or isinstance(n_bootstrap, bool)
        or n_bootstrap < 0
    ):
        raise InputError(f"n_bootstrap must be an integer >= 0; received {n_bootstrap!r}")
    if not (isinstance(ci, (int, float)) and 0.0 < float(ci) < 1.0):
        raise InputError(
            f"ci must be a level strictly between 0 and 1 (e.g. 0.95); received {ci!r}"
        )


def resample_counts(n_cases: int, n_bootstrap: int, seed: int) -> NDArray[np.float64]:
    """Count matrix ``(n_bootstrap, n_cases)`` of cases drawn with replacement (float64)."""
    if n_cases <= 0:
        raise InputError(f"cannot bootstrap an empty set of cases (received {n_cases})")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_cases, size=(n_bootstrap, n_cases))
    flat = idx + (np.arange(n_bootstrap) * n_cases)[:, None]
    counts = np.bincount(flat.ravel(), minlength=n_bootstrap * n_cases)
    return counts.reshape(n_bootstrap, n_cases).astype(np.float64)


def percentile_ci(samples: ArrayLike, ci: float) -> list[float] | None:
    """Percentile interval ``[lo, hi]`` of the defined (non-NaN) samples; ``None`` if none are."""
    s = np.asarray(samples, dtype=np.float64).reshape(-1)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(s, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def two_sided_p(diffs: ArrayLike) -> float | None:
    """Two-sided bootstrap p-value for "no difference" from resampled differences.

    ``p = min(1, 2 * (1 + #{d <= 0 or d >= 0, the smaller side}) / (1 + B))`` over the defined
    resamples: ``p < alpha`` exactly when the percentile interval of level ``1 - alpha``
    (roughly) excludes 0. ``None`` when no resample is defined.
    """
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    side = min(int(np.sum(d <= 0)), int(np.sum(d >= 0)))
    return float(min(1.0, 2.0 * (1 + side) / (1 + d.size)))


def entry(value: float | None, samples: ArrayLike | None, ci: float) -> dict[str, Any]:
    """A headline metric: ``{"value": v, "ci": [lo, hi] or None}`` (undefined -> ``None``)."""
    v = None if value is None or not math.isfinite(float(value)) else float(value)
    if v is None or samples is None:
        return {"value": v, "ci": None}
    return {"value": v, "ci": percentile_ci(samples, ci)}
