"""Engine throughput (pytest-benchmark): training overhead and sliding-window inference.

(a) bare model: forward + loss + backward + optimiser step of ``unet3d`` (or the model named
    by ``CMBBENCH_BENCH_MODEL``, e.g. ``resenc_unet_m``) on pre-built batches
    (no data loading at all), in the engine's memory layout (channels-last on the CPU);
(b) the engine: :func:`cmbbench.engine.trainer.train` on the *same* batches (the same
    deterministic sampler and steps), with patch sampling in a worker process, learning-rate
    schedule, loss bookkeeping and progress. Target: (a) / (b) >= 0.90.
(c) sliding-window inference voxels/s on a 160×200×56 volume: the ``quick`` recipe
    (whole volume) and the ``full`` recipe's 80×80×40 windows with 50 % overlap.

Both (a) and (b) use the ``quick`` recipe's precision (bfloat16 autocast on CPUs where bf16
is the faster, :func:`cmbbench.engine.trainer.cpu_prefers_bf16`, float32 otherwise; float16
on CUDA). Run:
``pytest benchmarks/bench_engine.py --benchmark-only -s`` (``-s`` prints the figures;
``CMBBENCH_BENCH_DEVICE=cuda`` to run on a GPU, ``CMBBENCH_BENCH_STEPS`` to change the steps,
``CMBBENCH_BENCH_AMP_CPU=on|off`` to force the CPU precision).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
import torch
from _bench_data import SHAPE, bench_volume, standardize

from cmbbench.engine.inference import predict_probability
from cmbbench.engine.layout import channels_last_input, to_channels_last
from cmbbench.engine.losses import CmbLoss
from cmbbench.engine.patches import PatchSampler, prepare_volumes
from cmbbench.engine.recipe import resolve_recipe
from cmbbench.engine.trainer import autocast_dtype, lr_at, make_optimizer, train
from cmbbench.models.registry import create_model

DEVICE = torch.device(os.environ.get("CMBBENCH_BENCH_DEVICE", "cpu"))
STEPS = int(os.environ.get("CMBBENCH_BENCH_STEPS", "12"))
MODEL = os.environ.get("CMBBENCH_BENCH_MODEL", "unet3d")
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup():
    overrides: dict[str, object] = {"steps": STEPS, "val_every": 10**6, "checkpoint_every": 10**6}
    if os.environ.get("CMBBENCH_BENCH_AMP_CPU"):
        overrides["amp_cpu"] = os.environ["CMBBENCH_BENCH_AMP_CPU"]
    recipe = resolve_recipe("quick", None, overrides).recipe
    volumes = prepare_volumes([bench_volume(i) for i in range(4)], standardize)
    sampler = PatchSampler.from_recipe(volumes, recipe, seed=0)
    return recipe, sampler


def _model():
    torch.manual_seed(0)
    return create_model(MODEL).to(DEVICE)


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def test_bare_model_step(benchmark, setup):
    recipe, sampler = setup
    batches = [sampler.batch(s) for s in range(STEPS)]
    model = to_channels_last(_model(), DEVICE)  # the engine's layout: compare like with like
    opt = make_optimizer(model, recipe)
    crit = CmbLoss.from_recipe(recipe)
    dtype = autocast_dtype(recipe, DEVICE)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def steps():
        for s, b in enumerate(batches):
            for g in opt.param_groups:
                g["lr"] = lr_at(recipe, s)
            x = channels_last_input(b["image"].to(DEVICE), DEVICE)
            y, v = b["label"].to(DEVICE), b["valid"].to(DEVICE)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(
                DEVICE.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                out = model(x)
            loss = crit(out.float(), y, v)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            float(loss.detach())
        _sync()

    steps()  # warm-up (allocator, oneDNN kernels)
    t0 = time.perf_counter()
    benchmark.pedantic(steps, rounds=1, iterations=1)
    RESULTS["bare_s_per_step"] = (time.perf_counter() - t0) / STEPS
    benchmark.extra_info["seconds_per_step"] = RESULTS["bare_s_per_step"]


def test_engine_step(benchmark, setup, tmp_path):
    recipe, sampler = setup
    model = _model()
    warm = dataclasses.replace(recipe, steps=2)
    train(model, sampler, warm, out_dir=tmp_path / "warm", device=DEVICE)
    res: dict[str, float] = {}

    def run():
        r = train(_model(), sampler, recipe, out_dir=tmp_path / "run", device=DEVICE)
        res["s"] = r.train_seconds / r.steps

    benchmark.pedantic(run, rounds=1, iterations=1)
    RESULTS["engine_s_per_step"] = res["s"]
    benchmark.extra_info["seconds_per_step"] = res["s"]
    if "bare_s_per_step" in RESULTS:
        ratio = RESULTS["bare_s_per_step"] / res["s"]
        benchmark.extra_info["throughput_vs_bare"] = ratio
        print(
            f"\n{MODEL}: bare {RESULTS['bare_s_per_step']:.3f} s/step, "
            f"engine {res['s']:.3f} s/step: "
            f"engine throughput = {100 * ratio:.0f}% of the bare model's"
        )


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_inference_voxels_per_second(benchmark, preset):
    recipe = resolve_recipe(preset).recipe
    if DEVICE.type == "cpu" and preset == "full":
        recipe = dataclasses.replace(recipe, amp_cpu="auto")
    if os.environ.get("CMBBENCH_BENCH_AMP_CPU"):
        recipe = dataclasses.replace(recipe, amp_cpu=os.environ["CMBBENCH_BENCH_AMP_CPU"])
    model = _model().eval()
    image = standardize(bench_volume(9).image)
    predict_probability(model, image[:64, :64, :32], recipe, device=DEVICE, divisor=8)  # warm-up
    t0 = time.perf_counter()
    prob = benchmark.pedantic(
        predict_probability, args=(model, image, recipe), kwargs={"device": DEVICE, "divisor": 8},
        rounds=1, iterations=1,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    assert prob.shape == SHAPE
    vps = float(np.prod(SHAPE)) / seconds
    benchmark.extra_info["voxels_per_second"] = vps
    print(
        f"\n{preset} inference window {recipe.infer_patch_size} overlap {recipe.infer_overlap}: "
        f"{seconds:.1f} s for {SHAPE}, {vps / 1e6:.3f} Mvoxel/s"
    )
