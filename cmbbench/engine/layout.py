"""Memory layout of 3-D tensors: channels-last on the CPU.

oneDNN runs 3-D convolutions much faster on channels-last (``N, D, H, W, C`` in memory)
tensors than on the default ``N, C, D, H, W`` layout. Measured on 2 CPU cores (Intel Xeon
with AMX, bfloat16 autocast), ``unet3d``: a training step on 8 patches of 24×24×16 0.185 →
0.146 s, a whole 192×224×64 volume in inference 4.56 → 2.07 s; ``smp_unet_r18`` inference
2.05 → 0.92 s. It takes both the model's weights *and* its input in that layout (the input
alone changed nothing). Only the layout changes, never a value; CUDA keeps the default
layout (not measured here).
"""

from __future__ import annotations

from typing import Any


def prefers_channels_last(device: Any) -> bool:
    """True where cmbbench runs 3-D networks channels-last (the CPU)."""
    return getattr(device, "type", str(device).split(":")[0]) == "cpu"


def to_channels_last(module: Any, device: Any) -> Any:
    """Put ``module``'s 5-D parameters and buffers channels-last on a CPU ``device``
    (in place, values unchanged); a no-op elsewhere and for anything that is not an
    ``nn.Module``. Returns ``module``."""
    import torch

    if prefers_channels_last(device) and isinstance(module, torch.nn.Module):
        module.to(memory_format=torch.channels_last_3d)
    return module


def channels_last_input(x: Any, device: Any) -> Any:
    """``x`` (B, C, X, Y, Z) in channels-last layout on a CPU ``device``; unchanged elsewhere."""
    import torch

    if prefers_channels_last(device) and x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x
