"""Confidence sweep over scored predicted lesions: FROC, sensitivity at FP rates, CPM, AP.

Pure numpy functions. The input is one entry per predicted lesion: its ``score`` (shape
``(L,)``, finite) and whether it is a true positive (``is_tp``, shape ``(L,)``, bool), plus the
total number of ground-truth CMBs ``n_gt`` (missed CMBs included) and the number of scans
``n_scans`` (scans without CMBs included).

The matching is fixed at the scoring threshold: lowering the score threshold ``t`` keeps the
predictions with ``score >= t`` and never re-matches, so the sweep can only *remove*
predictions. Tied scores form one operating point (they enter or leave together).

Operating points, for the distinct scores ``t_1 > t_2 > ... > t_G``:
``TP(t) = #{tp lesions with score >= t}``, ``FP(t) = #{fp lesions with score >= t}``,
sensitivity ``TP/n_gt``, FP per scan ``FP/n_scans``, precision ``TP/(TP+FP)``; the origin
(nothing kept: 0 FP, sensitivity 0) is an operating point too.

- **sensitivity at r FP/scan**: the highest sensitivity among the operating points whose FP
  per scan is ``<= r`` (an achievable threshold; no interpolation between points).
- **CPM** (the LUNA16 competition performance metric): the mean sensitivity at
  1/8, 1/4, 1/2, 1, 2, 4 and 8 FP per scan.
- **AP**: ``sum_g (R_g - R_{g-1}) * P_g`` over operating points, with recall ``R`` relative to
  all ``n_gt`` CMBs (CMBs never predicted keep AP below 1); the non-interpolated step
  definition of scikit-learn's ``average_precision_score``.

The ``*_from_counts`` functions take cumulative counts with any leading batch shape, so that a
bootstrap evaluates all resamples at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cmbbench.errors import InputError

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _check(scores: ArrayLike, is_tp: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    t = np.asarray(is_tp).reshape(-1)
    if s.shape != t.shape:
        raise InputError(
            f"scores and is_tp differ in length: expected equal, received {s.size} and {t.size}"
        )
    if not np.all(np.isfinite(s)):
        raise InputError("lesion scores must be finite; received NaN or Inf")
    return s, t.astype(bool)


def sort_by_score(
    scores: ArrayLike,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Order lesions by descending score and find the tie groups.

    Returns ``(order, group_end, thresholds)``: ``order`` sorts the lesions by descending score
    (stable), ``group_end[g]`` is the index (into the sorted order) of the last lesion of the
    ``g``-th distinct score and ``thresholds[g]`` that score (descending, shape ``(G,)``).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    if ss.size == 0:
        return order, np.zeros(0, dtype=np.intp), np.zeros(0)
    last = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
    return order, last, ss[last]


def cumulative_counts(
    scores: ArrayLike, is_tp: ArrayLike, weights: NDArray | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Cumulative TP and FP counts at each distinct score threshold (descending).

    ``weights`` (shape ``(..., L)``, optional) multiplies each lesion, e.g. by how often its
    case was drawn in each bootstrap resample. Returns ``(thresholds (G,), cum_tp (..., G),
    cum_fp (..., G))``.
    """
    s, t = _check(scores, is_tp)
    order, last, thr = sort_by_score(s)
    tp_sorted = t[order].astype(np.float64)
    if weights is None:
        w = np.ones_like(tp_sorted)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape[-1] != s.size:
            raise InputError(
                f"weights must have {s.size} entries on the last axis; received shape {w.shape}"
            )
        w = w[..., order]
    cum_tp = np.cumsum(w * tp_sorted, axis=-1)[..., last]
    cum_fp = np.cumsum(w * (1.0 - tp_sorted), axis=-1)[..., last]
    return thr, cum_tp, cum_fp


def sensitivity_at_from_counts(
    cum_tp: NDArray,
    cum_fp: NDArray,
    n_gt: ArrayLike,
    n_scans: ArrayLike,
    fp_rates: Sequence[float] = FP_RATES,
) -> NDArray[np.float64]:
    """Sensitivity at each FP-per-scan rate; shape ``(..., len(fp_rates))``.

    ``cum_tp``/``cum_fp`` have shape ``(..., G)`` (non-decreasing along the last axis);
    ``n_gt`` and ``n_scans`` broadcast against the leading shape. NaN where ``n_gt == 0``,
    and where the rate is **not reached**: the curve ends (its last operating point) below
    ``r`` FP per scan with CMBs still missed, so no threshold of these lesions says what the
    model finds at that rate; the last value is never repeated past the curve's end. (A
    curve that ends with every CMB found has its sensitivity, 1, at every higher rate.)
    """
    cum_tp = np.asarray(cum_tp, dtype=np.float64)
    cum_fp = np.asarray(cum_fp, dtype=np.float64)
    lead = cum_tp.shape[:-1]
    n_gt = np.broadcast_to(np.asarray(n_gt, dtype=np.float64), lead)
    n_scans = np.broadcast_to(np.asarray(n_scans, dtype=np.float64), lead)
    # prepend the origin (nothing kept) so that an index of 0 means "no operating point"
    zeros = np.zeros((*lead, 1))
    tp0 = np.concatenate([zeros, cum_tp], axis=-1)
    fp_end = cum_fp[..., -1] if cum_fp.shape[-1] else np.zeros(lead)
    all_found = (cum_tp[..., -1] if cum_tp.shape[-1] else np.zeros(lead)) >= n_gt
    out = np.empty((*lead, len(fp_rates)))
    with np.errstate(invalid="ignore", divide="ignore"):
        for j, r in enumerate(fp_rates):
            allowed = cum_fp <= (r * n_scans)[..., None] + 1e-9  # counts are whole numbers
            k = allowed.sum(axis=-1)  # cum_fp is non-decreasing: the first k points qualify
            tp_at = np.take_along_axis(tp0, k[..., None], axis=-1)[..., 0]
            reached = (fp_end >= r * n_scans - 1e-9) | all_found
            out[..., j] = np.where((n_gt > 0) & reached, tp_at / n_gt, np.nan)
    return out


def average_precision_from_counts(
    cum_tp: NDArray, cum_fp: NDArray, n_gt: ArrayLike
) -> NDArray[np.float64]:
    """Average precision from cumulative counts ``(..., G)``; NaN where ``n_gt == 0``."""
    cum_tp = np.asarray(cum_tp, dtype=np.float64)
    cum_fp = np.asarray(cum_fp, dtype=np.float64)
    lead = cum_tp.shape[:-1]
    n_gt = np.broadcast_to(np.asarray(n_gt, dtype=np.float64), lead)
    d_tp = np.diff(cum_tp, axis=-1, prepend=0.0)
    kept = cum_tp + cum_fp
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(kept > 0, cum_tp / np.where(kept > 0, kept, 1.0), 0.0)
        ap = (d_tp * prec).sum(axis=-1) / n_gt
    return np.where(n_gt > 0, ap, np.nan)


def froc_curve(
    scores: ArrayLike, is_tp: ArrayLike, n_gt: int, n_scans: int
) -> dict[str, NDArray[np.float64]]:
    """The FROC operating points, origin first.

    Returns arrays of shape ``(G + 1,)``: ``threshold`` (``+inf`` for the origin, then the
    distinct scores descending), ``fp_per_scan``, ``sensitivity`` (NaN when ``n_gt == 0``),
    ``tp`` and ``fp`` (cumulative counts).
    """
    _validate_totals(n_gt, n_scans)
    thr, cum_tp, cum_fp = cumulative_counts(scores, is_tp)
    tp = np.r_[0.0, cum_tp]
    fp = np.r_[0.0, cum_fp]
    sens = tp / n_gt if n_gt > 0 else np.full(tp.shape, np.nan)
    return {
        "threshold": np.r_[np.inf, thr],
        "fp_per_scan": fp / n_scans,
        "sensitivity": sens,
        "tp": tp,
        "fp": fp,
    }


def sensitivity_at(
    scores: ArrayLike,
    is_tp: ArrayLike,
    n_gt: int,
    n_scans: int,
    fp_rates: Sequence[float] = FP_RATES,
) -> NDArray[np.float64]:
    """Sensitivity at each FP-per-scan rate (shape ``(len(fp_rates),)``); NaN if ``n_gt == 0``."""
    _validate_totals(n_gt, n_scans)
    _, cum_tp, cum_fp = cumulative_counts(scores, is_tp)
    return sensitivity_at_from_counts(cum_tp, cum_fp, n_gt, n_scans, fp_rates)


def cpm(
    scores: ArrayLike,
    is_tp: ArrayLike,
    n_gt: int,
    n_scans: int,
    fp_rates: Sequence[float] = FP_RATES,
) -> float:
    """The competition performance metric: mean sensitivity at ``fp_rates`` FP per scan."""
    return float(np.mean(sensitivity_at(scores, is_tp, n_gt, n_scans, fp_rates)))


def average_precision(scores: ArrayLike, is_tp: ArrayLike, n_gt: int) -> float:
    """Average precision over the ranked predicted lesions; NaN when ``n_gt == 0``."""
    _validate_totals(n_gt, 1)
    _, cum_tp, cum_fp = cumulative_counts(scores, is_tp)
    return float(average_precision_from_counts(cum_tp, cum_fp, n_gt))


def _validate_totals(n_gt: int, n_scans: int) -> None:
    if n_gt < 0:
        raise InputError(f"n_gt must be >= 0; received {n_gt}")
    if n_scans <= 0:
        raise InputError(f"n_scans must be > 0 (every scan counts); received {n_scans}")
