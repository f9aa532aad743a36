"""Tiny hand-made cases and a tiny network for the engine tests (no dataset generator needed)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cmbbench.cases import Case, CaseData


def cube_case(
    case_id: str, seed: int, shape=(32, 32, 24), n_cmb: int = 1, empty: bool = False
) -> Case:
    """A noisy bright volume with ``n_cmb`` dark 3×3×3 cubes labelled 1, 2, ... (27 voxels each).

    Inside a cube the intensity is 0.2 against ~1.0 around it, so a 3×3×3 filter finds it.
    """
    rng = np.random.default_rng(seed)
    img = (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    lab = np.zeros(shape, np.uint16)
    if not empty:
        placed = 0
        while placed < n_cmb:
            c = rng.integers(4, np.asarray(shape) - 4)
            box = tuple(slice(int(v) - 1, int(v) + 2) for v in c)
            grown = tuple(slice(int(v) - 3, int(v) + 4) for v in c)
            if lab[grown].any():
                continue
            placed += 1
            lab[box] = placed
    img[lab > 0] = 0.2
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 3.0)
    return Case(case_id, affine, shape, "instance", lambda: CaseData(img.copy(), lab.copy()))


class TinyNet(nn.Module):
    """Two 3×3×3 convolutions and a 1×1×1 head: enough to find dark cubes."""

    def __init__(self, out_channels: int = 2, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(1, width, 3, padding=1),
            nn.BatchNorm3d(width),
            nn.ReLU(),
            nn.Conv3d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(width, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def standardize(a: np.ndarray) -> np.ndarray:
    return ((a - a.mean()) / (a.std() + 1e-6)).astype(np.float32)
