"""The one builder behind every ``unet3d*`` baseline: :class:`UNet3D`.

Reproduces the research project's network: per level two 3×3×3 convolutions, each followed
by batch normalisation and ELU; 2×2×2 max-pooling down; nearest-neighbour upsampling (×2)
up, concatenated with the skip connection; a 1×1×1 convolution to the class logits.
Filters 32/64/128/256 (three poolings, so spatial sizes must be multiples of 8).

``forward`` returns logits (B, n_classes, X, Y, Z); the engine applies softmax (2 classes)
or sigmoid (1). With ``deep_supervision=True`` it still returns only the main output; in
training mode the auxiliary outputs (1×1×1 heads on the coarser decoder levels, upsampled
to the input size, coarse to fine) are left in :attr:`UNet3D.aux_outputs` for a loss that
wants them, and cleared in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Norm = Literal["batch", "instance", "none"]
Act = Literal["elu", "relu", "leaky_relu"]
Block = Literal["plain", "residual"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {kind!r}")


def _act(kind: Act) -> nn.Module:
    if kind == "elu":
        return nn.ELU(inplace=True)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    raise ValueError(f"act must be 'elu', 'relu' or 'leaky_relu', got {kind!r}")


class ConvBlock(nn.Module):
    """Two 3×3×3 conv → norm → act; ``residual`` adds a (1×1×1-projected) shortcut before
    the second activation."""

    def __init__(self, c_in: int, c_out: int, *, block: Block, norm: Norm, act: Act):
        super().__init__()
        if block not in ("plain", "residual"):
            raise ValueError(f"block must be 'plain' or 'residual', got {block!r}")
        bias = norm == "none"
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1, bias=bias)
        self.norm1 = _norm(norm, c_out)
        self.act1 = _act(act)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=bias)
        self.norm2 = _norm(norm, c_out)
        self.act2 = _act(act)
        self.residual = block == "residual"
        self.shortcut: nn.Module = nn.Identity()
        if self.residual and c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, bias=bias), _norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        if self.residual:
            y = y + self.shortcut(x)
        return self.act2(y)


def init_prior_bias(conv: nn.Conv3d, prior: float) -> None:
    """Set the bias of an output convolution so that the initial CMB probability is ``prior``
    everywhere (RetinaNet's prior initialisation): 2 channels (softmax) get biases
    ``(0, logit(prior))``, 1 channel (sigmoid) ``logit(prior)``. Without it, a freshly
    initialised network predicts ~0.5 on every voxel, and the first few hundred steps of the
    seed's loss are spent undoing that (a plateau of the focal Tversky term near 1)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    if conv.bias is None:
        raise ValueError("the output convolution has no bias to initialise")
    with torch.no_grad():
        conv.bias.zero_()
        conv.bias[-1] = math.log(prior / (1.0 - prior))


class UNet3D(nn.Module):
    """3D U-Net; input (B, in_channels, X, Y, Z) with X, Y, Z multiples of ``divisor``.

    ``filters``: channels per level, top to bottom (the last is the bottleneck);
    ``len(filters) - 1`` poolings, so ``divisor = 2 ** (len(filters) - 1)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        filters: Sequence[int] = (32, 64, 128, 256),
        block: Block = "plain",
        deep_supervision: bool = False,
        norm: Norm = "batch",
        act: Act = "elu",
        prior: float | None = None,
    ):
        super().__init__()
        filters = tuple(int(f) for f in filters)
        if len(filters) < 2:
            raise ValueError(f"filters needs at least 2 levels, got {filters}")
        if n_classes not in (1, 2):
            raise ValueError(f"n_classes must be 1 (logit) or 2 (softmax), got {n_classes}")
        self.filters = filters
        self.divisor = 2 ** (len(filters) - 1)
        self.deep_supervision = deep_supervision
        self.aux_outputs: list[torch.Tensor] = []
        kw = {"block": block, "norm": norm, "act": act}
        self.down = nn.ModuleList()
        c = in_channels
        for f in filters:
            self.down.append(ConvBlock(c, f, **kw))
            c = f
        self.up = nn.ModuleList(
            ConvBlock(filters[i + 1] + filters[i], filters[i], **kw)
            for i in reversed(range(len(filters) - 1))
        )
        self.head = nn.Conv3d(filters[0], n_classes, 1)
        # one auxiliary head per decoder level below the top one (coarse to fine)
        self.aux_heads = (
            nn.ModuleList(
                nn.Conv3d(filters[i], n_classes, 1) for i in reversed(range(1, len(filters) - 1))
            )
            if deep_supervision
            else nn.ModuleList()
        )
        if prior is not None:
            for head in [self.head, *self.aux_heads]:
                init_prior_bias(head, prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(
                f"UNet3D with {len(self.filters)} levels needs spatial sizes divisible by "
                f"{self.divisor}, got {tuple(x.shape[2:])}"
            )
        skips = []
        for i, level in enumerate(self.down):
            if i:
                x = F.max_pool3d(x, 2)
            x = level(x)
            skips.append(x)
        x = skips.pop()
        decoded = []
        for level in self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = level(torch.cat([x, skips.pop()], dim=1))
            decoded.append(x)
        out = self.head(x)
        if self.deep_supervision and self.training:
            size = out.shape[2:]
            self.aux_outputs = [
                F.interpolate(head(feat), size=size, mode="nearest")
                for head, feat in zip(self.aux_heads, decoded[:-1], strict=True)
            ]
        else:
            self.aux_outputs = []
        return out
