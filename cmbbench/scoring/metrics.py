"""Aggregate metrics over per-case results, with case-bootstrap confidence intervals.

:func:`aggregate` turns a list of :class:`~cmbbench.scoring.records.CaseResult` into every
metric of the scoring contract; formulas and policy are in ``docs/metrics.md``. Nothing
here reads an image.

Layout of the returned dict (JSON-able: floats, ints, strings, lists, dicts; an undefined
value is ``None``)::

    {
      "schema": "cmbbench.metrics/1",
      "rule": str, "params": {...},
      "n_cases": int, "n_cases_with_cmb": int, "n_cases_without_cmb": int,
      "n_gt": int, "n_pred": int,
      "bootstrap": {"n_bootstrap", "seed", "ci", "unit": "case", "method": "percentile"},
      "headline": {name: {"value": float|None, "ci": [lo, hi]|None}, ...},   # see HEADLINE
      "detection": {
        "totals": {"tp", "fp", "fn", "n_gt", "n_pred"},
        "micro": {"recall", "precision", "f1"},
        "macro": {"recall"|"precision"|"f1": {"value", "n_defined", "n_skipped"}},
        "per_case": {"tp"|"fp"|"fn"|"abs_count_diff": {"mean", "median"}},
        "fp_per_scan": float, "fp_per_cmb": float|None,
      },
      "segmentation": {
        "available": bool, "reason": str|None,
        "dice_tp": {"macro", "micro", "n_pairs"},
        "voxel_dice": {"per_case_mean", "n_defined", "n_skipped", "pooled"},
        "abs_volume_diff_mm3": {"mean", "median"}, "volume_diff_mm3_mean": float,
      },
      "subject": {"1": {"k", "tp", "fp", "fn", "tn", "sensitivity", "specificity",
                        "ppv", "npv", "f1", "accuracy"}, "3": ..., ...},
      "sweep": {"available": bool, "reason": str|None, "n_lesions": int,
                "froc": {"threshold": [...], "fp_per_scan": [...], "sensitivity": [...]},
                "sensitivity_at": {"0.125": float, ...}, "cpm": float, "ap": float},
      "strata": {"gt_size": [...], "pred_size": [...], "n_gt_size_unknown", "n_pred_size_unknown",
                 "cohort": {...}, "protocol": {...}, "region_gt": {...}, "region_pred": {...}},
      "valdo": {"mean_f1", "n_defined", "n_skipped"} | None,
    }

``headline`` holds, with bootstrap CIs: ``recall_micro``, ``precision_micro``, ``f1_micro``,
``recall_macro``, ``precision_macro``, ``f1_macro``, ``fp_per_scan``, ``fp_per_cmb``,
``dice_tp_macro``, ``dice_tp_micro`` (mask inputs), ``subject_f1_at_1``, and
``cpm``/``ap`` when scores exist, ``valdo_f1_mean`` under the ``valdo`` rule.

Cases are put in canonical order (sorted by case id; duplicate ids are an error) before the
bootstrap, so the result does not depend on the order in which they were given.

The parts: :mod:`~cmbbench.scoring.table` (validation, the per-case table, the headline
statistics of any case weighting), :mod:`~cmbbench.scoring.sections` (detection,
segmentation, subject level, valdo), :mod:`~cmbbench.scoring.sweep` (FROC, CPM, AP) and
:mod:`~cmbbench.scoring.strata` (size, cohort, region); precision/recall/F1 are
:func:`cmbbench.scoring.rates.detection_rates` throughout.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmbbench.errors import InputError
from cmbbench.scoring import froc
from cmbbench.scoring.bootstrap import entry, resample_counts, validate
from cmbbench.scoring.records import CaseResult, ScoreReport
from cmbbench.scoring.rules import OPERATING_PARAMS
from cmbbench.scoring.sections import (
    detection_section,
    segmentation_section,
    subject_level,
    valdo_section,
)
from cmbbench.scoring.strata import strata_section
from cmbbench.scoring.sweep import Sweep, sweep_bootstrap, sweep_section
from cmbbench.scoring.table import CaseTable, headline_stats, prepare_cases

__all__ = [
    "EDGE_CASE_POLICY",
    "HEADLINE",
    "SCHEMA",
    "aggregate",
    "prepare_cases",
    "subject_level",
]

SCHEMA = "cmbbench.metrics/1"

# headline metric key -> human label, in display order
HEADLINE: dict[str, str] = {
    "recall_micro": "Recall (micro, pooled)",
    "precision_micro": "Precision (micro, pooled)",
    "f1_micro": "F1 (micro, pooled)",
    "recall_macro": "Recall (macro, per case)",
    "precision_macro": "Precision (macro, per case)",
    "f1_macro": "F1 (macro, per case)",
    "fp_per_scan": "FP per scan (all scans)",
    "fp_per_cmb": "FP per CMB",
    "dice_tp_macro": "DiceTP (macro, per pair)",
    "dice_tp_micro": "DiceTP (micro, pooled)",
    "subject_f1_at_1": "Subject-level F1 (>=1)",
    "cpm": "CPM (mean sens. 1/8-8 FP/scan)",
    "ap": "Average precision",
    "valdo_f1_mean": "VALDO mean per-case F1",
}

EDGE_CASE_POLICY = """\
**Edge-case policy**

- Every scan counts. A scan with no CMBs and no predictions contributes 0 FP and counts in
  every per-scan denominator (FP per scan, subject-level specificity); it is never skipped.
- FP per scan = total FP / number of scans, negative scans included.
- Per-case recall is undefined when the scan has no CMB; per-case precision is undefined when
  it has no prediction; per-case F1 is undefined when it has neither. Macro averages skip
  undefined values and report how many were skipped.
- Pooled ("micro") metrics are defined whenever their pooled denominator is non-zero.
- Matching is one-to-one: two predictions on one CMB are one TP and one FP; a prediction
  merging two CMBs is one TP and one FN (the `valdo` rule follows the official challenge code).
- Confidence intervals: 95% percentile bootstrap over *cases* (not lesions), fixed seed, the
  number of resamples recorded; resamples where a metric is undefined are left out of its
  interval.
- An empty test set, a missing prediction for a ground-truth case, a shape or affine mismatch,
  NaN/Inf in a prediction or a probability outside [0, 1] is an error naming the case; nothing
  is scored half-way. A missing prediction is scored as empty only when asked (`--missing empty`).
"""


def _shared_params(cases: Sequence[CaseResult]) -> dict[str, Any]:
    """The cases' recorded parameters; an operating parameter (the threshold) that differs
    between cases (several operating points, e.g. cross-validation folds) is ``None`` here
    and stays on each case."""
    params = dict(cases[0].params)
    for k in OPERATING_PARAMS:
        if k in params and any(c.params.get(k) != params[k] for c in cases):
            params[k] = None
    return params


def aggregate(
    cases: Sequence[CaseResult] | ScoreReport,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    count_thresholds: Sequence[int] = (1, 3, 5, 11),
    fp_rates: Sequence[float] = froc.FP_RATES,
    size_bins_mm: Sequence[float] = (2.0, 3.0, 5.0),
) -> dict[str, Any]:
    """Every aggregate metric of the scoring contract, with bootstrap CIs over cases.

    ``cases``: per-case results of one rule and parameter set, or a :class:`ScoreReport`, in
    any order (duplicate case ids, mixed rules or parameters, or an empty list are an
    :class:`InputError`). ``n_bootstrap`` resamples of the cases (0 disables intervals) drawn
    from ``numpy.random.default_rng(seed)`` give percentile intervals of level ``ci``.
    ``count_thresholds``: subject-level thresholds k (scans with ``>= k`` lesions are
    positive). ``fp_rates``: FP-per-scan rates of the sensitivity table and the CPM.
    ``size_bins_mm``: inner edges of the equivalent-diameter bins (mm). Returns the dict
    described in the module docstring.
    """
    validate(n_bootstrap, ci)
    if not count_thresholds or any(int(k) < 1 for k in count_thresholds):
        raise InputError(f"count_thresholds must be integers >= 1; received {count_thresholds!r}")
    if not fp_rates or any(not (float(r) > 0) for r in fp_rates):
        raise InputError(f"fp_rates must be positive numbers; received {fp_rates!r}")
    edges = [float(e) for e in size_bins_mm]
    if not edges or any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] <= 0:
        raise InputError(
            f"size_bins_mm must be increasing positive edges; received {size_bins_mm!r}"
        )
    ordered = prepare_cases(cases)
    t = CaseTable(ordered)
    sw = Sweep(ordered)

    point = {k: v[0] for k, v in headline_stats(t, np.ones((1, t.n))).items()}
    sweep = sweep_section(sw, t, fp_rates)
    if sw.available:
        point["cpm"] = sweep["cpm"] if sweep["cpm"] is not None else math.nan
        point["ap"] = sweep["ap"] if sweep["ap"] is not None else math.nan

    samples: dict[str, NDArray] = {}
    if n_bootstrap > 0:
        w = resample_counts(t.n, n_bootstrap, seed)
        samples = headline_stats(t, w)
        if sw.available:
            samples.update(sweep_bootstrap(sw, t, w, fp_rates))

    headline = {
        name: entry(point[name], samples.get(name), ci) for name in HEADLINE if name in point
    }
    n_with = int(np.sum(t.n_gt > 0))
    return {
        "schema": SCHEMA,
        "rule": ordered[0].rule,
        "params": _shared_params(ordered),
        "n_cases": t.n,
        "n_cases_with_cmb": n_with,
        "n_cases_without_cmb": t.n - n_with,
        "n_gt": int(t.n_gt.sum()),
        "n_pred": int(t.n_pred.sum()),
        "bootstrap": {
            "n_bootstrap": int(n_bootstrap),
            "seed": int(seed),
            "ci": float(ci),
            "unit": "case",
            "method": "percentile",
        },
        "headline": headline,
        "detection": detection_section(t),
        "segmentation": segmentation_section(t),
        "subject": {str(int(k)): subject_level(t.n_gt, t.n_pred, int(k)) for k in count_thresholds},
        "sweep": sweep,
        "strata": strata_section(ordered, edges),
        "valdo": valdo_section(t),
    }
