"""Segmentation losses: focal Tversky + class-weighted cross entropy (the seed's loss).

Works for both output conventions of a registered network: 2-class logits ``(B, 2, X, Y, Z)``
(softmax) and a single logit ``(B, 1, X, Y, Z)`` (sigmoid). Targets are ``(B, X, Y, Z)``
(or ``(B, 1, X, Y, Z)``) with values 0 / 1; an optional ``valid`` bool mask of the same
shape excludes voxels (e.g. "ignore" regions) from both terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmbbench.errors import CmbbenchError


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """CMB probability ``(B, X, Y, Z)`` from 2-class (softmax) or 1-logit (sigmoid) outputs."""
    if logits.ndim != 5 or logits.shape[1] not in (1, 2):
        raise CmbbenchError(
            f"expected network output (B, 1 or 2, X, Y, Z), got shape {tuple(logits.shape)}"
        )
    if logits.shape[1] == 2:
        return torch.softmax(logits.float(), dim=1)[:, 1]
    return torch.sigmoid(logits.float()[:, 0])


def focal_tversky_loss(
    prob: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 3.0,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Focal Tversky loss ``(1 − TI)^(1/γ)`` with ``TI = (TP + s) / (TP + α·FP + β·FN + s)``.

    ``prob`` and ``target`` are float ``(B, X, Y, Z)``; sums run over the whole batch. With
    α < β missed CMB voxels cost more than false alarms (recall-oriented, as in the seed).
    """
    t = target.float()
    p = prob
    if valid is not None:
        v = valid.float()
        p, t = p * v, t * v
    tp = (p * t).sum()
    fp = (p * (1 - t)).sum()
    fn = ((1 - p) * t).sum()
    ti = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return (1 - ti).clamp_min(0).pow(1.0 / gamma)


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    class_weights: tuple[float, float] = (0.1, 5.0),
) -> torch.Tensor:
    """Class-weighted cross entropy, normalised by the summed weights of the valid voxels."""
    t = target.long()
    w_bg, w_fg = float(class_weights[0]), float(class_weights[1])
    if logits.shape[1] == 2:
        per_voxel = F.cross_entropy(logits.float(), t, reduction="none")
    else:
        per_voxel = F.binary_cross_entropy_with_logits(
            logits.float()[:, 0], t.float(), reduction="none"
        )
    weights = torch.where(t > 0, w_fg, w_bg).to(per_voxel.dtype)
    if valid is not None:
        weights = weights * valid.to(weights.dtype)
    return (per_voxel * weights).sum() / weights.sum().clamp_min(1e-8)


class CmbLoss(nn.Module):
    """``tversky_weight · focal_tversky + ce_weight · weighted_CE`` (the seed: 1 · FTL + 1 · CE)."""

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 3.0,
        class_weights: tuple[float, float] = (0.1, 5.0),
        tversky_weight: float = 1.0,
        ce_weight: float = 1.0,
    ):
        super().__init__()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.class_weights = (float(class_weights[0]), float(class_weights[1]))
        self.tversky_weight, self.ce_weight = tversky_weight, ce_weight

    @classmethod
    def from_recipe(cls, recipe) -> CmbLoss:  # recipe: cmbbench.engine.recipe.Recipe
        return cls(
            alpha=recipe.tversky_alpha,
            beta=recipe.tversky_beta,
            gamma=recipe.tversky_gamma,
            class_weights=tuple(recipe.ce_class_weights),
            tversky_weight=recipe.tversky_weight,
            ce_weight=recipe.ce_weight,
        )

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        if target.ndim == 5:
            target = target[:, 0]
        if valid is not None and valid.ndim == 5:
            valid = valid[:, 0]
        if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
            raise CmbbenchError(
                f"network output {tuple(logits.shape)} does not match target {tuple(target.shape)}"
            )
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.tversky_weight:
            prob = foreground_probability(logits)
            loss = loss + self.tversky_weight * focal_tversky_loss(
                prob, target, valid, alpha=self.alpha, beta=self.beta, gamma=self.gamma
            )
        if self.ce_weight:
            loss = loss + self.ce_weight * weighted_cross_entropy(
                logits, target, valid, class_weights=self.class_weights
            )
        return loss
