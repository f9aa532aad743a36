"""Torch helpers for the ``segmentation-models-pytorch-3d`` baselines (imported lazily)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZUpsampled(nn.Module):
    """Run ``net`` on the input resampled ``factor``× along z (the third axis), and average
    its logits back to the input grid.

    For networks with isotropic stride-2 stages and no ``strides`` option (smp's LinkNet): on
    thick-slice data (≈3 mm slices, 1 mm in-plane) their first stride-2 stage would merge the
    one or two slices a CMB occupies. Input ``(B, C, X, Y, Z)`` → ``net`` on
    ``(B, C, X, Y, factor·Z)`` (linear interpolation) → logits average-pooled over each group
    of ``factor`` slices → ``(B, K, X, Y, Z)``.
    """

    def __init__(self, net: nn.Module, factor: int = 2):
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.net, self.factor = net, int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return self.net(x)
        z = x.shape[-1]
        up = F.interpolate(x, size=(*x.shape[2:4], z * self.factor), mode="trilinear")
        out = self.net(up)
        return F.avg_pool3d(out, kernel_size=(1, 1, self.factor))
