"""The confidence sweep of :func:`cmbbench.scoring.metrics.aggregate`: FROC curve,
sensitivity at fixed FP-per-scan rates, CPM and AP over every scored predicted lesion, and
their case-bootstrap samples (formulas in ``docs/metrics.md``, curve maths in
:mod:`cmbbench.scoring.froc`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmbbench.errors import InputError
from cmbbench.scoring import froc
from cmbbench.scoring.candidates import one_tp_per_cmb
from cmbbench.scoring.records import CaseResult
from cmbbench.scoring.table import CaseTable, is_ignored
from cmbbench.scoring.table import optional_float as _f

_BOOT_CHUNK = 4_000_000  # resample x lesion entries per block in the sweep bootstrap


class Sweep:
    """Scored lesions across cases, each shape ``(n_lesions,)``: ``scores``, ``is_tp`` flags
    and ``case_idx`` (the lesion's case in canonical order).

    ``source`` says what is swept: ``"candidates"`` when every case stores its full candidate
    list (:mod:`cmbbench.scoring.candidates`), else ``"operating_point"``: the predicted
    lesions kept at the model's operating point, so the curve ends there. ``reason`` says why
    no sweep is possible (a lesion without a score, lesion lists that do not match the
    counts, no predicted lesion at all); ``None`` when it is.
    """

    def __init__(self, cases: list[CaseResult]):
        self.reason: str | None = None
        self.source = "operating_point"
        self.floor: float | None = None
        self.n_capped = 0
        scores: list[float] = []
        is_tp: list[bool] = []
        case_idx: list[int] = []
        if cases and all(c.candidates is not None for c in cases):
            self.source = "candidates"
            self.floor = max(float(c.candidates.floor) for c in cases)  # type: ignore[union-attr]
            for i, c in enumerate(cases):
                cand = c.candidates
                scores.extend(cand.scores)  # type: ignore[union-attr]
                is_tp.extend(cand.is_tp.tolist())  # type: ignore[union-attr]
                case_idx.extend([i] * len(cand))  # type: ignore[arg-type]
                self.n_capped += int(cand.cap is not None)  # type: ignore[union-attr]
        else:
            for i, c in enumerate(cases):
                preds = [p for p in c.pred if not is_ignored(p)]
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
                keep_tp = one_tp_per_cmb(
                    [p.id for p in preds],
                    [float(p.score) for p in preds],  # type: ignore[arg-type]
                    matched,
                    [(q.pred_id, q.gt_id) for q in c.pairs],
                )
                for p in preds:
                    if p.id in matched and p.id not in keep_tp:
                        continue  # a second TP on an already-found CMB (valdo ties): neither
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

    @property
    def available(self) -> bool:
        """Whether the sweep can be computed (``reason`` is ``None``)."""
        return self.reason is None


def sweep_section(sw: Sweep, t: CaseTable, fp_rates: Sequence[float]) -> dict[str, Any]:
    """The ``sweep`` section: FROC points, sensitivity at each of ``fp_rates`` (FP per scan),
    their mean (CPM) and AP; ``available`` false with the reason when there is no sweep."""
    if not sw.available:
        return {
            "available": False,
            "reason": sw.reason,
            "source": sw.source,
            "candidate_floor": sw.floor,
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
        "source": sw.source,
        "candidate_floor": sw.floor,
        "n_cases_capped": sw.n_capped,
        "n_lesions": int(sw.scores.size),
        "froc": {
            "threshold": [_f(x) for x in curve["threshold"]],
            "fp_per_scan": [_f(x) for x in curve["fp_per_scan"]],
            "sensitivity": [_f(x) for x in curve["sensitivity"]],
        },
        "sensitivity_at": {f"{r:g}": _f(v) for r, v in zip(fp_rates, sens, strict=True)},
        # where the curve ends: rates past it are "not reached" (null), and so is the CPM
        "curve_end": {
            "fp_per_scan": _f(curve["fp_per_scan"][-1]),
            "sensitivity": _f(curve["sensitivity"][-1]),
        },
        "not_reached": [f"{r:g}" for r, v in zip(fp_rates, sens, strict=True) if np.isnan(v)]
        if n_gt > 0
        else [],
        "cpm": _f(np.mean(sens)),
        "ap": _f(froc.average_precision(sw.scores, sw.is_tp, n_gt)),
    }


def sweep_bootstrap(
    sw: Sweep, t: CaseTable, w: NDArray, fp_rates: Sequence[float]
) -> dict[str, NDArray]:
    """Bootstrap samples of CPM and AP, ``{"cpm", "ap"}`` of shape ``(B,)`` for case-weight
    rows ``w`` (``(B, n_cases)``): each lesion weighs its case's draw count."""
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
