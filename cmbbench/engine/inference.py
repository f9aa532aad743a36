"""Sliding-window inference with Gaussian-weighted blending (as in nnU-Net).

A network is run on overlapping windows (or on the whole volume, padded to its divisor);
each window's CMB probability is weighted by a Gaussian importance map (σ = 1/8 of the
window size per axis, peak 1 at the centre) and the weighted sum is divided by the summed
weights, so window borders, where a convolution sees zero padding, count least.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cmbbench.engine.environment import prime_vector_math
from cmbbench.engine.layout import channels_last_input, to_channels_last
from cmbbench.errors import CmbbenchError
from cmbbench.models.detector import Divisor, ModelShapeError, divisor_triple, round_up_to_divisor
from cmbbench.progress import PhaseTracker, ProgressFn

if TYPE_CHECKING:
    import torch


def gaussian_importance_map(
    patch_size: Sequence[int], sigma_scale: float = 0.125, dtype: Any = np.float32
) -> np.ndarray:
    """Separable Gaussian weights of shape ``patch_size`` (voxels), peak 1 at the centre.

    σ per axis = ``sigma_scale`` × window size; weights are clamped below at the smallest
    positive value so no voxel has weight 0 (every voxel of a window counts a little).
    """
    axes = []
    for n in patch_size:
        n = int(n)
        centre = (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-6)
        x = np.arange(n, dtype=np.float64)
        axes.append(np.exp(-0.5 * ((x - centre) / sigma) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w /= w.max()
    positive = w[w > 0]
    w = np.maximum(w, positive.min() if positive.size else 1.0)
    return w.astype(dtype)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices (voxels) of windows of length ``patch`` covering ``[0, size)`` with at
    least ``overlap`` (fraction of ``patch``) between neighbours, evenly spread, first at 0
    and last at ``size - patch``. Requires ``size >= patch``."""
    if size <= patch:
        return [0]
    stride = patch * (1.0 - overlap)
    n = math.ceil((size - patch) / stride) + 1
    span = size - patch
    return sorted({round(i * span / (n - 1)) for i in range(n)})


def _probabilities(logits: torch.Tensor, label: str) -> torch.Tensor:
    import torch

    if logits.ndim != 5:
        raise ModelShapeError(
            f"model {label!r} returned shape {tuple(logits.shape)}, expected (B, C, X, Y, Z)"
        )
    c = logits.shape[1]
    logits = logits.float()
    if c == 2:
        return torch.softmax(logits, dim=1)[:, 1]
    if c == 1:
        return torch.sigmoid(logits[:, 0])
    raise ModelShapeError(
        f"model {label!r}: output has {c} channels, expected 1 (logit) or 2 (softmax)"
    )


def sliding_window_predict(
    model: Any,
    image: np.ndarray,
    *,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: str | Any = "cpu",
    amp: bool = False,
    divisor: Divisor = 8,
    sigma_scale: float = 0.125,
    progress: ProgressFn | None = None,
    name: str | None = None,
) -> np.ndarray:
    """CMB probability map float32 (X, Y, Z) in [0, 1] for a normalised image (X, Y, Z), or
    (C, X, Y, Z) for a network with C input channels (windows go in as (B, C, *window)).

    ``patch_size``: window (voxels, each a multiple of ``divisor``, one int or one per axis);
    ``None`` runs the whole volume at once, zero-padded up to multiples of ``divisor``. The image is zero-padded
    (at the high end of each axis) where it is smaller than the window. ``overlap``: minimum
    fraction of a window shared with its neighbour, in [0, 1). ``batch_size`` windows go
    through the model at a time. The model's output (logits) is turned into a probability
    with softmax (2 channels, class 1) or sigmoid (1 channel). ``amp``: autocast (float16 on
    CUDA, bfloat16 on CPU). ``progress`` receives an ``"infer"`` phase (windows done) after every batch.
    On the CPU the model's weights are put channels-last (:mod:`cmbbench.engine.layout`;
    values unchanged).
    The model is run in eval mode under ``torch.inference_mode`` and its mode restored.
    One window (the whole volume, or a window as large as the padded image) skips the
    blending buffers: its probability is the result as it is (bitwise what blending one
    window with weight 1 gives). The CPU's vector math is primed first
    (:func:`~cmbbench.engine.environment.prime_vector_math`: ELU's ``expm1`` twice as fast
    overall, values unchanged).
    """
    import torch

    prime_vector_math()
    label = name or type(model).__name__
    image = np.asarray(image)
    if image.ndim not in (3, 4):
        raise CmbbenchError(
            "sliding_window_predict: image must be 3-D (X, Y, Z) or 4-D (C, X, Y, Z), got "
            f"{image.shape}"
        )
    multi = image.ndim == 4
    if not 0.0 <= overlap < 1.0:
        raise CmbbenchError(f"sliding_window_predict: overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise CmbbenchError(f"sliding_window_predict: batch_size must be >= 1, got {batch_size}")
    shape = tuple(int(s) for s in image.shape[-3:])
    div = divisor_triple(divisor, name=f"model {label!r}")
    if patch_size is None:
        patch = round_up_to_divisor(shape, div)
    else:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != 3 or any(p < 1 for p in patch):
            raise CmbbenchError(f"patch_size must be 3 positive ints (voxels), got {patch_size}")
        if any(p % k for p, k in zip(patch, div, strict=True)):
            raise ModelShapeError(
                f"model {label!r} needs spatial sizes divisible by {divisor}, got patch_size {patch}"
            )
    padded_shape = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    dev = torch.device(device)

    vol = torch.zeros(image.shape[:-3] + padded_shape, dtype=torch.float32)
    vol[..., : shape[0], : shape[1], : shape[2]] = torch.from_numpy(
        np.ascontiguousarray(image, dtype=np.float32)
    )
    vol = vol.to(dev)
    starts = [window_starts(s, p, overlap) for s, p in zip(padded_shape, patch, strict=True)]
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
    single = len(corners) == 1
    if single:  # one window: its probability is the result (blending weight 1 everywhere)
        weight = acc = norm = None
    else:
        weight = torch.from_numpy(gaussian_importance_map(patch, sigma_scale)).to(dev)
        acc = torch.zeros(padded_shape, dtype=torch.float32, device=dev)
        norm = torch.zeros(padded_shape, dtype=torch.float32, device=dev)

    if amp:
        amp_ctx: Any = torch.autocast(
            device_type=dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16
        )
    else:
        amp_ctx = torch.autocast(device_type=dev.type, enabled=False)
    tracker = PhaseTracker(progress, "infer", len(corners), "sliding windows")
    was_training = getattr(model, "training", False)
    model.eval()
    to_channels_last(model, dev)
    try:
        with torch.inference_mode(), amp_ctx:
            for i in range(0, len(corners), batch_size):
                chunk = corners[i : i + batch_size]
                x = torch.stack(
                    [
                        vol[..., a : a + patch[0], b : b + patch[1], c : c + patch[2]]
                        for a, b, c in chunk
                    ]
                )
                if not multi:  # (B, *window) -> (B, 1, *window)
                    x = x[:, None]
                out = model(channels_last_input(x, dev))
                if not isinstance(out, torch.Tensor):
                    raise ModelShapeError(
                        f"model {label!r} must return one tensor (B, C, X, Y, Z), got "
                        f"{type(out).__name__}"
                    )
                if tuple(out.shape[2:]) != patch or out.shape[0] != len(chunk):
                    raise ModelShapeError(
                        f"model {label!r}: output shape {tuple(out.shape)} does not match the "
                        f"input {tuple(x.shape)}"
                    )
                prob = _probabilities(out, label)
                if single:
                    acc = prob[0]
                    tracker.emit(1)
                    continue
                for (a, b, c), p in zip(chunk, prob, strict=True):
                    region = (
                        slice(a, a + patch[0]),
                        slice(b, b + patch[1]),
                        slice(c, c + patch[2]),
                    )
                    acc[region] += p * weight
                    norm[region] += weight
                tracker.emit(min(i + batch_size, len(corners)))
    finally:
        model.train(was_training)
    if single:
        result = acc[: shape[0], : shape[1], : shape[2]]
    else:
        result = (acc / norm)[: shape[0], : shape[1], : shape[2]]
    return np.ascontiguousarray(result.clamp(0.0, 1.0).cpu().numpy(), dtype=np.float32)


def inference_window(recipe: Any, shape: Sequence[int], divisor: Divisor) -> tuple[int, int, int]:
    """The sliding window (voxels) for an image of ``shape``: the recipe's
    ``infer_patch_size``, shrunk along axes where the image (rounded up to ``divisor``, one
    int or one per axis) is smaller."""
    window = round_up_to_divisor(recipe.infer_patch_size, divisor)
    image = round_up_to_divisor(shape, divisor)
    return tuple(min(w, i) for w, i in zip(window, image, strict=True))  # type: ignore[return-value]


def predict_probability(
    model: Any,
    image: np.ndarray,
    recipe: Any,
    *,
    device: Any,
    divisor: Divisor = 1,
    name: str | None = None,
) -> np.ndarray:
    """CMB probability float32 (X, Y, Z) of a *normalised* image (X, Y, Z) or (C, X, Y, Z)
    (multi-sequence input), by sliding-window
    inference with the recipe's window, overlap and batch; mixed precision as in training
    (:func:`cmbbench.engine.trainer.autocast_dtype`)."""
    from cmbbench.engine.trainer import autocast_dtype

    return sliding_window_predict(
        model,
        image,
        patch_size=inference_window(recipe, image.shape[-3:], divisor),
        overlap=recipe.infer_overlap,
        batch_size=recipe.infer_batch_size,
        device=device,
        amp=autocast_dtype(recipe, device) is not None,
        divisor=divisor,
        name=name,
    )
