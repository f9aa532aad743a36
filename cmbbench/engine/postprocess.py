"""Post-processing of probability maps: threshold + minimum component size, and its tuning.

A prediction's components are the connected components (26-connectivity by default) of
``prob >= threshold``; components smaller than ``min_size`` voxels are removed. The cleaned
map keeps the probabilities of the kept components and is 0 everywhere else, so scoring it
at the same threshold finds exactly the kept components, each scored by its maximum
probability. The two parameters are tuned on the validation split only
(:func:`tune_postprocess`), by lesion-level micro F1 read to within one lesion
(:func:`best_grid_point`). This module does not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from cmbbench.cases import Case
from cmbbench.errors import CmbbenchError, InputError
from cmbbench.scoring.components import label_mask, label_volume
from cmbbench.scoring.evaluator import Evaluator
from cmbbench.scoring.rates import detection_rates

Connectivity = Literal[6, 18, 26]


@dataclass(frozen=True)
class PostprocessParams:
    """Threshold on the probability, minimum component size in voxels, connectivity."""

    threshold: float = 0.5
    min_size: int = 1
    connectivity: Connectivity = 26

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GridPoint:
    """Micro-averaged validation counts for one (threshold, min_size) pair."""

    threshold: float
    min_size: int
    tp: int
    fp: int
    fn: int

    @property
    def f1(self) -> float:
        """Lesion-level micro F1 (:func:`cmbbench.scoring.rates.detection_rates`); a grid point
        with nothing to count (no CMB, no prediction) scores 0 here, so it ranks lowest."""
        f1 = detection_rates(self.tp, self.fp, self.fn).f1
        return 0.0 if math.isnan(f1) else f1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "f1": self.f1}


def _check_prob(prob: np.ndarray, case_id: str | None = None) -> np.ndarray:
    prob = np.asarray(prob)
    if prob.ndim != 3:
        raise InputError(f"probability map must be 3-D (X, Y, Z), got {prob.shape}", case=case_id)
    return prob


def _components(
    prob: np.ndarray, threshold: float, connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (X, Y, Z) of ``prob >= threshold`` and the size (voxels) of each label."""
    labels = label_volume(prob >= threshold, connectivity)
    return labels, np.bincount(labels.ravel())


def clean_probability(
    prob: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 1,
    connectivity: Connectivity = 26,
) -> np.ndarray:
    """float32 (X, Y, Z): ``prob`` inside components of ``prob >= threshold`` with at least
    ``min_size`` voxels, 0 elsewhere."""
    prob = _check_prob(prob)
    if connectivity not in (6, 18, 26):
        raise CmbbenchError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    labels, sizes = _components(prob, threshold, connectivity)
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    return np.where(keep[labels], prob, 0).astype(np.float32, copy=False)


def postprocess_grid(
    probs: Sequence[np.ndarray],
    cases: Sequence[Case],
    thresholds: Sequence[float],
    min_sizes: Sequence[int],
    evaluator: Evaluator | None = None,
    *,
    connectivity: Connectivity = 26,
) -> list[GridPoint]:
    """Score every (threshold, min_size) pair on the cases; micro-summed TP/FP/FN.

    ``probs[i]`` is the probability map (X, Y, Z) of ``cases[i]`` (labelled cases). Each
    cleaned prediction (a mask of the kept components) is scored by ``evaluator`` (the
    dataset's; default: the overlap rule) against the case's label, affine and ignore mask.

    The components of each threshold are labelled once per case from the foreground voxels
    only, and a grid point whose kept voxels are exactly those of one already scored on the
    same case (a minimum size that removes nothing more, thresholds with the same
    components) reuses that score: the counts are those of scoring every pair on its own
    (:func:`case_grid_counts`).
    """
    evaluator = evaluator or Evaluator()
    if len(probs) != len(cases):
        raise CmbbenchError(f"got {len(probs)} probability maps for {len(cases)} cases")
    if not thresholds or not min_sizes:
        raise CmbbenchError("tune_postprocess needs at least one threshold and one min_size")
    if connectivity not in (6, 18, 26):
        raise CmbbenchError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    counts = {(float(t), int(m)): [0, 0, 0] for t in thresholds for m in min_sizes}
    for prob, case in zip(probs, cases, strict=True):
        prob = _check_prob(prob, case.case_id)
        if prob.shape != tuple(case.shape):
            raise InputError(
                f"probability map shape {prob.shape} differs from the image shape {case.shape}",
                case=case.case_id,
            )
        if case.label is None:
            raise InputError("post-processing is tuned on labelled cases only", case=case.case_id)
        per_case = case_grid_counts(prob, case, thresholds, min_sizes, evaluator, connectivity)
        for key, (tp, fp, fn) in per_case.items():
            c = counts[key]
            c[0] += tp
            c[1] += fp
            c[2] += fn
    return [GridPoint(t, m, *c) for (t, m), c in counts.items()]


def kept_voxels(
    prob: np.ndarray, threshold: float, min_sizes: Sequence[int], connectivity: Connectivity
) -> list[np.ndarray]:
    """For each of ``min_sizes``: the sorted C-order flat indices (int64) of the voxels of
    ``prob >= threshold`` (X, Y, Z) in components of at least that many voxels (a minimum
    below 1 counts as 1), i.e. exactly the non-zero voxels of :func:`clean_probability`."""
    comps = label_mask(prob >= threshold, connectivity)
    kept = []
    for m in min_sizes:
        keep = comps.sizes >= max(int(m), 1)
        kept.append(comps.flat if keep.all() else comps.flat[keep[comps.label]])
    return kept


def case_grid_counts(
    prob: np.ndarray,
    case: Case,
    thresholds: Sequence[float],
    min_sizes: Sequence[int],
    evaluator: Evaluator,
    connectivity: Connectivity = 26,
) -> dict[tuple[float, int], tuple[int, int, int]]:
    """``{(threshold, min_size): (tp, fp, fn)}`` of one labelled case: each pair's cleaned
    mask (uint8 (X, Y, Z), 1 on the kept components) scored by ``evaluator``; a mask equal
    to one already scored (the same kept voxels) takes that score instead of a new one."""
    shape = prob.shape
    scored: dict[bytes, tuple[int, int, int]] = {}
    out: dict[tuple[float, int], tuple[int, int, int]] = {}
    for t in thresholds:
        kept = kept_voxels(prob, float(t), min_sizes, connectivity)
        for m, flat in zip(min_sizes, kept, strict=True):
            key = flat.tobytes()
            if key not in scored:
                mask = np.zeros(shape, dtype=np.uint8)
                mask.reshape(-1)[flat] = 1
                res = evaluator.evaluate(mask, case, pred_kind="mask", connectivity=connectivity)
                scored[key] = (res.tp, res.fp, res.fn)
            out[(float(t), int(m))] = scored[key]
    return out


def one_lesion_less(g: GridPoint) -> float:
    """The F1 of ``g`` with one of its true positives turned into a miss: how far F1 moves
    for one lesion (the resolution of a validation split with this many CMBs)."""
    if g.tp == 0:
        return g.f1
    return 2 * (g.tp - 1) / (2 * g.tp + g.fp + g.fn - 1)


def best_grid_point(grid: Sequence[GridPoint]) -> GridPoint:
    """The highest validation F1, read to within one lesion.

    Every grid point whose F1 is at least :func:`one_lesion_less` of the best one is as good
    as the best on this validation split; among those, the one removing the fewest
    components wins (the smallest minimum size), then the higher F1, fewer false positives
    and the higher threshold. Why: on ~30 validation CMBs the F1 surface is flat, and very
    different operating points differ by less than one lesion (measured: 13 TP / 3 FP at
    threshold 0.9, min size 3 against 20 TP / 24 FP at 0.8, min size 1, F1 0.542 vs 0.526).
    A minimum size of 3 or 5 voxels deletes many real CMBs at 1×1×3 mm, where a CMB spans
    2–32 voxels; that unet3d seed recalled 86 of 155 CMBs on 40 unseen synthetic subjects
    with the first and 122 with the second (F1 0.69 vs 0.78).
    """
    if not grid:
        raise CmbbenchError("empty post-processing grid")
    best = max(grid, key=lambda g: (g.f1, -g.fp, g.threshold, g.min_size))
    floor = one_lesion_less(best)
    near = [g for g in grid if g.f1 >= floor]
    return min(near, key=lambda g: (g.min_size, -g.f1, g.fp, -g.threshold))


def tune_postprocess(
    probs: Sequence[np.ndarray],
    cases: Sequence[Case],
    thresholds: Sequence[float],
    min_sizes: Sequence[int],
    evaluator: Evaluator | None = None,
    *,
    connectivity: Connectivity = 26,
) -> tuple[float, int]:
    """``(threshold, min_size)`` maximising lesion-level micro F1 on (validation) cases,
    to within one lesion (see :func:`best_grid_point`; :func:`postprocess_grid` for the
    arguments).
    """
    best = best_grid_point(
        postprocess_grid(probs, cases, thresholds, min_sizes, evaluator, connectivity=connectivity)
    )
    return best.threshold, best.min_size
