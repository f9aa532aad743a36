"""Multi-sequence patch sampling (pytest-benchmark): cost per channel against one channel.

The same volumes, sampler settings and sample indices, with one channel (X, Y, Z) and with
three (3, X, Y, Z: the main image and two copies with other intensities, as T2*, T1, T2).
Target (issue 15): the three-channel sampler within 10 % per channel of the single-channel
one, i.e. ``time(3 channels) / (3 × time(1 channel)) <= 1.10`` (the label, valid-mask and
centre work is shared, so the ratio is below 1 when the image crops dominate). Run:
``pytest benchmarks/bench_multichannel.py --benchmark-only -s``.

Measured on 2 CPU cores, 20 batches of 8 × 40³ patches from 160×200×56 volumes (flip,
15° rotation, intensity): 1 channel 1.02 s, 3 channels 2.30 s, 0.75× per channel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _bench_data import bench_volume, standardize

from cmbbench.engine.patches import PatchSampler, prepare_volumes
from cmbbench.engine.recipe import resolve_recipe

BATCHES = 20
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def samplers():
    recipe = resolve_recipe("full", None, {"aug_rotate_deg": 15.0}).recipe
    one = prepare_volumes([bench_volume(s) for s in range(2)], standardize)
    three = [
        dataclasses.replace(v, image=np.stack([v.image, 0.5 * v.image + 1, 2 - v.image]))
        for v in one
    ]
    return (
        PatchSampler.from_recipe(one, recipe, seed=0),
        PatchSampler.from_recipe(three, recipe, seed=0),
    )


def _batches(sampler: PatchSampler) -> None:
    for step in range(BATCHES):
        sampler.batch(step)


@pytest.mark.parametrize("channels", [1, 3])
def test_patch_sampler(benchmark, samplers, channels):
    sampler = samplers[0 if channels == 1 else 1]
    benchmark.pedantic(_batches, args=(sampler,), rounds=5, warmup_rounds=1)
    RESULTS[str(channels)] = benchmark.stats.stats.median
    if len(RESULTS) == 2:
        per_channel = RESULTS["3"] / (3 * RESULTS["1"])
        print(
            f"\npatch sampler, {BATCHES} batches of {sampler.batch_size}×{sampler.patch_size}: "
            f"1 channel {RESULTS['1']:.3f} s, 3 channels {RESULTS['3']:.3f} s, "
            f"per channel {per_channel:.2f}× the single-channel time"
        )
        assert per_channel <= 1.10
