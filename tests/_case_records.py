"""Hand-made CaseResult records for the aggregation and comparison tests."""

from __future__ import annotations

import numpy as np

from cmbbench.scoring.records import CaseResult, Lesion, Pair


def make_case(
    cid: str,
    n_gt: int,
    n_pred: int,
    tp: int,
    *,
    rule: str = "overlap",
    scores: list[float] | None = None,
    gt_sizes: list[int] | None = None,
    pred_sizes: list[int] | None = None,
    overlaps: list[int] | None = None,
    gt_diam: list[float] | None = None,
    pred_diam: list[float] | None = None,
    gt_attrs: list[dict] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    meta: dict | None = None,
    valdo_f1: float | None = None,
    params: dict | None = None,
) -> CaseResult:
    """A hand-made case: the first ``tp`` predictions match the first ``tp`` CMBs (id to id)."""
    gt_sizes = gt_sizes or [10] * n_gt
    pred_sizes = pred_sizes or [10] * n_pred
    overlaps = overlaps or [min(gt_sizes[j], pred_sizes[j]) for j in range(tp)]
    gt = [
        Lesion(
            id=j + 1,
            voxels=gt_sizes[j],
            volume_mm3=gt_sizes[j] * float(np.prod(spacing)),
            diameter_mm=gt_diam[j] if gt_diam else 3.0,
            matched=j < tp,
            attrs=gt_attrs[j] if gt_attrs else {},
        )
        for j in range(n_gt)
    ]
    pred = [
        Lesion(
            id=j + 1,
            voxels=pred_sizes[j],
            volume_mm3=pred_sizes[j] * float(np.prod(spacing)),
            diameter_mm=pred_diam[j] if pred_diam else 3.0,
            score=None if scores is None else scores[j],
            matched=j < tp,
        )
        for j in range(n_pred)
    ]
    pairs = [
        Pair(
            pred_id=j + 1,
            gt_id=j + 1,
            overlap_voxels=overlaps[j],
            distance_mm=0.0,
            dice=2 * overlaps[j] / (gt_sizes[j] + pred_sizes[j]),
        )
        for j in range(tp)
    ]
    inter = sum(overlaps[:tp])
    return CaseResult(
        case_id=cid,
        rule=rule,
        params=params if params is not None else {"min_overlap_voxels": 1, "connectivity": 26},
        spacing=spacing,
        shape=(32, 32, 32),
        n_gt=n_gt,
        n_pred=n_pred,
        tp=tp,
        fp=n_pred - tp,
        fn=n_gt - tp,
        pairs=pairs,
        gt=gt,
        pred=pred,
        gt_voxels=sum(gt_sizes[:n_gt]),
        pred_voxels=sum(pred_sizes[:n_pred]),
        intersection_voxels=inter,
        valdo_f1=valdo_f1,
        meta=meta or {},
    )
