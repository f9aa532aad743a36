"""The point-estimate sections of :func:`cmbbench.scoring.metrics.aggregate`: detection,
segmentation, subject level and the valdo rule's mean per-case F1 (formulas in
``docs/metrics.md``). Each takes the :class:`~cmbbench.scoring.table.CaseTable` of a
validated result set and returns a JSON-able dict (``None`` = undefined)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmbbench.errors import InputError
from cmbbench.scoring.rates import detection_rates, ratio
from cmbbench.scoring.table import CaseTable, mean_median
from cmbbench.scoring.table import optional_float as _f


def detection_section(t: CaseTable) -> dict[str, Any]:
    """Totals, pooled (micro) and per-case mean (macro) rates, per-case count statistics,
    FP per scan (every scan) and FP per CMB."""
    tp, fp, fn = t.tp.sum(), t.fp.sum(), t.fn.sum()
    macro = {}
    for name, (vals, ok) in t.per_case().items():
        macro[name] = {
            "value": _f(vals[ok].mean()) if ok.any() else None,
            "n_defined": int(ok.sum()),
            "n_skipped": int((~ok).sum()),
        }
    micro = detection_rates(tp, fp, fn)
    return {
        "totals": {
            "tp": int(tp),
            "fp": int(fp),
            "fn": int(fn),
            "n_gt": int(t.n_gt.sum()),
            "n_pred": int(t.n_pred.sum()),
        },
        "micro": {
            "recall": _f(micro.recall),
            "precision": _f(micro.precision),
            "f1": _f(micro.f1),
        },
        "macro": macro,
        "per_case": {
            "tp": mean_median(t.tp),
            "fp": mean_median(t.fp),
            "fn": mean_median(t.fn),
            "abs_count_diff": mean_median(np.abs(t.n_pred - t.n_gt)),
        },
        "fp_per_scan": _f(fp / t.n),
        "fp_per_cmb": _f(ratio(fp, t.n_gt.sum())),
    }


def segmentation_section(t: CaseTable) -> dict[str, Any]:
    """DiceTP (macro, micro), voxel-wise Dice (per-case mean, pooled) and volume differences
    (mm³); ``available`` false with the reason when a side has no voxels."""
    if t.seg_reason is not None:
        return {
            "available": False,
            "reason": t.seg_reason,
            "dice_tp": {"macro": None, "micro": None, "n_pairs": int(t.pair_n.sum())},
            "voxel_dice": {"per_case_mean": None, "n_defined": 0, "n_skipped": t.n, "pooled": None},
            "abs_volume_diff_mm3": {"mean": None, "median": None},
            "volume_diff_mm3_mean": None,
        }
    den = t.gt_vox + t.pred_vox
    ok = den > 0
    dice = ratio(2 * t.inter_vox, den)
    diff_mm3 = (t.pred_vox - t.gt_vox) * t.voxel_mm3
    return {
        "available": True,
        "reason": None,
        "dice_tp": {
            "macro": _f(ratio(t.pair_dice.sum(), t.pair_n.sum())),
            "micro": _f(ratio(t.pair_overlap2.sum(), t.pair_size.sum())),
            "n_pairs": int(t.pair_n.sum()),
        },
        "voxel_dice": {
            "per_case_mean": _f(dice[ok].mean()) if ok.any() else None,
            "n_defined": int(ok.sum()),
            "n_skipped": int((~ok).sum()),
            "pooled": _f(ratio(2 * t.inter_vox.sum(), den.sum())),
        },
        "abs_volume_diff_mm3": mean_median(np.abs(diff_mm3)),
        "volume_diff_mm3_mean": _f(diff_mm3.mean()),
    }


def subject_level(n_gt: NDArray, n_pred: NDArray, k: int) -> dict[str, Any]:
    """Patient-level metrics for the *positive* class at count threshold ``k``.

    ``n_gt``, ``n_pred``: per-scan counts of CMBs and predicted lesions, shape ``(n_cases,)``.
    A scan is truly positive when ``n_gt >= k`` and predicted positive when ``n_pred >= k``.
    """
    if k < 1:
        raise InputError(f"count thresholds must be >= 1; received {k}")
    truth = np.asarray(n_gt) >= k
    pred = np.asarray(n_pred) >= k
    tp = int(np.sum(truth & pred))
    fp = int(np.sum(~truth & pred))
    fn = int(np.sum(truth & ~pred))
    tn = int(np.sum(~truth & ~pred))
    rates = detection_rates(tp, fp, fn)
    return {
        "k": int(k),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": _f(rates.recall),
        "specificity": _f(ratio(tn, tn + fp)),
        "ppv": _f(rates.precision),
        "npv": _f(ratio(tn, tn + fn)),
        "f1": _f(rates.f1),
        "accuracy": _f(ratio(tp + tn, tp + fp + fn + tn)),
    }


def valdo_section(t: CaseTable) -> dict[str, Any] | None:
    """Mean of the official per-case F1 over the cases where it is defined (``valdo`` rule
    only; ``None`` under other rules)."""
    if t.cases[0].rule != "valdo":
        return None
    ok = np.isfinite(t.valdo)
    return {
        "mean_f1": _f(t.valdo[ok].mean()) if ok.any() else None,
        "n_defined": int(ok.sum()),
        "n_skipped": int((~ok).sum()),
    }
