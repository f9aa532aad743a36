"""Score one case: :func:`score_case` validates the inputs, labels both sides, applies a
matching rule and returns a :class:`~cmbbench.scoring.records.CaseResult`.

Input kinds (``SCORING.md``, "Objects"):

- prediction: a bool/integer mask (values 0/1), a float probability map in [0, 1]
  (binarised at ``threshold``; a component's score is its maximum probability), or an
  ``(N, 3)`` array of world-mm points (scores from ``pred_scores``). With ``pred_kind="auto"``
  a float array whose non-zero voxels are all exactly 1 is a mask (no scores).
- ground truth: a binary mask, an instance-label map (``gt_kind="instance"``: each positive
  integer value is one CMB, its id the value), or ``(N, 3)`` world-mm points.

Geometry: spacing (mm) and affine come from the caller; with only ``spacing`` the affine is
``diag(spacing)``; with neither, the case is an error (a voxel size is never assumed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from cmbbench.errors import InputError, UnknownNameError
from cmbbench.io import spacing_from_affine
from cmbbench.scoring import matching
from cmbbench.scoring.components import (
    CONNECTIVITIES,
    Components,
    equivalent_diameter_mm,
    foreground_indices,
    label_instances,
    label_mask,
    nonzero_indices,
    overlap_table,
    values_at,
    world_centres,
)
from cmbbench.scoring.records import RULES, CaseResult, Lesion, Pair

GtKind = Literal["auto", "mask", "instance", "points"]
PredKind = Literal["auto", "mask", "probability", "points"]

DEFAULT_MAX_DISTANCE_MM = 5.0  # the distance rule's default (recorded in every result)
AFFINE_ATOL = 1e-3  # mm: largest allowed difference between two affines' entries


# --------------------------------------------------------------------------- geometry
def resolve_geometry(
    spacing: Any, affine: Any, case_id: str
) -> tuple[tuple[float, float, float], NDArray[np.float64]]:
    """``(spacing mm, affine 4×4)`` from whichever of the two is given (both: must agree)."""
    aff = None
    if affine is not None:
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise InputError(
                f"affine must be a finite 4x4 matrix; received shape {aff.shape}", case=case_id
            )
        if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise InputError("affine is singular", case=case_id)
    sp = None
    if spacing is not None:
        sp_arr = np.asarray(spacing, dtype=np.float64).reshape(-1)
        if sp_arr.shape != (3,) or not np.all(np.isfinite(sp_arr)) or np.any(sp_arr <= 0):
            raise InputError(
                f"spacing must be 3 positive voxel sizes in mm; received {spacing!r}", case=case_id
            )
        sp = tuple(float(v) for v in sp_arr)
    if aff is None and sp is None:
        raise InputError(
            "voxel spacing unknown: pass spacing=(sx, sy, sz) in mm or a 4x4 affine", case=case_id
        )
    if aff is None:
        aff = np.diag([*sp, 1.0])  # type: ignore[misc]
    aff_sp = spacing_from_affine(aff)
    if sp is None:
        sp = aff_sp
    elif not np.allclose(sp, aff_sp, rtol=1e-4, atol=1e-6):
        raise InputError(
            f"spacing {sp} disagrees with the affine's voxel size {aff_sp}", case=case_id
        )
    return sp, aff  # type: ignore[return-value]


def check_affines(
    pred_affine: NDArray, gt_affine: NDArray, case_id: str, *, atol: float = AFFINE_ATOL
) -> None:
    """Raise :class:`InputError` when two 4×4 affines differ by more than ``atol`` (mm)."""
    a = np.asarray(pred_affine, dtype=np.float64)
    b = np.asarray(gt_affine, dtype=np.float64)
    diff = float(np.max(np.abs(a - b)))
    if not diff <= atol:
        raise InputError(
            f"prediction and ground-truth affines differ (max |difference| {diff:.4g} > {atol:g} mm); "
            f"expected\n{np.array2string(b, precision=4)}\nreceived\n{np.array2string(a, precision=4)}".replace(
                "\n", " "
            ),
            case=case_id,
        )


# --------------------------------------------------------------------------- input kinds
def _is_points(x: Any, kind: str) -> bool:
    if kind == "points":
        return True
    if kind != "auto":
        return False
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    return (arr.ndim == 2 and arr.shape[1] == 3) or (arr.ndim == 1 and arr.size == 0)


def _points(x: Any, what: str, case_id: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 3), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(
            f"{what} points must have shape (N, 3) in world mm; received {arr.shape}", case=case_id
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what} points contain NaN or Inf", case=case_id)
    return arr


def _volume(x: Any, what: str, case_id: str) -> np.ndarray:
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.ndim != 3:
        raise InputError(
            f"{what} must be a 3-D volume; received {arr.ndim}-D with shape {tuple(arr.shape)}",
            case=case_id,
        )
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what} has unsupported dtype {arr.dtype}", case=case_id)
    return arr


def _binary_values_check(vals: NDArray, what: str, case_id: str, hint: str = "") -> None:
    """``vals`` are the values at the non-zero voxels; all must be 1."""
    if vals.dtype == bool or vals.size == 0:
        return
    if vals.dtype.kind == "f" and not np.all(np.isfinite(vals)):
        raise InputError(f"{what} contains NaN or Inf", case=case_id)
    bad = vals != 1
    if np.any(bad):
        examples = ", ".join(f"{v:g}" for v in np.unique(vals[bad])[:5].astype(np.float64))
        raise InputError(
            f"{what} is not binary: values other than 0/1 found ({examples}){hint}", case=case_id
        )


def _prediction_components(
    pred: np.ndarray, kind: str, threshold: float, connectivity: int, case_id: str
) -> tuple[Components, bool]:
    """Label a prediction volume; returns ``(components, has_scores)``."""
    if pred.dtype == bool:
        if kind == "probability":
            raise InputError(
                "pred_kind='probability' needs a float array; received bool", case=case_id
            )
        return label_mask(pred, connectivity), False
    if kind == "mask" or (kind == "auto" and pred.dtype.kind in "iu"):
        fg = nonzero_indices(pred)
        _binary_values_check(
            values_at(pred, fg),
            "prediction mask",
            case_id,
            "; pass a probability map in [0, 1] or a binary mask",
        )
        return label_mask(pred, connectivity, flat=fg), False
    # probability map
    lo, hi = float(np.min(pred)) if pred.size else 0.0, float(np.max(pred)) if pred.size else 0.0
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("prediction contains NaN or Inf", case=case_id)
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"probability map values must lie in [0, 1]; received range [{lo:g}, {hi:g}]",
            case=case_id,
        )
    mask = pred >= threshold
    fg = foreground_indices(mask)
    vals = values_at(pred, fg)
    if (
        kind == "auto"
        and (vals.size == 0 or np.all(vals == 1))
        and np.count_nonzero(pred) == fg.size
    ):
        return label_mask(mask, connectivity, flat=fg), False  # a float 0/1 mask: no scores
    comps = label_mask(mask, connectivity, flat=fg)
    maxv = np.full(comps.n, -np.inf)
    if comps.n:
        np.maximum.at(maxv, comps.label, vals.astype(np.float64, copy=False))
    return Components(
        comps.shape, comps.flat, comps.label, comps.ids, comps.sizes, comps.centre_vox, maxv
    ), True


def _gt_components(gt: np.ndarray, kind: str, connectivity: int, case_id: str) -> Components:
    fg = nonzero_indices(gt)
    if gt.dtype == bool:
        if kind == "instance":  # a bool instance map holds one CMB (id 1)
            return label_instances(gt, flat=fg, values=np.ones(fg.size, dtype=np.int64))
        return label_mask(gt, connectivity, flat=fg)
    vals = values_at(gt, fg)
    if vals.dtype.kind == "f" and not np.all(np.isfinite(vals)):
        raise InputError("ground truth contains NaN or Inf", case=case_id)
    if kind == "binarise":  # valdo: any non-zero voxel is foreground, labelled
        return label_mask(gt, connectivity, flat=fg)
    if kind == "instance":
        if np.any(vals < 0) or np.any(vals != np.round(vals)):
            raise InputError(
                "instance labels must be non-negative integers; found "
                + ", ".join(
                    f"{v:g}"
                    for v in np.unique(vals[(vals < 0) | (vals != np.round(vals))])[:5].astype(
                        float
                    )
                ),
                case=case_id,
            )
        return label_instances(gt, flat=fg, values=vals.astype(np.int64))
    _binary_values_check(
        vals,
        "ground truth",
        case_id,
        "; declare instance labels (gt_kind='instance', --gt-instance) if each value is one CMB",
    )
    return label_mask(gt, connectivity, flat=fg)


# --------------------------------------------------------------------------- main entry
def score_case(
    pred: Any,
    gt: Any,
    *,
    spacing: Any = None,
    affine: Any = None,
    rule: str = "overlap",
    threshold: float = 0.5,
    connectivity: int = 26,
    min_overlap_voxels: int = 1,
    max_distance_mm: float | None = None,
    gt_kind: GtKind = "auto",
    pred_kind: PredKind = "auto",
    pred_scores: Any = None,
    ignore: Any = None,
    lesion_attrs: Mapping[int, Mapping[str, Any]] | None = None,
    case_id: str = "case",
    meta: Mapping[str, Any] | None = None,
) -> CaseResult:
    """Score one case under one matching rule (``SCORING.md``).

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
        if ignore is not None:
            raise InputError("the valdo rule has no ignore regions", case=case_id)
        params["max_distance_mm"] = float(max_distance_mm)

    sp, aff = resolve_geometry(spacing, affine, case_id)
    pred_is_points = _is_points(pred, pred_kind)
    gt_is_points = _is_points(gt, gt_kind)
    if rule in ("overlap", "valdo") and (pred_is_points or gt_is_points):
        raise InputError(f"the {rule} rule needs masks on both sides, not points", case=case_id)
    if pred_scores is not None and not pred_is_points:
        raise InputError("pred_scores is only for point predictions", case=case_id)

    shape: tuple[int, int, int] | None = None
    pred_c = gt_c = None
    pred_vol = gt_vol = None
    if not pred_is_points:
        pred_vol = _volume(pred, "prediction", case_id)
        shape = tuple(int(s) for s in pred_vol.shape)  # type: ignore[assignment]
    if not gt_is_points:
        gt_vol = _volume(gt, "ground truth", case_id)
        if shape is not None and tuple(gt_vol.shape) != shape:
            raise InputError(
                f"shape mismatch: prediction {shape}, ground truth {tuple(gt_vol.shape)}",
                case=case_id,
            )
        shape = tuple(int(s) for s in gt_vol.shape)  # type: ignore[assignment]
    ign = None
    if ignore is not None:
        ign = _volume(ignore, "ignore mask", case_id)
        if shape is None or tuple(ign.shape) != shape:
            raise InputError(
                f"ignore mask shape {tuple(ign.shape)} does not match the case shape {shape}",
                case=case_id,
            )
        ign = ign.astype(bool, copy=False)

    # ---- components / points
    has_scores = False
    if pred_is_points:
        pred_pts = _points(pred, "prediction", case_id)
        if pred_scores is not None:
            scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
            if scores.shape != (pred_pts.shape[0],) or not np.all(np.isfinite(scores)):
                raise InputError(
                    f"pred_scores must be {pred_pts.shape[0]} finite numbers; received shape {scores.shape}",
                    case=case_id,
                )
            has_scores = True
        pred_mm = pred_pts
    else:
        kind = (
            "mask"
            if pred_kind == "mask"
            else ("probability" if pred_kind == "probability" else "auto")
        )
        pred_c, has_scores = _prediction_components(
            pred_vol, kind, float(threshold), connectivity, case_id
        )
        scores = pred_c.max_value
        pred_mm = world_centres(pred_c.centre_vox, aff)
    if gt_is_points:
        gt_mm = _points(gt, "ground-truth", case_id)
    else:
        gk = "binarise" if rule == "valdo" and gt_kind == "instance" else gt_kind
        if gk == "points":
            raise InputError("gt_kind='points' needs an (N, 3) array", case=case_id)
        gt_c = _gt_components(gt_vol, gk, connectivity, case_id)
        gt_mm = world_centres(gt_c.centre_vox, aff)
    n_pred, n_gt = len(pred_mm), len(gt_mm)

    # ---- overlaps (mask inputs)
    ov_map: dict[tuple[int, int], int] = {}
    inter = 0
    if pred_c is not None and gt_c is not None:
        oa, ob, oc = overlap_table(pred_c, gt_c)
        ov_map = {(int(a), int(b)): int(c) for a, b, c in zip(oa, ob, oc, strict=True)}
        inter = int(oc.sum())

    # ---- rule
    sp_arr = np.asarray(sp)
    vox_mm = None
    if rule == "overlap":
        keys = list(ov_map)
        m = matching.match_overlap(
            np.array([k[0] for k in keys], dtype=np.int64),
            np.array([k[1] for k in keys], dtype=np.int64),
            np.array([ov_map[k] for k in keys], dtype=np.int64),
            n_pred,
            n_gt,
            min_overlap_voxels=int(min_overlap_voxels),
        )
    elif rule == "distance":
        m = matching.match_distance(pred_mm, gt_mm, float(max_distance_mm))  # type: ignore[arg-type]
    elif rule == "point":
        if gt_is_points and pred_c is not None:
            inside = pred_c.component_at(_points_to_flat(gt_mm, aff, shape))  # type: ignore[arg-type]
        elif pred_c is not None and gt_c is not None:
            # mask ground truth: its components' centres are the points
            inside = pred_c.component_at(_points_to_flat(gt_mm, aff, shape))  # type: ignore[arg-type]
        else:
            inside = np.full(n_gt, -1, dtype=np.int64)
        if pred_c is None and max_distance_mm is None:
            raise InputError(
                "the point rule with point predictions needs max_distance_mm", case=case_id
            )
        m = matching.match_point(pred_mm, gt_mm, inside, max_distance_mm)
    else:
        vox_mm = (pred_c.centre_vox * sp_arr, gt_c.centre_vox * sp_arr)  # type: ignore[union-attr]
        m = matching.match_valdo(vox_mm[0], vox_mm[1], float(max_distance_mm))  # type: ignore[arg-type]

    # ---- ignore regions
    ignored = np.zeros(n_pred, dtype=bool)
    if ign is not None and n_pred:
        if pred_c is not None:
            hit_vox = values_at(ign, pred_c.flat)
            touches = np.bincount(pred_c.label, weights=hit_vox, minlength=n_pred) > 0
        else:
            flat = _points_to_flat(pred_mm, aff, shape)  # type: ignore[arg-type]
            touches = np.zeros(n_pred, dtype=bool)
            ok = flat >= 0
            touches[ok] = values_at(ign, flat[ok])
        ignored = touches & ~m.pred_tp
    n_ignored = int(ignored.sum())

    # ---- records
    vox_vol = float(np.prod(sp_arr))
    gt_ids = gt_c.ids if gt_c is not None else np.arange(1, n_gt + 1, dtype=np.int64)
    pred_ids = pred_c.ids if pred_c is not None else np.arange(1, n_pred + 1, dtype=np.int64)
    attrs_map = {int(k): dict(v) for k, v in (lesion_attrs or {}).items()}
    gt_les = _lesions(
        gt_c,
        gt_ids,
        gt_mm,
        m.gt_hit,
        vox_vol,
        None,
        None if vox_mm is None else vox_mm[1],
        attrs_map,
        None,
    )
    pred_les = _lesions(
        pred_c,
        pred_ids,
        pred_mm,
        m.pred_tp,
        vox_vol,
        scores if has_scores else None,
        None if vox_mm is None else vox_mm[0],
        {},
        ignored,
    )
    pairs = []
    for p, g in m.pairs:
        ov = ov_map.get((p, g), 0)
        psz = int(pred_c.sizes[p]) if pred_c is not None else 0
        gsz = int(gt_c.sizes[g]) if gt_c is not None else 0
        if (p, g) in m.distance_mm:
            dist = m.distance_mm[(p, g)]
        else:
            dist = float(np.linalg.norm(pred_mm[p] - gt_mm[g]))
        dice = 2.0 * ov / (psz + gsz) if psz and gsz else 0.0
        pairs.append(Pair(int(pred_ids[p]), int(gt_ids[g]), ov, dist, dice))

    fp = m.fp - n_ignored
    res = CaseResult(
        case_id=str(case_id),
        rule=rule,
        params=params,
        spacing=tuple(float(v) for v in sp),  # type: ignore[arg-type]
        shape=shape,
        n_gt=n_gt,
        n_pred=n_pred - n_ignored,
        tp=m.tp,
        fp=fp,
        fn=m.fn,
        pairs=pairs,
        gt=gt_les,
        pred=pred_les,
        gt_voxels=gt_c.n_voxels if gt_c is not None else 0,
        pred_voxels=pred_c.n_voxels if pred_c is not None else 0,
        intersection_voxels=inter,
        n_ignored=n_ignored,
        valdo_f1=m.valdo_f1,
        meta=dict(meta or {}),
    )
    res.check()
    return res


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


def _lesions(
    comps: Components | None,
    ids: NDArray[np.int64],
    centres_mm: NDArray,
    matched: NDArray[np.bool_],
    voxel_mm3: float,
    scores: NDArray | None,
    vox_mm: NDArray | None,
    attrs_map: dict[int, dict[str, Any]],
    ignored: NDArray[np.bool_] | None,
) -> list[Lesion]:
    out = []
    sizes = comps.sizes if comps is not None else np.zeros(len(ids), dtype=np.int64)
    vols = sizes * voxel_mm3
    diam = equivalent_diameter_mm(vols)
    for k, lid in enumerate(ids):
        attrs = dict(attrs_map.get(int(lid), {}))
        if ignored is not None and ignored[k]:
            attrs["ignore"] = True
        out.append(
            Lesion(
                id=int(lid),
                voxels=int(sizes[k]),
                volume_mm3=float(vols[k]),
                diameter_mm=float(diam[k]),
                centre_mm=tuple(float(v) for v in centres_mm[k]),  # type: ignore[arg-type]
                score=None if scores is None else float(scores[k]),
                matched=bool(matched[k]),
                attrs=attrs,
                centre_vox_mm=None if vox_mm is None else tuple(float(v) for v in vox_mm[k]),  # type: ignore[arg-type]
            )
        )
    return out
