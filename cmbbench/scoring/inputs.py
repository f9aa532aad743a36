"""The inputs of one case, checked and labelled: geometry, input kinds, components.

:func:`resolve_inputs` checks the geometry (spacing in mm, 4×4 affine), decides whether each
side is a volume or a list of points and checks shapes and the ignore mask;
:func:`label_prediction` and :func:`label_ground_truth` turn each side into a :class:`Side`
(components or points, centres in world mm, public ids, scores). Input kinds
(``docs/scoring.md``, "Inputs"):

- prediction: a bool/integer mask (values 0/1), a float probability map in [0, 1]
  (binarised at ``threshold``; a component's score is its maximum probability), or an
  ``(N, 3)`` array of world-mm points (scores from ``pred_scores``). With ``pred_kind="auto"``
  a float array whose non-zero voxels are all exactly 1 is a mask (no scores).
- ground truth: a binary mask, an instance-label map (``gt_kind="instance"``: each positive
  integer value is one CMB, its id the value), a rater-agreement map (``gt_kind=
  "agreement"``, declared: values in (0, 1], a CMB is a connected component of the non-zero
  voxels and its weight the component's maximum, e.g. 0.5 where raters disagreed), or
  ``(N, 3)`` world-mm points.

Geometry: with only ``spacing`` the affine is ``diag(spacing)``; with neither, the case is an
error (a voxel size is never assumed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from cmbbench.errors import InputError
from cmbbench.io import spacing_from_affine
from cmbbench.scoring.components import (
    Components,
    foreground_indices,
    label_instances,
    label_mask,
    nonzero_indices,
    values_at,
    world_centres,
)

GtKind = Literal["auto", "mask", "instance", "points", "agreement"]
PredKind = Literal["auto", "mask", "probability", "points"]
GT_KINDS: tuple[str, ...] = ("auto", "mask", "instance", "points", "agreement")
PRED_KINDS: tuple[str, ...] = ("auto", "mask", "probability", "points")

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


# --------------------------------------------------------------------------- case inputs
@dataclass(frozen=True)
class CaseInputs:
    """One case's checked inputs.

    ``spacing``: voxel size (mm) per array axis; ``affine``: 4×4 voxel-to-world (mm);
    ``shape``: the volume shape ``(X, Y, Z)``, ``None`` when both sides are points.
    ``pred``/``gt``: the 3-D volume, or the raw points input when ``*_is_points``.
    ``ignore``: bool volume of ``shape``, or ``None``.
    """

    spacing: tuple[float, float, float]
    affine: NDArray[np.float64]
    shape: tuple[int, int, int] | None
    pred: Any
    gt: Any
    pred_is_points: bool
    gt_is_points: bool
    ignore: NDArray[np.bool_] | None


def resolve_inputs(
    pred: Any,
    gt: Any,
    *,
    spacing: Any,
    affine: Any,
    rule: str,
    gt_kind: str,
    pred_kind: str,
    pred_scores: Any,
    ignore: Any,
    case_id: str,
) -> CaseInputs:
    """Check geometry, input kinds, shapes and the ignore mask (see the module docstring)."""
    if gt_kind not in GT_KINDS:
        raise InputError(f"gt_kind must be one of {GT_KINDS}; received {gt_kind!r}", case=case_id)
    if pred_kind not in PRED_KINDS:
        raise InputError(
            f"pred_kind must be one of {PRED_KINDS}; received {pred_kind!r}", case=case_id
        )
    sp, aff = resolve_geometry(spacing, affine, case_id)
    pred_is_points = _is_points(pred, pred_kind)
    gt_is_points = _is_points(gt, gt_kind)
    if rule in ("overlap", "valdo") and (pred_is_points or gt_is_points):
        raise InputError(f"the {rule} rule needs masks on both sides, not points", case=case_id)
    if pred_scores is not None and not pred_is_points:
        raise InputError("pred_scores is only for point predictions", case=case_id)

    shape: tuple[int, int, int] | None = None
    if not pred_is_points:
        pred = _volume(pred, "prediction", case_id)
        shape = tuple(int(s) for s in pred.shape)  # type: ignore[assignment]
    if not gt_is_points:
        gt = _volume(gt, "ground truth", case_id)
        if shape is not None and tuple(gt.shape) != shape:
            raise InputError(
                f"shape mismatch: prediction {shape}, ground truth {tuple(gt.shape)}",
                case=case_id,
            )
        shape = tuple(int(s) for s in gt.shape)  # type: ignore[assignment]
    ign = None
    if ignore is not None:
        ign = _volume(ignore, "ignore mask", case_id)
        if shape is None or tuple(ign.shape) != shape:
            raise InputError(
                f"ignore mask shape {tuple(ign.shape)} does not match the case shape {shape}",
                case=case_id,
            )
        ign = ign.astype(bool, copy=False)
    return CaseInputs(sp, aff, shape, pred, gt, pred_is_points, gt_is_points, ign)


@dataclass(frozen=True)
class Side:
    """One side of a case (predictions or CMBs) after labelling.

    ``comps``: the components (``None`` for points); ``centres_mm``: world-mm centres,
    shape ``(N, 3)``; ``ids``: public ids, shape ``(N,)`` (component ids, instance labels, or
    1..N for points); ``scores``: per-lesion scores ``(N,)``, ``None`` when unscored.
    """

    comps: Components | None
    centres_mm: NDArray[np.float64]
    ids: NDArray[np.int64]
    scores: NDArray[np.float64] | None = None

    @property
    def n(self) -> int:
        """Number of lesions (components or points)."""
        return len(self.centres_mm)


def label_prediction(
    inputs: CaseInputs,
    pred_kind: str,
    threshold: float,
    connectivity: int,
    pred_scores: Any,
    case_id: str,
) -> Side:
    """The predicted lesions: points (scored by ``pred_scores`` if given), or the components
    of the mask / of the probability map binarised at ``>= threshold`` (scored by their
    maximum probability), with ``connectivity`` 6 | 18 | 26."""
    if inputs.pred_is_points:
        pts = _points(inputs.pred, "prediction", case_id)
        scores = None
        if pred_scores is not None:
            scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
            if scores.shape != (pts.shape[0],) or not np.all(np.isfinite(scores)):
                raise InputError(
                    f"pred_scores must be {pts.shape[0]} finite numbers; received shape {scores.shape}",
                    case=case_id,
                )
        return Side(None, pts, np.arange(1, pts.shape[0] + 1, dtype=np.int64), scores)
    comps, has_scores = _prediction_components(
        inputs.pred, pred_kind, threshold, connectivity, case_id
    )
    centres = world_centres(comps.centre_vox, inputs.affine)
    return Side(comps, centres, comps.ids, comps.max_value if has_scores else None)


def label_ground_truth(
    inputs: CaseInputs,
    gt_kind: str,
    connectivity: int,
    case_id: str,
    *,
    binarise: bool = False,
) -> Side:
    """The CMBs: points, or the components of the mask / instance map. ``binarise`` (the
    valdo rule) labels an instance map's foreground as a mask instead."""
    if inputs.gt_is_points:
        pts = _points(inputs.gt, "ground-truth", case_id)
        return Side(None, pts, np.arange(1, pts.shape[0] + 1, dtype=np.int64))
    kind = "binarise" if binarise and gt_kind == "instance" else gt_kind
    comps = _gt_components(inputs.gt, kind, connectivity, case_id)
    return Side(comps, world_centres(comps.centre_vox, inputs.affine), comps.ids)


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
    if kind == "agreement":  # components of the non-zero voxels, weighted by their maximum
        bad = (vals < 0) | (vals > 1)
        if np.any(bad):
            examples = ", ".join(f"{v:g}" for v in np.unique(vals[bad])[:5].astype(np.float64))
            raise InputError(
                f"rater-agreement labels must lie in (0, 1]; found {examples}", case=case_id
            )
        comps = label_mask(gt, connectivity, flat=fg)
        weight = np.zeros(comps.n)
        if comps.n:
            np.maximum.at(weight, comps.label, vals.astype(np.float64, copy=False))
        return Components(
            comps.shape, comps.flat, comps.label, comps.ids, comps.sizes, comps.centre_vox, weight
        )
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
