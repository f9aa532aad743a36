"""Prediction and lesion-level evaluation of a network on a list of cases, sharded over ranks.

Used by the trainer's validation (lesion-level F1 on the validation split), by the
post-processing tuning (validation split only) and by the test-split scoring of
:func:`cmbbench.engine.run.run`. Under torchrun every rank handles ``cases[rank::world]``
and the results are gathered (every rank gets them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cmbbench.cases import Case
from cmbbench.engine.distributed import DistContext, all_reduce_sum, gather_objects, shard
from cmbbench.engine.recipe import Recipe
from cmbbench.models.detector import Divisor, round_up_to_divisor
from cmbbench.scoring.records import CaseResult

Normalizer = Callable[[np.ndarray], np.ndarray]


def inference_window(
    recipe: Recipe, shape: Sequence[int], divisor: Divisor
) -> tuple[int, int, int]:
    """The sliding window for an image of ``shape`` (voxels): the recipe's window, shrunk
    along axes where the image (rounded up to ``divisor``, one int or one per axis) is
    smaller."""
    window = round_up_to_divisor(recipe.infer_patch_size, divisor)
    image = round_up_to_divisor(shape, divisor)
    return tuple(min(w, i) for w, i in zip(window, image, strict=True))  # type: ignore[return-value]


def predict_probability(
    model: nn.Module,
    image: np.ndarray,
    recipe: Recipe,
    *,
    device: torch.device,
    divisor: Divisor = 1,
    name: str | None = None,
) -> np.ndarray:
    """CMB probability float32 (X, Y, Z) of a *normalised* image, by sliding-window inference
    with the recipe's window, overlap and batch; mixed precision as in training
    (:func:`cmbbench.engine.trainer.autocast_dtype`)."""
    from cmbbench.engine.inference import sliding_window_predict
    from cmbbench.engine.trainer import autocast_dtype

    return sliding_window_predict(
        model,
        image,
        patch_size=inference_window(recipe, image.shape, divisor),
        overlap=recipe.infer_overlap,
        batch_size=recipe.infer_batch_size,
        device=device,
        amp=autocast_dtype(recipe, device) is not None,
        divisor=divisor,
        name=name,
    )


def score_probability(
    prob: np.ndarray,
    case: Case,
    *,
    rule: str,
    rule_params: dict[str, Any],
    threshold: float,
) -> CaseResult:
    """Score a probability map against the case's label with the dataset's rule."""
    from cmbbench.scoring.case import score_case

    return score_case(
        prob,
        case.label,
        affine=case.affine,
        rule=rule,
        threshold=threshold,
        ignore=case.ignore,
        lesion_attrs=case.meta.get("lesion_attrs"),
        case_id=case.case_id,
        meta=case_meta(case),
        gt_kind=case.gt_kind,
        **rule_params,
    )


def case_meta(case: Case) -> dict[str, Any]:
    """The case attributes copied into its scoring record (cohort, protocol)."""
    return {k: case.meta[k] for k in ("cohort", "protocol") if k in case.meta}


@dataclass
class ValidationSet:
    """Normalised validation images kept in memory (this rank's shard) for repeated validation."""

    cases: list[Case]
    images: list[np.ndarray]

    @classmethod
    def build(cls, cases: Sequence[Case], normalize: Normalizer, ctx: DistContext) -> ValidationSet:
        mine = shard(cases, ctx)
        images = []
        for c in mine:
            images.append(np.asarray(normalize(np.asarray(c.image, np.float32)), np.float32))
        return cls(mine, images)


def lesion_f1(tp: float, fp: float, fn: float) -> float:
    """Pooled F1 = 2TP / (2TP + FP + FN); NaN when there is nothing to count."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else math.nan


class Validator:
    """``validator(model) -> {"f1", "recall", "precision", "tp", "fp", "fn", "seconds"}``:
    lesion counts pooled over the validation split at ``recipe.val_threshold`` (summed over
    ranks). The probability maps of the latest call (this rank's shard) are kept in
    :attr:`last_probs`, so the post-processing search can reuse them when the best checkpoint
    is the one validated last."""

    def __init__(
        self,
        val: ValidationSet,
        recipe: Recipe,
        *,
        device: torch.device,
        divisor: Divisor,
        rule: str,
        rule_params: dict[str, Any],
        ctx: DistContext,
        name: str | None = None,
    ):
        self.val, self.recipe, self.device, self.divisor = val, recipe, device, divisor
        self.rule, self.rule_params, self.ctx, self.name = rule, rule_params, ctx, name
        self.calls = 0
        self.last_probs: dict[str, np.ndarray] | None = None

    def __call__(self, model: nn.Module) -> dict[str, float]:
        t0 = time.perf_counter()
        tp = fp = fn = 0.0
        probs: dict[str, np.ndarray] = {}
        for case, image in zip(self.val.cases, self.val.images, strict=True):
            prob = predict_probability(
                model, image, self.recipe, device=self.device, divisor=self.divisor, name=self.name
            )
            probs[case.case_id] = prob
            res = score_probability(
                prob,
                case,
                rule=self.rule,
                rule_params=self.rule_params,
                threshold=self.recipe.val_threshold,
            )
            tp, fp, fn = tp + res.tp, fp + res.fp, fn + res.fn
        self.last_probs = probs
        self.calls += 1
        tp, fp, fn = all_reduce_sum([tp, fp, fn], self.ctx)
        return {
            "f1": lesion_f1(tp, fp, fn),
            "recall": tp / (tp + fn) if tp + fn else math.nan,
            "precision": tp / (tp + fp) if tp + fp else math.nan,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "seconds": time.perf_counter() - t0,
        }


make_validator = Validator


def gather_by_case(items: dict[str, Any], order: Sequence[str], ctx: DistContext) -> list[Any]:
    """Merge every rank's ``{case_id: value}`` and return the values in ``order``."""
    merged: dict[str, Any] = {}
    for part in gather_objects(items, ctx):
        merged.update(part)
    return [merged[k] for k in order]
