"""Sliding-window inference throughput of ``unet3d`` (pytest-benchmark; not run by default).

Run: ``pytest benchmarks/test_bench_inference.py --benchmark-only``. Each result's
``extra_info["voxels_per_s"]`` is the throughput in image voxels per second (one volume of
160 × 200 × 56 voxels, untrained weights — speed does not depend on them).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmbbench.engine.inference import sliding_window_predict  # noqa: E402
from cmbbench.models.registry import create_model  # noqa: E402

SHAPE = (160, 200, 56)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("unet3d").to(DEVICE)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


@pytest.mark.parametrize(
    "patch,overlap",
    [(None, 0.0), ((64, 64, 64), 0.25), ((64, 64, 64), 0.5)],
    ids=["whole", "w64-ov0.25", "w64-ov0.5"],
)
def test_unet3d_sliding_window(benchmark, model, image, patch, overlap):
    kw = {"patch_size": patch, "overlap": overlap, "batch_size": 4, "device": DEVICE}
    out = benchmark.pedantic(
        sliding_window_predict, args=(model, image), kwargs=kw, rounds=1, iterations=1
    )
    assert out.shape == SHAPE
    benchmark.extra_info["voxels_per_s"] = int(np.prod(SHAPE) / benchmark.stats["mean"])
    benchmark.extra_info["device"] = DEVICE
