"""Optimizer step time per registered network and ``optimizer_impl`` (pytest-benchmark).

The optimizer step runs on every parameter each training step, so for the 35-73 M
parameter smp networks it is a large share of a CPU step. Each benchmark times one step of
the quick recipe's optimizer (Adam, L2 weight decay) on random gradients, in the engine's
layout (channels-last on the CPU). Run:
``pytest benchmarks/bench_optimizer.py --benchmark-only``; ``extra_info["n_parameters"]``
gives the model size (``CMBBENCH_BENCH_DEVICE=cuda`` for a GPU).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from cmbbench.engine.layout import to_channels_last
from cmbbench.engine.recipe import resolve_recipe
from cmbbench.engine.trainer import make_optimizer
from cmbbench.models.registry import create_model

DEVICE = torch.device(os.environ.get("CMBBENCH_BENCH_DEVICE", "cpu"))
MODELS = ["unet3d", "smp_linknet_r18", "smp_unet_r18", "smp_unet_r34", "smp_fpn_r18"]


@pytest.mark.parametrize("impl", ["auto", "fused"])
@pytest.mark.parametrize("name", MODELS)
def test_optimizer_step(benchmark, name, impl):
    torch.manual_seed(0)
    model = to_channels_last(create_model(name).to(DEVICE), DEVICE)
    recipe = dataclasses.replace(resolve_recipe("quick").recipe, optimizer_impl=impl)
    opt = make_optimizer(model, recipe)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    for _ in range(2):  # warm-up: the first steps allocate the moment buffers
        opt.step()

    def step():
        opt.step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)

    benchmark.pedantic(step, rounds=5, iterations=1)
    benchmark.extra_info["n_parameters"] = sum(p.numel() for p in model.parameters())
