"""The per-case table behind every aggregate: validated cases as arrays, and the headline
statistics of any case-weighting (the point estimate, or each bootstrap resample).

:func:`prepare_cases` validates a result set and puts it in canonical order (sorted by case
id); :class:`CaseTable` holds its per-case numbers as arrays of shape ``(n_cases,)``;
:func:`headline_stats` turns case-weight rows ``w`` (shape ``(B, n_cases)``) into the headline
metrics of each row. All of it works from stored records: nothing here reads an image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmbbench.errors import InputError
from cmbbench.io import dumps
from cmbbench.scoring.rates import detection_rates, ratio
from cmbbench.scoring.records import CaseResult, Lesion, ScoreReport
from cmbbench.scoring.rules import rule_key


# --------------------------------------------------------------------------- small helpers
def optional_float(x: Any) -> float | None:
    """Plain float, or ``None`` for NaN/Inf/None (an undefined value in the JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def mean_median(values: NDArray) -> dict[str, float | None]:
    """``{"mean", "median"}`` of a 1-D array; both ``None`` when it is empty."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "median": None}
    return {"mean": optional_float(v.mean()), "median": optional_float(np.median(v))}


def is_ignored(lesion: Lesion) -> bool:
    """A lesion flagged ``attrs["ignore"]`` (it touches an ignore region; not counted)."""
    return bool(lesion.attrs.get("ignore", False))


# --------------------------------------------------------------------------- validation
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
    first_params = dumps(rule_key(first.params))
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
        if dumps(rule_key(c.params)) != first_params:
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
    """Per-case numbers as float64 arrays of shape ``(n_cases,)``, cases in canonical order.

    Counts (``tp``, ``fp``, ``fn``, ``n_gt``, ``n_pred``), voxel counts (``gt_vox``,
    ``pred_vox``, ``inter_vox``), the voxel volume (``voxel_mm3``, mm³), the official valdo F1
    (NaN when undefined or absent) and, per case, the matched pairs' count, sum of Dice,
    ``2 × Σ overlap`` and ``Σ (|pred| + |gt|)`` (voxels; zeros when segmentation metrics are
    unavailable, ``seg_reason`` saying why).
    """

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

    def per_case(self) -> dict[str, tuple[NDArray, NDArray]]:
        """``{"recall"|"precision"|"f1": (values, defined)}``, each of shape ``(n_cases,)``:
        the per-case rates (NaN where undefined) and the boolean mask of defined cases."""
        rates = detection_rates(self.tp, self.fp, self.fn)
        return {
            "recall": (rates.recall, (self.tp + self.fn) > 0),
            "precision": (rates.precision, (self.tp + self.fp) > 0),
            "f1": (rates.f1, (2 * self.tp + self.fp + self.fn) > 0),
        }

    def headline_columns(self) -> dict[str, NDArray]:
        """The per-case columns the headline metrics are sums of, by name, in a fixed order.

        A row of case weights ``w`` turns each into a (weighted) sum; :func:`headline_stats`
        takes all of them in one product ``w @ columns``.
        """
        pc = self.per_case()
        s_pos_true = self.n_gt >= 1  # the headline subject-level F1 is at k = 1
        s_pos_pred = self.n_pred >= 1
        valdo_def = np.isfinite(self.valdo)
        cols: dict[str, NDArray] = {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "n_gt": self.n_gt,
        }
        for m in ("recall", "precision", "f1"):  # per-case value where defined, else 0
            cols[f"{m}_sum"] = np.where(pc[m][1], pc[m][0], 0.0)
        for m in ("recall", "precision", "f1"):  # 1 where the per-case value is defined
            cols[f"{m}_defined"] = pc[m][1].astype(float)
        cols["pair_n"] = self.pair_n
        cols["pair_dice"] = self.pair_dice
        cols["pair_overlap2"] = self.pair_overlap2
        cols["pair_size"] = self.pair_size
        cols["subject_tp"] = (s_pos_true & s_pos_pred).astype(float)
        cols["subject_fp"] = (~s_pos_true & s_pos_pred).astype(float)
        cols["subject_fn"] = (s_pos_true & ~s_pos_pred).astype(float)
        cols["valdo_sum"] = np.where(valdo_def, self.valdo, 0.0)
        cols["valdo_defined"] = valdo_def.astype(float)
        return cols


def weighted_sums(t: CaseTable, w: NDArray) -> dict[str, NDArray]:
    """Every headline column summed under each row of case weights ``w`` (``(B, n_cases)``):
    ``{name: (B,)}``, all from one matrix product."""
    cols = t.headline_columns()
    sums = w @ np.stack(list(cols.values()), axis=1)
    return {name: sums[:, j] for j, name in enumerate(cols)}


def headline_stats(t: CaseTable, w: NDArray) -> dict[str, NDArray]:
    """Headline statistics for case-weight rows ``w`` (shape ``(B, n_cases)``) -> ``(B,)`` each."""
    s = weighted_sums(t, w)
    n_scans = w.sum(axis=1)
    micro = detection_rates(s["tp"], s["fp"], s["fn"])
    subject = detection_rates(s["subject_tp"], s["subject_fp"], s["subject_fn"])
    out = {
        "recall_micro": micro.recall,
        "precision_micro": micro.precision,
        "f1_micro": micro.f1,
        "recall_macro": ratio(s["recall_sum"], s["recall_defined"]),
        "precision_macro": ratio(s["precision_sum"], s["precision_defined"]),
        "f1_macro": ratio(s["f1_sum"], s["f1_defined"]),
        "fp_per_scan": ratio(s["fp"], n_scans),
        "fp_per_cmb": ratio(s["fp"], s["n_gt"]),
        "subject_f1_at_1": subject.f1,
    }
    if t.seg_reason is None:
        out["dice_tp_macro"] = ratio(s["pair_dice"], s["pair_n"])
        out["dice_tp_micro"] = ratio(s["pair_overlap2"], s["pair_size"])
    if t.cases[0].rule == "valdo":
        out["valdo_f1_mean"] = ratio(s["valdo_sum"], s["valdo_defined"])
    return out
