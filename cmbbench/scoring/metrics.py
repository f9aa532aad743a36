"""Aggregate metrics over per-case results, with case-bootstrap confidence intervals.

:func:`aggregate` turns a list of :class:`~cmbbench.scoring.records.CaseResult` into every
metric of the scoring contract (``SCORING.md``, "Aggregate metrics"); formulas and policy are
in ``docs/metrics.md``. Nothing here reads an image.

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
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmbbench.errors import InputError
from cmbbench.io import dumps
from cmbbench.scoring import froc
from cmbbench.scoring.bootstrap import entry, ratio, resample_counts, validate
from cmbbench.scoring.records import CaseResult, Lesion, ScoreReport

log = logging.getLogger(__name__)

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

_BOOT_CHUNK = 4_000_000  # resample x lesion entries per block in the sweep bootstrap


# --------------------------------------------------------------------------- helpers
def _f(x: Any) -> float | None:
    """Plain float, or ``None`` for NaN/Inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _mean_median(values: NDArray) -> dict[str, float | None]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "median": None}
    return {"mean": _f(v.mean()), "median": _f(np.median(v))}


def _ignored(lesion: Lesion) -> bool:
    return bool(lesion.attrs.get("ignore", False))


def _size_known(lesion: Lesion) -> bool:
    return lesion.voxels > 0 or lesion.diameter_mm > 0


def prepare_cases(cases: Sequence[CaseResult] | ScoreReport) -> list[CaseResult]:
    """Validate case results and return them sorted by case id.

    Raises :class:`InputError` for an empty list, a non-``CaseResult`` entry, duplicate case
    ids, cases scored under different rules or parameters, or inconsistent counts.
    """
    if isinstance(cases, ScoreReport):
        cases = cases.cases
    elif isinstance(cases, CaseResult):
        cases = [cases]
    cases = list(cases)
    if not cases:
        raise InputError("no cases to aggregate (the test set is empty)")
    seen: set[str] = set()
    first = cases[0]
    first_params = dumps(first.params)
    for c in cases:
        if not isinstance(c, CaseResult):
            raise InputError(f"expected CaseResult records; received {type(c).__name__}")
        if c.case_id in seen:
            raise InputError("duplicate case id in the result set", case=c.case_id)
        seen.add(c.case_id)
        if c.rule != first.rule:
            raise InputError(
                f"cases scored under different rules: {first.case_id!r} used {first.rule!r}, "
                f"this case used {c.rule!r}",
                case=c.case_id,
            )
        if dumps(c.params) != first_params:
            raise InputError(
                f"cases scored with different rule parameters: {first.case_id!r} used "
                f"{first.params!r}, this case used {c.params!r}",
                case=c.case_id,
            )
        for name in ("n_gt", "n_pred", "tp", "fp", "fn"):
            if getattr(c, name) < 0:
                raise InputError(
                    f"{name} must be >= 0; received {getattr(c, name)}", case=c.case_id
                )
        try:
            c.check()
        except AssertionError as err:
            raise InputError(str(err), case=c.case_id) from None
    return sorted(cases, key=lambda c: c.case_id)


# --------------------------------------------------------------------------- per-case table
class CaseTable:
    """Per-case numbers as arrays of shape ``(n_cases,)``, cases in canonical order."""

    def __init__(self, cases: list[CaseResult]):
        self.cases = cases
        self.n = len(cases)
        arr = lambda f: np.array([f(c) for c in cases], dtype=np.float64)  # noqa: E731
        self.tp, self.fp, self.fn = arr(lambda c: c.tp), arr(lambda c: c.fp), arr(lambda c: c.fn)
        self.n_gt, self.n_pred = arr(lambda c: c.n_gt), arr(lambda c: c.n_pred)
        self.gt_vox = arr(lambda c: c.gt_voxels)
        self.pred_vox = arr(lambda c: c.pred_voxels)
        self.inter_vox = arr(lambda c: c.intersection_voxels)
        self.voxel_mm3 = arr(lambda c: float(np.prod(c.spacing)))
        self.valdo = arr(lambda c: math.nan if c.valdo_f1 is None else c.valdo_f1)
        self.seg_reason = self._segmentation_reason()
        # matched pairs, per case: count, sum of pair Dice, 2*sum overlap, sum of |pred|+|gt|
        self.pair_n = np.zeros(self.n)
        self.pair_dice = np.zeros(self.n)
        self.pair_overlap2 = np.zeros(self.n)
        self.pair_size = np.zeros(self.n)
        if self.seg_reason is None:
            self._pairs()

    def _segmentation_reason(self) -> str | None:
        for c in self.cases:
            if c.rule == "point":
                return "the 'point' rule has no ground-truth masks"
            if c.n_gt > 0 and c.gt_voxels == 0:
                return f"case {c.case_id!r} has CMBs but no ground-truth voxels (points)"
            if c.n_pred > 0 and c.pred_voxels == 0:
                return f"case {c.case_id!r} has predictions but no predicted voxels (points)"
        return None

    def _pairs(self) -> None:
        for i, c in enumerate(self.cases):
            if not c.pairs:
                continue
            pv = {p.id: p.voxels for p in c.pred}
            gv = {g.id: g.voxels for g in c.gt}
            for p in c.pairs:
                if p.pred_id not in pv or p.gt_id not in gv:
                    raise InputError(
                        f"matched pair ({p.pred_id}, {p.gt_id}) refers to a lesion missing from "
                        "the case's lesion lists",
                        case=c.case_id,
                    )
                self.pair_n[i] += 1
                self.pair_dice[i] += p.dice
                self.pair_overlap2[i] += 2 * p.overlap_voxels
                self.pair_size[i] += pv[p.pred_id] + gv[p.gt_id]

    # per-case rates and their "defined" masks -------------------------------------------
    def per_case(self) -> dict[str, tuple[NDArray, NDArray]]:
        rec_def = (self.tp + self.fn) > 0
        prec_def = (self.tp + self.fp) > 0
        f1_den = 2 * self.tp + self.fp + self.fn
        f1_def = f1_den > 0
        return {
            "recall": (ratio(self.tp, self.tp + self.fn), rec_def),
            "precision": (ratio(self.tp, self.tp + self.fp), prec_def),
            "f1": (ratio(2 * self.tp, f1_den), f1_def),
        }


def headline_stats(t: CaseTable, w: NDArray) -> dict[str, NDArray]:
    """Headline statistics for case-weight rows ``w`` (shape ``(B, n_cases)``) -> ``(B,)`` each."""
    pc = t.per_case()
    s_pos_true = t.n_gt >= 1  # the headline subject-level F1 is at k = 1
    s_pos_pred = t.n_pred >= 1
    valdo_def = np.isfinite(t.valdo)
    cols = np.stack(
        [
            t.tp,
            t.fp,
            t.fn,
            t.n_gt,
            *(np.where(pc[m][1], pc[m][0], 0.0) for m in ("recall", "precision", "f1")),
            *(pc[m][1].astype(float) for m in ("recall", "precision", "f1")),
            t.pair_n,
            t.pair_dice,
            t.pair_overlap2,
            t.pair_size,
            (s_pos_true & s_pos_pred).astype(float),
            (~s_pos_true & s_pos_pred).astype(float),
            (s_pos_true & ~s_pos_pred).astype(float),
            np.where(valdo_def, t.valdo, 0.0),
            valdo_def.astype(float),
        ],
        axis=1,
    )
    S = w @ cols
    tp, fp, fn, ngt = S[:, 0], S[:, 1], S[:, 2], S[:, 3]
    n_scans = w.sum(axis=1)
    out = {
        "recall_micro": ratio(tp, tp + fn),
        "precision_micro": ratio(tp, tp + fp),
        "f1_micro": ratio(2 * tp, 2 * tp + fp + fn),
        "recall_macro": ratio(S[:, 4], S[:, 7]),
        "precision_macro": ratio(S[:, 5], S[:, 8]),
        "f1_macro": ratio(S[:, 6], S[:, 9]),
        "fp_per_scan": ratio(fp, n_scans),
        "fp_per_cmb": ratio(fp, ngt),
        "subject_f1_at_1": ratio(2 * S[:, 14], 2 * S[:, 14] + S[:, 15] + S[:, 16]),
    }
    if t.seg_reason is None:
        out["dice_tp_macro"] = ratio(S[:, 11], S[:, 10])
        out["dice_tp_micro"] = ratio(S[:, 12], S[:, 13])
    if t.cases[0].rule == "valdo":
        out["valdo_f1_mean"] = ratio(S[:, 17], S[:, 18])
    return out


# --------------------------------------------------------------------------- sections
def _detection(t: CaseTable) -> dict[str, Any]:
    tp, fp, fn = t.tp.sum(), t.fp.sum(), t.fn.sum()
    pc = t.per_case()
    macro = {}
    for name, (vals, ok) in pc.items():
        macro[name] = {
            "value": _f(vals[ok].mean()) if ok.any() else None,
            "n_defined": int(ok.sum()),
            "n_skipped": int((~ok).sum()),
        }
    return {
        "totals": {
            "tp": int(tp),
            "fp": int(fp),
            "fn": int(fn),
            "n_gt": int(t.n_gt.sum()),
            "n_pred": int(t.n_pred.sum()),
        },
        "micro": {
            "recall": _f(ratio(tp, tp + fn)),
            "precision": _f(ratio(tp, tp + fp)),
            "f1": _f(ratio(2 * tp, 2 * tp + fp + fn)),
        },
        "macro": macro,
        "per_case": {
            "tp": _mean_median(t.tp),
            "fp": _mean_median(t.fp),
            "fn": _mean_median(t.fn),
            "abs_count_diff": _mean_median(np.abs(t.n_pred - t.n_gt)),
        },
        "fp_per_scan": _f(fp / t.n),
        "fp_per_cmb": _f(ratio(fp, t.n_gt.sum())),
    }


def _segmentation(t: CaseTable) -> dict[str, Any]:
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
        "abs_volume_diff_mm3": _mean_median(np.abs(diff_mm3)),
        "volume_diff_mm3_mean": _f(diff_mm3.mean()),
    }


def subject_level(n_gt: NDArray, n_pred: NDArray, k: int) -> dict[str, Any]:
    """Patient-level metrics for the *positive* class at count threshold ``k``.

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
    return {
        "k": int(k),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": _f(ratio(tp, tp + fn)),
        "specificity": _f(ratio(tn, tn + fp)),
        "ppv": _f(ratio(tp, tp + fp)),
        "npv": _f(ratio(tn, tn + fn)),
        "f1": _f(ratio(2 * tp, 2 * tp + fp + fn)),
        "accuracy": _f(ratio(tp + tn, tp + fp + fn + tn)),
    }


class _Sweep:
    """Scored predicted lesions across cases: scores, TP flags, case index."""

    def __init__(self, cases: list[CaseResult]):
        self.reason: str | None = None
        scores: list[float] = []
        is_tp: list[bool] = []
        case_idx: list[int] = []
        for i, c in enumerate(cases):
            preds = [p for p in c.pred if not _ignored(p)]
            if len(preds) != c.n_pred:
                self.reason = f"case {c.case_id!r} stores {len(preds)} predicted lesions for n_pred={c.n_pred}"
                break
            if any(p.score is None for p in preds):
                self.reason = f"case {c.case_id!r} has predicted lesions without a score"
                break
            matched = {p.id for p in preds if p.matched}
            if c.rule != "valdo" and len(matched) != c.tp:
                raise InputError(
                    f"{len(matched)} predicted lesions are flagged matched but tp={c.tp}",
                    case=c.case_id,
                )
            keep_tp = self._one_per_cmb(c, preds, matched)
            for p in preds:
                if p.id in matched and p.id not in keep_tp:
                    continue  # a second TP on an already-found CMB (valdo ties): neither TP nor FP
                scores.append(float(p.score))  # type: ignore[arg-type]
                is_tp.append(p.id in matched)
                case_idx.append(i)
        if self.reason is None and not scores:
            self.reason = "no predicted lesions"
        self.scores = np.asarray(scores, dtype=np.float64)
        self.is_tp = np.asarray(is_tp, dtype=bool)
        self.case_idx = np.asarray(case_idx, dtype=np.intp)
        if self.reason is None and not np.all(np.isfinite(self.scores)):
            raise InputError("predicted lesion scores must be finite; received NaN or Inf")

    @staticmethod
    def _one_per_cmb(c: CaseResult, preds: list[Lesion], matched: set[int]) -> set[int]:
        """Matched predictions kept as TP: per CMB the highest-scoring one."""
        score = {p.id: p.score for p in preds}
        best: dict[int, int] = {}
        paired: set[int] = set()
        for pair in c.pairs:
            if pair.pred_id not in matched:
                continue
            paired.add(pair.pred_id)
            cur = best.get(pair.gt_id)
            if cur is None or (score[pair.pred_id], -pair.pred_id) > (score[cur], -cur):
                best[pair.gt_id] = pair.pred_id
        # matched predictions absent from the pair list count as TP as they are
        return set(best.values()) | (matched - paired)

    @property
    def available(self) -> bool:
        return self.reason is None


def _sweep_section(sw: _Sweep, t: CaseTable, fp_rates: Sequence[float]) -> dict[str, Any]:
    if not sw.available:
        return {
            "available": False,
            "reason": sw.reason,
            "n_lesions": int(sw.scores.size),
            "froc": None,
            "sensitivity_at": None,
            "cpm": None,
            "ap": None,
        }
    n_gt = int(t.n_gt.sum())
    curve = froc.froc_curve(sw.scores, sw.is_tp, n_gt, t.n)
    sens = froc.sensitivity_at(sw.scores, sw.is_tp, n_gt, t.n, fp_rates)
    return {
        "available": True,
        "reason": None,
        "n_lesions": int(sw.scores.size),
        "froc": {
            "threshold": [_f(x) for x in curve["threshold"]],
            "fp_per_scan": [_f(x) for x in curve["fp_per_scan"]],
            "sensitivity": [_f(x) for x in curve["sensitivity"]],
        },
        "sensitivity_at": {f"{r:g}": _f(v) for r, v in zip(fp_rates, sens, strict=True)},
        "cpm": _f(np.mean(sens)),
        "ap": _f(froc.average_precision(sw.scores, sw.is_tp, n_gt)),
    }


def _sweep_boot(
    sw: _Sweep, t: CaseTable, w: NDArray, fp_rates: Sequence[float]
) -> dict[str, NDArray]:
    """Bootstrap samples of CPM and AP: lesion weights are their case's draw counts."""
    n_b = w.shape[0]
    cpm = np.empty(n_b)
    ap = np.empty(n_b)
    n_gt_b = w @ t.n_gt
    n_scans_b = w.sum(axis=1)
    order, last, _ = froc.sort_by_score(sw.scores)
    tp_sorted = sw.is_tp[order].astype(np.float64)
    case_sorted = sw.case_idx[order]
    step = max(1, _BOOT_CHUNK // max(1, sw.scores.size))
    for lo in range(0, n_b, step):
        hi = min(n_b, lo + step)
        lw = w[lo:hi][:, case_sorted]
        cum_tp = np.cumsum(lw * tp_sorted, axis=1)[:, last]
        cum_fp = np.cumsum(lw * (1.0 - tp_sorted), axis=1)[:, last]
        sens = froc.sensitivity_at_from_counts(
            cum_tp, cum_fp, n_gt_b[lo:hi], n_scans_b[lo:hi], fp_rates
        )
        cpm[lo:hi] = sens.mean(axis=1)
        ap[lo:hi] = froc.average_precision_from_counts(cum_tp, cum_fp, n_gt_b[lo:hi])
    return {"cpm": cpm, "ap": ap}


def _bin_labels(edges: Sequence[float]) -> list[tuple[str, float | None, float | None]]:
    out: list[tuple[str, float | None, float | None]] = [(f"<{edges[0]:g}", None, edges[0])]
    for a, b in itertools.pairwise(edges):
        out.append((f"{a:g}-{b:g}", a, b))
    out.append((f">={edges[-1]:g}", edges[-1], None))
    return out


def _size_strata(
    lesions: list[Lesion], edges: Sequence[float], rate_name: str
) -> tuple[list[dict[str, Any]], int]:
    known = [x for x in lesions if _size_known(x)]
    diam = np.array([x.diameter_mm for x in known], dtype=np.float64)
    hit = np.array([x.matched for x in known], dtype=bool)
    which = np.searchsorted(np.asarray(edges, dtype=np.float64), diam, side="right")
    rows = []
    for j, (label, lo, hi) in enumerate(_bin_labels(edges)):
        sel = which == j
        n, tp = int(sel.sum()), int(hit[sel].sum())
        rows.append(
            {"bin": label, "lo_mm": lo, "hi_mm": hi, "n": n, "tp": tp, rate_name: _f(ratio(tp, n))}
        )
    return rows, len(lesions) - len(known)


def _group_detection(cases: list[CaseResult], key: Callable[[CaseResult], str]) -> dict[str, Any]:
    groups: dict[str, list[CaseResult]] = {}
    for c in cases:
        groups.setdefault(key(c), []).append(c)
    out = {}
    for name in sorted(groups):
        g = groups[name]
        tp = sum(c.tp for c in g)
        fp = sum(c.fp for c in g)
        fn = sum(c.fn for c in g)
        out[name] = {
            "n_cases": len(g),
            "n_gt": sum(c.n_gt for c in g),
            "n_pred": sum(c.n_pred for c in g),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "recall": _f(ratio(tp, tp + fn)),
            "precision": _f(ratio(tp, tp + fp)),
            "f1": _f(ratio(2 * tp, 2 * tp + fp + fn)),
            "fp_per_scan": _f(fp / len(g)),
        }
    return out


def _region_rates(lesions: list[Lesion], rate_name: str) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for x in lesions:
        region = x.attrs.get("region")
        if region is None:
            continue
        row = out.setdefault(str(region), {"n": 0, "tp": 0})
        row["n"] += 1
        row["tp"] += int(bool(x.matched))
    for row in out.values():
        row[rate_name] = _f(ratio(row["tp"], row["n"]))
    return dict(sorted(out.items()))


def _strata(cases: list[CaseResult], edges: Sequence[float]) -> dict[str, Any]:
    gts = [g for c in cases for g in c.gt if not _ignored(g)]
    preds = [p for c in cases for p in c.pred if not _ignored(p)]
    gt_rows, gt_unknown = _size_strata(gts, edges, "recall")
    pred_rows, pred_unknown = _size_strata(preds, edges, "precision")
    out: dict[str, Any] = {
        "size_bins_mm": [float(e) for e in edges],
        "gt_size": gt_rows,
        "n_gt_size_unknown": gt_unknown,
        "pred_size": pred_rows,
        "n_pred_size_unknown": pred_unknown,
    }
    for meta_key in ("cohort", "protocol"):
        if any(c.meta.get(meta_key) is not None for c in cases):
            out[meta_key] = _group_detection(
                cases,
                lambda c, k=meta_key: "unknown" if c.meta.get(k) is None else str(c.meta[k]),
            )
    region_gt = _region_rates(gts, "recall")
    if region_gt:
        out["region_gt"] = region_gt
    region_pred = _region_rates(preds, "precision")
    if region_pred:
        out["region_pred"] = region_pred
    return out


def _valdo(t: CaseTable) -> dict[str, Any] | None:
    if t.cases[0].rule != "valdo":
        return None
    ok = np.isfinite(t.valdo)
    return {
        "mean_f1": _f(t.valdo[ok].mean()) if ok.any() else None,
        "n_defined": int(ok.sum()),
        "n_skipped": int((~ok).sum()),
    }


# --------------------------------------------------------------------------- public
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
    sw = _Sweep(ordered)

    point = {k: v[0] for k, v in headline_stats(t, np.ones((1, t.n))).items()}
    sweep = _sweep_section(sw, t, fp_rates)
    if sw.available:
        point["cpm"] = sweep["cpm"] if sweep["cpm"] is not None else math.nan
        point["ap"] = sweep["ap"] if sweep["ap"] is not None else math.nan

    samples: dict[str, NDArray] = {}
    if n_bootstrap > 0:
        w = resample_counts(t.n, n_bootstrap, seed)
        samples = headline_stats(t, w)
        if sw.available:
            samples.update(_sweep_boot(sw, t, w, fp_rates))

    headline = {
        name: entry(point[name], samples.get(name), ci) for name in HEADLINE if name in point
    }
    n_with = int(np.sum(t.n_gt > 0))
    return {
        "schema": SCHEMA,
        "rule": ordered[0].rule,
        "params": dict(ordered[0].params),
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
        "detection": _detection(t),
        "segmentation": _segmentation(t),
        "subject": {str(int(k)): subject_level(t.n_gt, t.n_pred, int(k)) for k in count_thresholds},
        "sweep": sweep,
        "strata": _strata(ordered, edges),
        "valdo": _valdo(t),
    }
