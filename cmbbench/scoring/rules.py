"""The matching rules' names, default parameters and parameter validation, in one place.

:func:`rule_params` is what :func:`~cmbbench.scoring.case.score_case` records in
``CaseResult.params``: the CLI, the evaluator and the engine can resolve and check a rule's
parameters with it before scoring anything (``docs/scoring.md``, "Matching rules").

=========  ==========================================================================
rule       recorded parameters (defaults)
=========  ==========================================================================
overlap    ``connectivity`` (26), ``threshold`` (0.5), ``min_overlap_voxels`` (1)
distance   ``connectivity`` (26), ``threshold`` (0.5), ``max_distance_mm`` (5.0 mm)
valdo      ``connectivity`` (26, fixed), ``threshold`` (0.5, fixed),
           ``max_distance_mm`` (required: the challenge never published its value)
point      ``connectivity`` (26), ``threshold`` (0.5), ``max_distance_mm`` (``None``:
           containment only)
=========  ==========================================================================
"""

from __future__ import annotations

import math
from typing import Any

from cmbbench.errors import InputError, UnknownNameError
from cmbbench.scoring.components import CONNECTIVITIES
from cmbbench.scoring.records import RULES

__all__ = [
    "DEFAULT_CONNECTIVITY",
    "DEFAULT_MAX_DISTANCE_MM",
    "DEFAULT_MIN_OVERLAP_VOXELS",
    "DEFAULT_THRESHOLD",
    "OPERATING_PARAMS",
    "RULES",
    "rule_key",
    "rule_params",
]

DEFAULT_THRESHOLD = 0.5  # probability binarisation (>=)
DEFAULT_CONNECTIVITY = 26  # 6 | 18 | 26
DEFAULT_MIN_OVERLAP_VOXELS = 1  # overlap rule
DEFAULT_MAX_DISTANCE_MM = 5.0  # the distance rule's default (recorded in every result)
#: recorded parameters that are a model's operating point, not part of the rule: cases
#: scored at different thresholds (e.g. the folds of a cross-validation, each tuned on its
#: own validation cut) are still scored under one rule
OPERATING_PARAMS: tuple[str, ...] = ("threshold",)


def rule_key(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without :data:`OPERATING_PARAMS`: what must agree between cases to
    aggregate them."""
    return {k: v for k, v in params.items() if k not in OPERATING_PARAMS}


def rule_params(
    rule: str,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    connectivity: int = DEFAULT_CONNECTIVITY,
    min_overlap_voxels: int = DEFAULT_MIN_OVERLAP_VOXELS,
    max_distance_mm: float | None = None,
    case_id: str | None = None,
) -> dict[str, Any]:
    """The validated, fully resolved parameters of ``rule``, exactly as a
    :class:`~cmbbench.scoring.records.CaseResult` records them (table in the module docstring).

    ``threshold``: probability binarisation, in (0, 1]. ``connectivity``: 6 | 18 | 26.
    ``min_overlap_voxels``: integer >= 1 (voxels; recorded by the overlap rule only).
    ``max_distance_mm``: > 0 mm, or ``None`` for the rule's default (distance: 5 mm; point:
    containment only; valdo: an error). Raises :class:`~cmbbench.errors.UnknownNameError`
    for an unknown rule and :class:`~cmbbench.errors.InputError` (naming ``case_id`` when
    given) for a bad value.
    """
    if rule not in RULES:
        raise UnknownNameError("rule", str(rule), list(RULES))
    if connectivity not in CONNECTIVITIES:
        raise InputError(
            f"connectivity must be 6, 18 or 26; received {connectivity!r}", case=case_id
        )
    if not (0.0 < float(threshold) <= 1.0):
        raise InputError(f"threshold must be in (0, 1]; received {threshold!r}", case=case_id)
    if int(min_overlap_voxels) < 1 or int(min_overlap_voxels) != min_overlap_voxels:
        raise InputError(
            f"min_overlap_voxels must be an integer >= 1; received {min_overlap_voxels!r}",
            case=case_id,
        )
    if max_distance_mm is not None and not (math.isfinite(max_distance_mm) and max_distance_mm > 0):
        raise InputError(f"max_distance_mm must be > 0; received {max_distance_mm!r}", case=case_id)
    params: dict[str, Any] = {"connectivity": int(connectivity), "threshold": float(threshold)}
    if rule == "overlap":
        params["min_overlap_voxels"] = int(min_overlap_voxels)
    elif rule == "distance":
        max_distance_mm = DEFAULT_MAX_DISTANCE_MM if max_distance_mm is None else max_distance_mm
        params["max_distance_mm"] = float(max_distance_mm)
    elif rule == "point":
        params["max_distance_mm"] = None if max_distance_mm is None else float(max_distance_mm)
    else:  # valdo
        if max_distance_mm is None:
            raise InputError(
                "the valdo rule needs its distance threshold (max_distance_mm / --max-distance-mm): "
                "the challenge's value was not published with its code",
                case=case_id,
            )
        if connectivity != 26 or float(threshold) != 0.5:
            raise InputError(
                "the valdo rule fixes connectivity 26 and threshold 0.5; received "
                f"connectivity {connectivity}, threshold {threshold}",
                case=case_id,
            )
        params["max_distance_mm"] = float(max_distance_mm)
    return params
