"""Score one case: :func:`score_case` resolves the rule's parameters, checks and labels both
sides, applies the matching rule, sets aside predictions on ignore regions and returns a
:class:`~cmbbench.scoring.records.CaseResult`.

The steps, each a function: :func:`~cmbbench.scoring.rules.rule_params` (parameters),
:func:`~cmbbench.scoring.inputs.resolve_inputs` (geometry, input kinds, shapes; input kinds
are described in :mod:`cmbbench.scoring.inputs`), :func:`~cmbbench.scoring.inputs.label_prediction`
and :func:`~cmbbench.scoring.inputs.label_ground_truth` (components or points),
:func:`match_case` (the rule), :func:`ignored_predictions` (ignore regions) and
:func:`build_result` (the record).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmbbench.errors import InputError
from cmbbench.scoring import matching
from cmbbench.scoring.components import equivalent_diameter_mm, overlap_table, values_at
from cmbbench.scoring.inputs import (
    AFFINE_ATOL,
    CaseInputs,
    GtKind,
    PredKind,
    Side,
    check_affines,
    label_ground_truth,
    label_prediction,
    resolve_geometry,
    resolve_inputs,
)
from cmbbench.scoring.matching import Matching
from cmbbench.scoring.records import CaseResult, Lesion, Pair
from cmbbench.scoring.rules import (
    DEFAULT_CONNECTIVITY,
    DEFAULT_MIN_OVERLAP_VOXELS,
    DEFAULT_THRESHOLD,
    rule_params,
)

__all__ = [
    "AFFINE_ATOL",
    "GtKind",
    "PredKind",
    "check_affines",
    "resolve_geometry",
    "score_case",
]


def score_case(
    pred: Any,
    gt: Any,
    *,
    spacing: Any = None,
    affine: Any = None,
    rule: str = "overlap",
    threshold: float = DEFAULT_THRESHOLD,
    connectivity: int = DEFAULT_CONNECTIVITY,
    min_overlap_voxels: int = DEFAULT_MIN_OVERLAP_VOXELS,
    max_distance_mm: float | None = None,
    gt_kind: GtKind = "auto",
    pred_kind: PredKind = "auto",
    pred_scores: Any = None,
    ignore: Any = None,
    lesion_attrs: Mapping[int, Mapping[str, Any]] | None = None,
    case_id: str = "case",
    meta: Mapping[str, Any] | None = None,
) -> CaseResult:
    """Score one case under one matching rule (``docs/scoring.md``).

    ``pred``: mask / probability map ``(X, Y, Z)`` or points ``(N, 3)`` world mm.
    ``gt``: binary mask / instance map ``(X, Y, Z)`` or points ``(N, 3)`` world mm.
    ``spacing``: voxel size (mm) per array axis; ``affine``: 4×4 voxel-to-world (mm).
    ``rule``: ``overlap`` | ``distance`` | ``valdo`` | ``point``. ``threshold``: probability
    binarisation (``>=``). ``connectivity``: 6 | 18 | 26. ``min_overlap_voxels``: overlap
    rule. ``max_distance_mm``: distance rule (default 5 mm), point rule (optional: else
    containment only), valdo rule (required; matched when strictly below).
    ``ignore``: bool mask; a predicted component that matches no CMB and overlaps it is not
    counted (``n_ignored``; kept in ``pred`` with ``attrs["ignore"] = True``).
    ``lesion_attrs``: ``{CMB id: {...}}`` copied into the ground-truth lesions' ``attrs``.
    Raises :class:`InputError` naming ``case_id`` for any bad input.
    """
    params = rule_params(
        rule,
        threshold=threshold,
        connectivity=connectivity,
        min_overlap_voxels=min_overlap_voxels,
        max_distance_mm=max_distance_mm,
        case_id=case_id,
    )
    if rule == "valdo" and ignore is not None:
        raise InputError("the valdo rule has no ignore regions", case=case_id)
    inputs = resolve_inputs(
        pred,
        gt,
        spacing=spacing,
        affine=affine,
        rule=rule,
        gt_kind=gt_kind,
        pred_kind=pred_kind,
        pred_scores=pred_scores,
        ignore=ignore,
        case_id=case_id,
    )
    conn = params["connectivity"]
    pred_side = label_prediction(inputs, pred_kind, params["threshold"], conn, pred_scores, case_id)
    gt_side = label_ground_truth(inputs, gt_kind, conn, case_id, binarise=rule == "valdo")
    overlaps = Overlaps.between(pred_side, gt_side)
    m, vox_mm = match_case(rule, params, inputs, pred_side, gt_side, overlaps, case_id)
    if gt_kind == "agreement" and gt_side.comps is not None:
        weights = gt_side.comps.max_value
        lesion_attrs = _with_weights(lesion_attrs, gt_side.ids, weights)
        if rule == "valdo":
            n_pred = len(m.pred_tp)
            m = dataclasses.replace(
                m, valdo_f1=matching.weighted_valdo_f1(m.pairs, m.gt_hit, weights, n_pred)
            )
    ignored = ignored_predictions(inputs, pred_side, m)
    res = build_result(
        case_id,
        rule,
        params,
        inputs,
        pred_side,
        gt_side,
        overlaps,
        m,
        ignored,
        vox_mm=vox_mm,
        lesion_attrs=lesion_attrs,
        meta=meta,
    )
    res.check()
    return res


def _with_weights(
    lesion_attrs: Mapping[int, Mapping[str, Any]] | None, ids: Any, weights: Any
) -> dict[int, dict[str, Any]]:
    """``lesion_attrs`` with each CMB's rater-agreement ``weight`` added."""
    out = {int(k): dict(v) for k, v in (lesion_attrs or {}).items()}
    for lid, w in zip(ids, weights, strict=True):
        out.setdefault(int(lid), {})["weight"] = float(w)
    return out


# --------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class Overlaps:
    """Voxel overlaps of every touching (prediction, CMB) component pair (mask inputs only).

    ``pred_index``, ``gt_index``, ``voxels``: shape ``(K,)``, 0-based component indices,
    sorted by ``(pred_index, gt_index)``; ``total``: intersection of the two masks (voxels).
    """

    pred_index: NDArray[np.int64]
    gt_index: NDArray[np.int64]
    voxels: NDArray[np.int64]
    by_pair: dict[tuple[int, int], int]
    total: int

    @classmethod
    def between(cls, pred: Side, gt: Side) -> Overlaps:
        """The overlap table of two labelled sides (empty when either side is points)."""
        if pred.comps is None or gt.comps is None:
            z = np.zeros(0, dtype=np.int64)
            return cls(z, z, z, {}, 0)
        a, b, c = overlap_table(pred.comps, gt.comps)
        by_pair = {(int(i), int(j)): int(v) for i, j, v in zip(a, b, c, strict=True)}
        return cls(a, b, c, by_pair, int(c.sum()))


def match_case(
    rule: str,
    params: Mapping[str, Any],
    inputs: CaseInputs,
    pred: Side,
    gt: Side,
    overlaps: Overlaps,
    case_id: str,
) -> tuple[Matching, tuple[NDArray[np.float64], NDArray[np.float64]] | None]:
    """Apply ``rule`` with its resolved ``params``; returns the matching and, for the valdo
    rule, the centres it used (voxel index × spacing, mm; prediction and CMB sides)."""
    if rule == "overlap":
        m = matching.match_overlap(
            overlaps.pred_index,
            overlaps.gt_index,
            overlaps.voxels,
            pred.n,
            gt.n,
            min_overlap_voxels=params["min_overlap_voxels"],
        )
        return m, None
    if rule == "distance":
        return matching.match_distance(
            pred.centres_mm, gt.centres_mm, params["max_distance_mm"]
        ), None
    if rule == "point":
        if pred.comps is None and params["max_distance_mm"] is None:
            raise InputError(
                "the point rule with point predictions needs max_distance_mm", case=case_id
            )
        if pred.comps is not None:  # the points (or a mask's CMB centres) inside a component
            flat = _points_to_flat(gt.centres_mm, inputs.affine, inputs.shape)  # type: ignore[arg-type]
            inside = pred.comps.component_at(flat)
        else:
            inside = np.full(gt.n, -1, dtype=np.int64)
        m = matching.match_point(pred.centres_mm, gt.centres_mm, inside, params["max_distance_mm"])
        return m, None
    # valdo: both sides are masks (resolve_inputs checked)
    sp = np.asarray(inputs.spacing)
    vox_mm = (pred.comps.centre_vox * sp, gt.comps.centre_vox * sp)  # type: ignore[union-attr]
    return matching.match_valdo(vox_mm[0], vox_mm[1], params["max_distance_mm"]), vox_mm


def ignored_predictions(inputs: CaseInputs, pred: Side, m: Matching) -> NDArray[np.bool_]:
    """Per prediction (shape ``(n_pred,)``): unmatched and touching the ignore mask."""
    ignored = np.zeros(pred.n, dtype=bool)
    ign = inputs.ignore
    if ign is None or not pred.n:
        return ignored
    if pred.comps is not None:
        hit_vox = values_at(ign, pred.comps.flat)
        touches = np.bincount(pred.comps.label, weights=hit_vox, minlength=pred.n) > 0
    else:
        flat = _points_to_flat(pred.centres_mm, inputs.affine, inputs.shape)  # type: ignore[arg-type]
        touches = np.zeros(pred.n, dtype=bool)
        ok = flat >= 0
        touches[ok] = values_at(ign, flat[ok])
    return touches & ~m.pred_tp


def _points_to_flat(points_mm: NDArray, affine: NDArray, shape: tuple[int, int, int]) -> NDArray:
    """World-mm points to C-order flat indices of the nearest voxel (``-1`` outside)."""
    pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    inv = np.linalg.inv(affine)
    idx = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    out = np.full(pts.shape[0], -1, dtype=np.int64)
    if inside.any():
        out[inside] = np.ravel_multi_index(tuple(idx[inside].T), shape)
    return out


# --------------------------------------------------------------------------- the record
def build_result(
    case_id: str,
    rule: str,
    params: dict[str, Any],
    inputs: CaseInputs,
    pred: Side,
    gt: Side,
    overlaps: Overlaps,
    m: Matching,
    ignored: NDArray[np.bool_],
    *,
    vox_mm: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
    lesion_attrs: Mapping[int, Mapping[str, Any]] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> CaseResult:
    """The case's record: counts (ignored predictions taken out of ``n_pred`` and ``fp``),
    matched pairs, both sides' lesions (sizes in voxels and mm³) and voxel counts."""
    n_ignored = int(ignored.sum())
    vox_vol = float(np.prod(np.asarray(inputs.spacing)))
    attrs_map = {int(k): dict(v) for k, v in (lesion_attrs or {}).items()}
    gt_vox = None if vox_mm is None else vox_mm[1]
    pred_vox = None if vox_mm is None else vox_mm[0]
    return CaseResult(
        case_id=str(case_id),
        rule=rule,
        params=params,
        spacing=tuple(float(v) for v in inputs.spacing),  # type: ignore[arg-type]
        shape=inputs.shape,
        n_gt=gt.n,
        n_pred=pred.n - n_ignored,
        tp=m.tp,
        fp=m.fp - n_ignored,
        fn=m.fn,
        pairs=_pairs(pred, gt, overlaps, m),
        gt=_lesions(gt, m.gt_hit, vox_vol, gt_vox, attrs_map, None),
        pred=_lesions(pred, m.pred_tp, vox_vol, pred_vox, {}, ignored),
        gt_voxels=gt.comps.n_voxels if gt.comps is not None else 0,
        pred_voxels=pred.comps.n_voxels if pred.comps is not None else 0,
        intersection_voxels=overlaps.total,
        n_ignored=n_ignored,
        valdo_f1=m.valdo_f1,
        meta=dict(meta or {}),
    )


def _pairs(pred: Side, gt: Side, overlaps: Overlaps, m: Matching) -> list[Pair]:
    out = []
    for p, g in m.pairs:
        ov = overlaps.by_pair.get((p, g), 0)
        psz = int(pred.comps.sizes[p]) if pred.comps is not None else 0
        gsz = int(gt.comps.sizes[g]) if gt.comps is not None else 0
        if (p, g) in m.distance_mm:
            dist = m.distance_mm[(p, g)]
        else:
            dist = float(np.linalg.norm(pred.centres_mm[p] - gt.centres_mm[g]))
        dice = 2.0 * ov / (psz + gsz) if psz and gsz else 0.0
        out.append(Pair(int(pred.ids[p]), int(gt.ids[g]), ov, dist, dice))
    return out


def _lesions(
    side: Side,
    matched: NDArray[np.bool_],
    voxel_mm3: float,
    vox_mm: NDArray | None,
    attrs_map: dict[int, dict[str, Any]],
    ignored: NDArray[np.bool_] | None,
) -> list[Lesion]:
    out = []
    sizes = side.comps.sizes if side.comps is not None else np.zeros(side.n, dtype=np.int64)
    vols = sizes * voxel_mm3
    diam = equivalent_diameter_mm(vols)
    for k, lid in enumerate(side.ids):
        attrs = dict(attrs_map.get(int(lid), {}))
        if ignored is not None and ignored[k]:
            attrs["ignore"] = True
        out.append(
            Lesion(
                id=int(lid),
                voxels=int(sizes[k]),
                volume_mm3=float(vols[k]),
                diameter_mm=float(diam[k]),
                centre_mm=tuple(float(v) for v in side.centres_mm[k]),  # type: ignore[arg-type]
                score=None if side.scores is None else float(side.scores[k]),
                matched=bool(matched[k]),
                attrs=attrs,
                centre_vox_mm=None if vox_mm is None else tuple(float(v) for v in vox_mm[k]),  # type: ignore[arg-type]
            )
        )
    return out
