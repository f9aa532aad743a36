"""The four matching rules of the scoring contract (``docs/scoring.md``, "Matching rules").

Inputs here are plain arrays (component indices, centres in mm, overlap tables); reading and
labelling volumes is :mod:`cmbbench.scoring.components`' job and building the per-case record
is :mod:`cmbbench.scoring.case`'s. Indices are 0-based component indices.

- :func:`optimal_pairs`: one-to-one assignment that first maximises the number of pairs and,
  among those, the total weight (``overlap``) or minimises it (``distance``, ``point``).
- :func:`match_valdo`: the official VALDO 2021 microbleed rule (nearest-GT claiming, strict
  ``<`` threshold, exact ties make several TPs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from cmbbench.scoring.rates import detection_rates

_ROW_CHUNK = 1_000_000  # distance-matrix entries per block in match_valdo


@dataclass
class Matching:
    """Result of a rule on one case: matched pairs and counts.

    ``pairs``: ``(pred_index, gt_index)`` 0-based, sorted. ``pred_tp``: bool per prediction,
    ``gt_hit``: bool per CMB. ``tp + fp == n_pred`` always; ``tp + fn == n_gt`` for every rule
    except ``valdo`` with exact ties.
    """

    pairs: list[tuple[int, int]]
    pred_tp: NDArray[np.bool_]
    gt_hit: NDArray[np.bool_]
    tp: int
    fp: int
    fn: int
    valdo_f1: float | None = None
    distance_mm: dict[tuple[int, int], float] = field(default_factory=dict)


def optimal_pairs(
    pred_index: NDArray[np.int64],
    gt_index: NDArray[np.int64],
    weight: NDArray[np.float64],
    *,
    objective: Literal["max", "min"],
) -> list[tuple[int, int]]:
    """Optimal one-to-one assignment over candidate pairs.

    ``pred_index``, ``gt_index``, ``weight``: one entry per candidate pair (shape ``(K,)``;
    no duplicates). Maximises the number of pairs; among maximum assignments it maximises
    (``"max"``) or minimises (``"min"``) the total weight. The candidate graph is split into
    its connected blocks and each block is solved by ``linear_sum_assignment`` with rows
    and columns in ascending index order, so the result is deterministic. Returns sorted pairs.
    """
    pi = np.asarray(pred_index, dtype=np.int64)
    gi = np.asarray(gt_index, dtype=np.int64)
    w = np.asarray(weight, dtype=np.float64)
    if pi.size == 0:
        return []
    # compact the indices of the lesions that have candidates
    pu, pinv = np.unique(pi, return_inverse=True)
    gu, ginv = np.unique(gi, return_inverse=True)
    n_p, n_g = pu.size, gu.size
    graph = coo_matrix(
        (np.ones(pi.size, dtype=np.int8), (pinv, n_p + ginv)), shape=(n_p + n_g, n_p + n_g)
    )
    _, block = connected_components(graph, directed=False)
    out: list[tuple[int, int]] = []
    cand_block = block[pinv]
    order = np.argsort(cand_block, kind="stable")
    bounds = np.flatnonzero(np.diff(cand_block[order])) + 1
    for sel in np.split(order, bounds):
        rows, r_inv = np.unique(pinv[sel], return_inverse=True)
        cols, c_inv = np.unique(ginv[sel], return_inverse=True)
        ws = w[sel]
        if rows.size == 1 or cols.size == 1:
            # a star: one pair; the best weight, lowest index on ties
            best = int(np.argmax(ws) if objective == "max" else np.argmin(ws))
            k = sel[best]
            out.append((int(pi[k]), int(gi[k])))
            continue
        big = float(np.abs(ws).sum()) + 1.0
        cost = np.zeros((rows.size, cols.size), dtype=np.float64)
        cost[r_inv, c_inv] = -(big + ws) if objective == "max" else -(big - ws)
        cand = np.zeros(cost.shape, dtype=bool)
        cand[r_inv, c_inv] = True
        rr, cc = linear_sum_assignment(cost)
        for r, c in zip(rr, cc, strict=True):
            if cand[r, c]:
                out.append((int(pu[rows[r]]), int(gu[cols[c]])))
    return sorted(out)


def _counts(
    pairs: list[tuple[int, int]], n_pred: int, n_gt: int
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], int, int, int]:
    pred_tp = np.zeros(n_pred, dtype=bool)
    gt_hit = np.zeros(n_gt, dtype=bool)
    for p, g in pairs:
        pred_tp[p] = True
        gt_hit[g] = True
    tp = len(pairs)
    return pred_tp, gt_hit, tp, n_pred - tp, n_gt - tp


def match_overlap(
    pred_index: NDArray[np.int64],
    gt_index: NDArray[np.int64],
    overlap_voxels: NDArray[np.int64],
    n_pred: int,
    n_gt: int,
    *,
    min_overlap_voxels: int = 1,
) -> Matching:
    """The ``overlap`` rule from an overlap table (one entry per touching pair).

    Candidates share at least ``min_overlap_voxels`` voxels; the assignment maximises the
    number of pairs, then the total overlap.
    """
    ov = np.asarray(overlap_voxels, dtype=np.int64)
    keep = ov >= min_overlap_voxels
    pairs = optimal_pairs(
        np.asarray(pred_index)[keep], np.asarray(gt_index)[keep], ov[keep], objective="max"
    )
    pred_tp, gt_hit, tp, fp, fn = _counts(pairs, n_pred, n_gt)
    return Matching(pairs, pred_tp, gt_hit, tp, fp, fn)


def distance_candidates(
    pred_mm: NDArray[np.float64], gt_mm: NDArray[np.float64], max_distance_mm: float
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """All (pred, gt) pairs whose centres are at most ``max_distance_mm`` apart (mm)."""
    p = np.asarray(pred_mm, dtype=np.float64).reshape(-1, 3)
    g = np.asarray(gt_mm, dtype=np.float64).reshape(-1, 3)
    if p.shape[0] == 0 or g.shape[0] == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0)
    # query slightly wider, then filter with the exact numpy distance (boundary-safe)
    lists = cKDTree(p).query_ball_tree(cKDTree(g), max_distance_mm * (1 + 1e-9) + 1e-12)
    pi = np.repeat(np.arange(p.shape[0], dtype=np.int64), [len(x) for x in lists])
    gi = np.fromiter((j for x in lists for j in sorted(x)), dtype=np.int64, count=pi.size)
    d = np.linalg.norm(p[pi] - g[gi], axis=1) if pi.size else np.zeros(0)
    keep = d <= max_distance_mm
    return pi[keep], gi[keep], d[keep]


def match_distance(
    pred_mm: NDArray[np.float64], gt_mm: NDArray[np.float64], max_distance_mm: float
) -> Matching:
    """The ``distance`` rule: centres (world mm) at most ``max_distance_mm`` apart; the
    assignment maximises the number of pairs, then minimises the total distance."""
    n_pred, n_gt = len(pred_mm), len(gt_mm)
    pi, gi, d = distance_candidates(pred_mm, gt_mm, max_distance_mm)
    pairs = optimal_pairs(pi, gi, d, objective="min")
    pred_tp, gt_hit, tp, fp, fn = _counts(pairs, n_pred, n_gt)
    dist = {(int(a), int(b)): float(x) for a, b, x in zip(pi, gi, d, strict=True)}
    return Matching(pairs, pred_tp, gt_hit, tp, fp, fn, distance_mm={k: dist[k] for k in pairs})


def match_point(
    pred_mm: NDArray[np.float64],
    points_mm: NDArray[np.float64],
    inside_pred: NDArray[np.int64],
    max_distance_mm: float | None,
) -> Matching:
    """The ``point`` rule: a predicted lesion and a ground-truth point are candidates when the
    point lies inside the predicted component (``inside_pred[j]``: 0-based prediction index
    containing point ``j``, ``-1`` if none) or within ``max_distance_mm`` of its centre of
    mass. The assignment maximises the number of pairs, then minimises the total distance."""
    p = np.asarray(pred_mm, dtype=np.float64).reshape(-1, 3)
    g = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    inside = np.asarray(inside_pred, dtype=np.int64)
    gj = np.flatnonzero(inside >= 0)
    pi_list = [inside[gj]]
    gi_list = [gj]
    if max_distance_mm is not None:
        a, b, _ = distance_candidates(p, g, max_distance_mm)
        pi_list.append(a)
        gi_list.append(b)
    pi = np.concatenate(pi_list).astype(np.int64)
    gi = np.concatenate(gi_list).astype(np.int64)
    if pi.size:
        key = np.unique(pi * max(g.shape[0], 1) + gi)
        pi, gi = np.divmod(key, max(g.shape[0], 1))
    d = np.linalg.norm(p[pi] - g[gi], axis=1) if pi.size else np.zeros(0)
    pairs = optimal_pairs(pi, gi, d, objective="min")
    pred_tp, gt_hit, tp, fp, fn = _counts(pairs, p.shape[0], g.shape[0])
    dist = {(int(a), int(b)): float(x) for a, b, x in zip(pi, gi, d, strict=True)}
    return Matching(pairs, pred_tp, gt_hit, tp, fp, fn, distance_mm={k: dist[k] for k in pairs})


def valdo_f1(tp: int, fp: int, fn: int, n_pred: int, n_gt: int) -> float:
    """The official per-case F1: NaN when the ground truth is empty, 0 when the prediction
    is empty (and the ground truth is not), else ``2 TP / (FN + FP + 2 TP)``.

    Only the first case departs from :func:`~cmbbench.scoring.rates.detection_rates`' F1
    (which is 0 for predictions without ground truth); the second is what it gives anyway.
    """
    if n_gt == 0:
        return math.nan
    if n_pred == 0:
        return 0.0
    return detection_rates(tp, fp, fn).f1


def weighted_valdo_f1(
    pairs: list[tuple[int, int]], gt_hit: NDArray[np.bool_], weights: NDArray, n_pred: int
) -> float:
    """The official agreement-weighted per-case F1 of the valdo rule,
    ``2·Σw_TP / (Σw_FN + FP + 2·Σw_TP)``: each TP adds the weight of the CMB it claims
    (``pairs``: ``(pred, gt)`` indices), each unclaimed CMB its weight to FN, each FP 1.
    NaN when the ground truth is empty, 0 when the prediction is; with 0/1 weights it is
    :func:`valdo_f1`."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        return math.nan
    if n_pred == 0:
        return 0.0
    w_tp = float(sum(w[g] for _, g in pairs))
    w_fn = float(w[~np.asarray(gt_hit, dtype=bool)].sum())
    fp = n_pred - len(pairs)
    denom = w_fn + fp + 2 * w_tp
    return 2 * w_tp / denom if denom else math.nan


def match_valdo(
    pred_mm: NDArray[np.float64], gt_mm: NDArray[np.float64], threshold_mm: float
) -> Matching:
    """The official VALDO 2021 microbleed rule on component centres (index × spacing, mm).

    Each prediction is assigned to its nearest CMB (lowest index on exact ties, as
    ``argmin``) when that distance is *strictly below* ``threshold_mm``, otherwise it is FP.
    A CMB claimed by one prediction makes it TP; claimed by several, the claimant(s) at the
    minimum distance are TP (exact ties: several TPs) and the others FP. FN = CMBs that no
    prediction claims. ``tp + fn`` may exceed ``n_gt`` only on exact ties.
    """
    p = np.asarray(pred_mm, dtype=np.float64).reshape(-1, 3)
    g = np.asarray(gt_mm, dtype=np.float64).reshape(-1, 3)
    n_pred, n_gt = p.shape[0], g.shape[0]
    nearest = np.full(n_pred, -1, dtype=np.int64)
    near_d = np.full(n_pred, np.inf)
    if n_pred and n_gt:
        step = max(1, _ROW_CHUNK // n_gt)
        for s in range(0, n_pred, step):
            diff = p[s : s + step, None, :] - g[None, :, :]
            dm = np.sqrt(np.sum(diff * diff, axis=2))
            nearest[s : s + step] = np.argmin(dm, axis=1)
            near_d[s : s + step] = dm[np.arange(dm.shape[0]), nearest[s : s + step]]
    claims = np.flatnonzero(near_d < threshold_mm)
    pred_tp = np.zeros(n_pred, dtype=bool)
    gt_hit = np.zeros(n_gt, dtype=bool)
    pairs: list[tuple[int, int]] = []
    dist: dict[tuple[int, int], float] = {}
    for gidx in np.unique(nearest[claims]):
        who = claims[nearest[claims] == gidx]
        dmin = near_d[who].min()
        for pidx in who[near_d[who] == dmin]:
            pred_tp[pidx] = True
            pairs.append((int(pidx), int(gidx)))
            dist[(int(pidx), int(gidx))] = float(near_d[pidx])
        gt_hit[gidx] = True
    tp = int(pred_tp.sum())
    fp = n_pred - tp
    fn = int(n_gt - gt_hit.sum())
    f1 = valdo_f1(tp, fp, fn, n_pred, n_gt)
    return Matching(sorted(pairs), pred_tp, gt_hit, tp, fp, fn, valdo_f1=f1, distance_mm=dist)
