"""Validation of a network during training: lesion-level counts on the validation split.

:class:`Validator` is the trainer's ``validate(model)`` callback: it predicts every
validation image (kept normalised in memory, :class:`ValidationSet`) by sliding-window
inference, scores each with the dataset's evaluator at ``recipe.val_threshold``, and returns
the counts pooled over the split (and over ranks under torchrun, where every rank handles
``cases[rank::world]``). The maps of the latest call are kept, so the post-processing search
can reuse them when the best checkpoint is the one validated last.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from cmbbench.cases import Case
from cmbbench.engine.channels import normalized_channels
from cmbbench.engine.distributed import DistContext, all_reduce_sum, shard
from cmbbench.engine.inference import predict_probability
from cmbbench.engine.recipe import Recipe
from cmbbench.models.detector import Divisor
from cmbbench.scoring.evaluator import Evaluator
from cmbbench.scoring.rates import detection_rates

Normalizer = Callable[[np.ndarray], np.ndarray]


@dataclass
class ValidationSet:
    """Normalised validation images kept in memory (this rank's shard) for repeated
    validation: (X, Y, Z) each, or (C, X, Y, Z) with extra channels."""

    cases: list[Case]
    images: list[np.ndarray]

    @classmethod
    def build(
        cls,
        cases: Sequence[Case],
        normalize: Normalizer,
        ctx: DistContext,
        extra_channels: Sequence[str] = (),
    ) -> ValidationSet:
        """This rank's shard of ``cases``, normalised (with ``extra_channels`` stacked after
        the main image, :func:`cmbbench.engine.channels.normalized_channels`)."""
        mine = shard(cases, ctx)
        images = []
        for c in mine:
            if extra_channels:
                images.append(normalized_channels(c, normalize, extra_channels))
            else:
                images.append(np.asarray(normalize(np.asarray(c.image, np.float32)), np.float32))
        return cls(mine, images)


class Validator:
    """``validator(model) -> {"f1", "recall", "precision", "tp", "fp", "fn", "seconds"}``:
    lesion counts pooled over the validation split at ``recipe.val_threshold`` (summed over
    ranks; rates NaN when undefined, :func:`cmbbench.scoring.rates.detection_rates`). The
    probability maps of the latest call (this rank's shard) are kept in :attr:`last_probs`."""

    def __init__(
        self,
        val: ValidationSet,
        recipe: Recipe,
        *,
        device: Any,
        divisor: Divisor,
        evaluator: Evaluator,
        ctx: DistContext,
        name: str | None = None,
    ):
        self.val, self.recipe, self.device, self.divisor = val, recipe, device, divisor
        self.evaluator, self.ctx, self.name = evaluator, ctx, name
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
            res = self.evaluator.evaluate(prob, case, threshold=self.recipe.val_threshold)
            tp, fp, fn = tp + res.tp, fp + res.fp, fn + res.fn
        self.last_probs = probs
        self.calls += 1
        tp, fp, fn = all_reduce_sum([tp, fp, fn], self.ctx)
        rates = detection_rates(tp, fp, fn)
        return {
            "f1": float(rates.f1),
            "recall": float(rates.recall),
            "precision": float(rates.precision),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "seconds": time.perf_counter() - t0,
        }
