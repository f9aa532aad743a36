"""The evaluator of a dataset: how its predictions are scored, bound in one object (as in ogb).

A dataset's registry entry (:class:`cmbbench.datasets.registry.DatasetInfo`) gives its
:class:`Evaluator`: the matching rule, the rule's parameters, the kind of its labels and
whether its ignore regions count. Everything that scores a prediction against a case — the
``cmbbench score``/``run``/``evaluate`` commands, the engine's validation, post-processing
tuning and test scoring, detectors that re-score themselves — calls :meth:`Evaluator.evaluate`
(a :class:`~cmbbench.cases.Case`) or :meth:`Evaluator.evaluate_arrays` (arrays read from
files); nothing else assembles a :func:`~cmbbench.scoring.case.score_case` call.

This module imports neither torch nor nibabel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cmbbench.errors import InputError
from cmbbench.scoring.candidates import (
    DEFAULT_CANDIDATE_CAP,
    DEFAULT_CANDIDATE_FLOOR,
    Candidates,
    build_candidates,
)
from cmbbench.scoring.records import CaseResult
from cmbbench.scoring.rules import rule_params

if TYPE_CHECKING:
    from cmbbench.cases import Case

LabelKind = Literal["mask", "instance", "points", "agreement"]
#: the score_case keyword parameters a rule can take (the binarisation threshold is the
#: model's operating point and is given per call)
RULE_PARAM_KEYS: tuple[str, ...] = ("connectivity", "min_overlap_voxels", "max_distance_mm")
#: case attributes copied into every scoring record (per-cohort / per-protocol strata)
CASE_META_KEYS: tuple[str, ...] = ("cohort", "protocol")


@dataclass(frozen=True)
class Evaluator:
    """How predictions on one dataset are scored.

    ``rule``: ``overlap`` | ``distance`` | ``valdo`` | ``point``. ``params``: the rule's
    parameters (``connectivity``, ``min_overlap_voxels``, ``max_distance_mm`` in mm), missing
    ones take :func:`~cmbbench.scoring.case.score_case`'s defaults. ``label_kind``: how
    label arrays read from files are interpreted (a :class:`~cmbbench.cases.Case` knows its
    own). ``use_ignore``: whether a case's ignore regions are applied.
    """

    rule: str = "overlap"
    params: Mapping[str, Any] = field(default_factory=dict)
    label_kind: LabelKind = "mask"
    use_ignore: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.params) - set(RULE_PARAM_KEYS))
        if unknown:
            raise InputError(
                f"unknown rule parameter(s) {', '.join(unknown)}; expected {RULE_PARAM_KEYS}"
            )
        # the rule's name and parameters are checked once, here, by the rules' own validator
        rule_params(self.rule, **{k: v for k, v in self.params.items() if v is not None})
        object.__setattr__(self, "params", dict(self.params))

    @property
    def gt_kind(self) -> str:
        """``score_case``'s ``gt_kind`` for label arrays read from files."""
        return self.label_kind if self.label_kind in ("instance", "points", "agreement") else "auto"

    def replace(self, *, rule: str | None = None, **changes: Any) -> Evaluator:
        """A copy with another rule and/or parameters (``None`` values keep the current ones);
        ``label_kind`` and ``use_ignore`` may be changed too."""
        params = dict(self.params)
        fields_: dict[str, Any] = {}
        for key, value in changes.items():
            if value is None:
                continue
            if key in ("label_kind", "use_ignore"):
                fields_[key] = value
            else:
                params[key] = value
        return dataclasses.replace(
            self, rule=self.rule if rule is None else rule, params=params, **fields_
        )

    def evaluate(
        self,
        pred: Any,
        case: Case,
        *,
        threshold: float = 0.5,
        scores: Any = None,
        pred_kind: str = "auto",
        connectivity: int | None = None,
    ) -> CaseResult:
        """Score ``pred`` (a map/mask ``(X, Y, Z)`` in the case's grid, or world-mm points
        ``(N, 3)`` with ``scores``) against ``case``'s label, affine and ignore regions;
        ``threshold`` binarises a probability map (``>=``)."""
        return self.evaluate_arrays(
            pred,
            case.label,
            affine=case.affine,
            case_id=case.case_id,
            threshold=threshold,
            scores=scores,
            pred_kind=pred_kind,
            gt_kind=case.gt_kind,
            ignore=case.ignore if self.use_ignore else None,
            lesion_attrs=case.meta.get("lesion_attrs"),
            meta=case_meta(case),
            connectivity=connectivity,
        )

    def candidates(
        self,
        prob: Any,
        case: Case,
        *,
        operating: Any = None,
        floor: float = DEFAULT_CANDIDATE_FLOOR,
        cap: int = DEFAULT_CANDIDATE_CAP,
    ) -> Candidates:
        """Every candidate of a probability map ``prob`` (X, Y, Z): the components of
        ``prob >= floor``, each scored by its maximum, matched to ``case``'s CMBs under this
        rule; ``operating`` (the map kept at the operating point, same shape) marks the
        candidates holding a kept component. See :mod:`cmbbench.scoring.candidates`."""
        return _candidates(self, prob, case, operating, float(floor), int(cap))

    def evaluate_arrays(
        self,
        pred: Any,
        gt: Any,
        *,
        affine: Any = None,
        spacing: Any = None,
        case_id: str = "case",
        threshold: float = 0.5,
        scores: Any = None,
        pred_kind: str = "auto",
        gt_kind: str | None = None,
        ignore: Any = None,
        lesion_attrs: Mapping[int, Mapping[str, Any]] | None = None,
        meta: Mapping[str, Any] | None = None,
        connectivity: int | None = None,
    ) -> CaseResult:
        """Score a prediction against a ground-truth array (``gt_kind`` defaults to the
        evaluator's label kind); geometry from ``affine`` (4×4, mm) or ``spacing`` (mm)."""
        from cmbbench.scoring.case import score_case

        params = dict(self.params)
        if connectivity is not None:
            params["connectivity"] = int(connectivity)
        return score_case(
            pred,
            gt,
            spacing=spacing,
            affine=affine,
            rule=self.rule,
            threshold=threshold,
            gt_kind=self.gt_kind if gt_kind is None else gt_kind,  # type: ignore[arg-type]
            pred_kind=pred_kind,  # type: ignore[arg-type]
            pred_scores=scores,
            ignore=ignore if self.use_ignore else None,
            lesion_attrs=lesion_attrs,
            case_id=case_id,
            meta=meta,
            **params,
        )


def _candidates(
    evaluator: Evaluator,
    prob: Any,
    case: Case,
    operating: Any,
    floor: float,
    cap: int,
) -> Candidates:
    from cmbbench.scoring.components import label_mask

    prob = np.asarray(prob)
    if prob.dtype.kind != "f":
        raise InputError("candidates need a probability map (float)", case=case.case_id)
    res = evaluator.evaluate(prob, case, threshold=floor, pred_kind="probability")
    hit = None
    if operating is not None:
        op = np.asarray(operating)
        if op.shape != prob.shape:
            raise InputError(
                f"operating-point map shape {op.shape} differs from the map {prob.shape}",
                case=case.case_id,
            )
        comps = label_mask(prob >= floor, int(res.params["connectivity"]))
        kept = (op.reshape(-1)[comps.flat] > 0).astype(np.float64)
        hit = np.bincount(comps.label, weights=kept, minlength=comps.n) > 0
    return build_candidates(res, hit, floor=floor, cap=cap)


def case_meta(case: Case) -> dict[str, Any]:
    """The case attributes copied into its scoring record (:data:`CASE_META_KEYS`)."""
    return {k: case.meta[k] for k in CASE_META_KEYS if k in case.meta}
