"""How small a difference a test split can resolve, before any model has run on it.

:func:`detectable_delta_f1` simulates a **reference pair** of detectors on the split's own
per-case CMB counts and bootstraps their paired ΔF1 over cases, exactly as the leaderboard
does for real rows (:mod:`cmbbench.leaderboard.rankings`: ``2 ×`` the bootstrap SE of ΔF1,
:data:`~cmbbench.leaderboard.rankings.DETECTABLE_SE_FACTOR`). The pair: each detector finds
each CMB with probability ``sensitivity``; the second agrees with the first on a CMB with
probability ``agreement`` and draws afresh otherwise; each makes Poisson false positives per
scan at the rate that gives ``precision``. The figure is the mean over ``n_draws`` simulated
pairs. It is an estimate for a typical pair of similar models (real pairs that disagree more
need larger gaps); the leaderboard prints the observed figure above each table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cmbbench.errors import InputError
from cmbbench.scoring.bootstrap import resample_counts

#: the detectable gap is this many bootstrap SEs of ΔF1 (as on the leaderboard)
SE_FACTOR = 2.0


def _pooled_f1(w: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Pooled F1 per resample: ``w`` (B, N) case counts, per-case ``tp``/``fp``/``fn`` (N,)."""
    t, f, n = w @ tp, w @ fp, w @ fn
    den = 2.0 * t + f + n
    return np.divide(2.0 * t, den, out=np.full_like(den, np.nan), where=den > 0)


def detectable_delta_f1(
    cmbs_per_case: Sequence[int],
    *,
    sensitivity: float = 0.7,
    precision: float = 0.7,
    agreement: float = 0.6,
    n_bootstrap: int = 1000,
    n_draws: int = 5,
    seed: int = 0,
) -> float:
    """Smallest paired ΔF1 (pooled lesion F1) a split with these per-case CMB counts resolves
    for the reference pair described in the module text (2 × bootstrap SE, mean of
    ``n_draws`` simulated pairs). ``cmbs_per_case``: labelled CMBs of each case (N,)."""
    counts = np.asarray(cmbs_per_case, dtype=np.int64)
    if counts.size == 0 or counts.sum() == 0:
        raise InputError("detectable ΔF1 needs a split with at least one labelled CMB")
    for name, v in (
        ("sensitivity", sensitivity),
        ("precision", precision),
        ("agreement", agreement),
    ):
        if not 0.0 < float(v) <= 1.0:
            raise InputError(f"{name} must be in (0, 1]; received {v!r}")
    rng = np.random.default_rng(seed)
    n = counts.size
    fp_rate = sensitivity * counts.sum() * (1.0 / precision - 1.0) / n  # FP per scan
    w = resample_counts(n, n_bootstrap, seed)
    owner = np.repeat(np.arange(n), counts)
    ses = []
    for _ in range(n_draws):
        a = rng.random(owner.size) < sensitivity
        fresh = rng.random(owner.size) < sensitivity
        b = np.where(rng.random(owner.size) < agreement, a, fresh)
        tp_a = np.bincount(owner, a, minlength=n)
        tp_b = np.bincount(owner, b, minlength=n)
        fp_a = rng.poisson(fp_rate, n).astype(np.float64)
        fp_b = rng.poisson(fp_rate, n).astype(np.float64)
        d = _pooled_f1(w, tp_b, fp_b, counts - tp_b) - _pooled_f1(w, tp_a, fp_a, counts - tp_a)
        ses.append(float(np.nanstd(d, ddof=1)))
    return SE_FACTOR * float(np.mean(ses))
