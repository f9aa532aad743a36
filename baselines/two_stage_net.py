"""The stage-2 network of ``two_stage``: a small 3D CNN that scores one candidate patch.

:class:`PatchClassifier` takes float32 patches ``(B, 1, X, Y, Z)`` (voxels; ``patch_size``,
default 16×16×8, centred on a stage-1 candidate) and returns one logit per patch ``(B,)``
(sigmoid: the probability that the candidate is a CMB). Per level two 3×3×3 convolutions
with batch normalisation and ReLU; between levels a 2×2×2 max-pooling (an axis shorter than 4
voxels is not pooled); after the last level the feature map is flattened (so the position of
a feature in the patch — centre or rim — is kept) into one linear logit. With the default
widths (8, 16, 32) and a 16×16×8 patch the network has about 29 k parameters.

Importing this module imports torch; ``cmbbench_baselines.two_stage`` imports it only when a
network is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    ]


def pooled_shape(patch_size: Sequence[int], levels: int) -> tuple[int, int, int]:
    """The spatial size (voxels) after ``levels - 1`` poolings of ``patch_size``: each axis is
    halved (floor) while it is at least 4 voxels long, else kept."""
    shape = [int(s) for s in patch_size]
    for _ in range(levels - 1):
        shape = [s // 2 if s >= 4 else s for s in shape]
    return (shape[0], shape[1], shape[2])


class PatchClassifier(nn.Module):
    """Candidate patch ``(B, 1, X, Y, Z)`` -> CMB logit ``(B,)`` (see the module docstring)."""

    def __init__(
        self,
        patch_size: Sequence[int] = (16, 16, 8),
        widths: Sequence[int] = (8, 16, 32),
        in_channels: int = 1,
    ):
        super().__init__()
        if len(tuple(patch_size)) != 3 or min(int(s) for s in patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive voxel sizes, got {patch_size}")
        if not widths or min(int(w) for w in widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {widths}")
        self.patch_size = tuple(int(s) for s in patch_size)
        layers: list[nn.Module] = []
        c_in = int(in_channels)
        shape = list(self.patch_size)
        for i, width in enumerate(widths):
            if i > 0:
                kernel = tuple(2 if s >= 4 else 1 for s in shape)
                layers.append(nn.MaxPool3d(kernel))
                shape = [s // k for s, k in zip(shape, kernel, strict=True)]
            layers += _block(c_in, int(width))
            c_in = int(width)
        self.features = nn.Sequential(*layers)
        out = pooled_shape(self.patch_size, len(widths))
        assert tuple(shape) == out
        self.head = nn.Linear(c_in * out[0] * out[1] * out[2], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.patch_size:
            raise ValueError(
                f"PatchClassifier expects patches of {self.patch_size} voxels, got "
                f"{tuple(x.shape[2:])}"
            )
        return self.head(torch.flatten(self.features(x), 1)).squeeze(1)
