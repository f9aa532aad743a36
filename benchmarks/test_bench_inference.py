"""Sliding-window inference and post-processing tuning (pytest-benchmark; not run by default).

Run: ``pytest benchmarks/test_bench_inference.py --benchmark-only -s`` (``-s`` prints the
figures). Untrained weights (speed does not depend on them).

- ``test_unet3d_sliding_window``: throughput of three window settings on a 160×200×56
  volume; ``extra_info["voxels_per_s"]`` in image voxels per second.
- ``test_quick_case_seconds``: seconds per case of the ``quick`` recipe's inference
  (:func:`~cmbbench.engine.inference.predict_probability`: whole volume, bfloat16 autocast
  where the CPU has it) on a quick-preset-sized scan of 150×180×45 voxels (1×1×3 mm,
  cropped to the brain), the mean of ``CASES`` different volumes after one warm-up.
- ``test_postprocess_grid_seconds``: the ``quick`` recipe's threshold × minimum-size grid
  (15 × 4) on ``CASES`` maps of that size, seconds per case, and the same grid scored pair by
  pair with a dense labelling (the engine's algorithm before grid points started sharing
  labels and scores) for the speed-up; both must give the same counts.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _bench_data import bench_volume, standardize  # noqa: E402

from cmbbench.engine.inference import predict_probability, sliding_window_predict  # noqa: E402
from cmbbench.engine.postprocess import GridPoint, postprocess_grid  # noqa: E402
from cmbbench.engine.recipe import resolve_recipe  # noqa: E402
from cmbbench.models.registry import create_model  # noqa: E402
from cmbbench.scoring.components import label_volume  # noqa: E402
from cmbbench.scoring.evaluator import Evaluator  # noqa: E402

SHAPE = (160, 200, 56)
QUICK_SHAPE = (150, 180, 45)  # the v2 quick preset's scans (1×1×3 mm, cropped to the brain)
CASES = int(os.environ.get("CMBBENCH_BENCH_CASES", "4"))
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


def test_quick_case_seconds(benchmark, model):
    recipe = resolve_recipe("quick").recipe
    images = [standardize(bench_volume(20 + i, QUICK_SHAPE).image) for i in range(CASES)]
    dev = torch.device(DEVICE)
    predict_probability(model, images[0], recipe, device=dev, divisor=8)  # warm-up
    wall: list[float] = []
    cpu: list[float] = []

    def run() -> None:
        for img in images:
            t0, c0 = time.perf_counter(), time.process_time()
            prob = predict_probability(model, img, recipe, device=dev, divisor=8)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            assert prob.shape == QUICK_SHAPE

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["seconds_per_case"] = float(np.mean(wall))
    benchmark.extra_info["cpu_seconds_per_case"] = float(np.mean(cpu))
    benchmark.extra_info["device"] = DEVICE
    print(
        f"\nquick inference {QUICK_SHAPE}: {np.mean(wall):.2f} s/case wall, "
        f"{np.mean(cpu):.2f} s/case CPU ({CASES} cases, {DEVICE})"
    )


def _blob_map(seed: int) -> tuple[np.ndarray, object]:
    """A probability map of a quick-sized scan: noise below the lowest threshold (0.1)
    everywhere, a bright blob on each of the case's 6 CMBs and 30 false-positive blobs of
    1-27 voxels at levels 0.15-1."""
    case = bench_volume(40 + seed, QUICK_SHAPE)
    rng = np.random.default_rng(seed)
    prob = (rng.random(QUICK_SHAPE) * 0.09).astype(np.float32)
    prob[np.asarray(case.label) > 0] = 0.9
    for _ in range(30):
        c = rng.integers(2, np.asarray(QUICK_SHAPE) - 4)
        size = rng.integers(1, 4, size=3)
        region = tuple(slice(int(a), int(a + s)) for a, s in zip(c, size, strict=True))
        prob[region] = rng.uniform(0.15, 1.0)
    return prob, case


def _grid_pair_by_pair(probs, cases, thresholds, min_sizes, evaluator) -> list[GridPoint]:
    counts = {(float(t), int(m)): [0, 0, 0] for t in thresholds for m in min_sizes}
    for prob, case in zip(probs, cases, strict=True):
        for t in thresholds:
            labels = label_volume(prob >= t, 26)
            sizes = np.bincount(labels.ravel())
            for m in min_sizes:
                keep = sizes >= max(int(m), 1)
                keep[0] = False
                res = evaluator.evaluate(keep[labels].astype(np.uint8), case, pred_kind="mask")
                c = counts[(float(t), int(m))]
                c[0], c[1], c[2] = c[0] + res.tp, c[1] + res.fp, c[2] + res.fn
    return [GridPoint(t, m, *c) for (t, m), c in counts.items()]


def test_postprocess_grid_seconds(benchmark):
    recipe = resolve_recipe("quick").recipe
    maps = [_blob_map(i) for i in range(CASES)]
    probs, cases = [p for p, _ in maps], [c for _, c in maps]
    evaluator = Evaluator()
    grid_args = (probs, cases, recipe.pp_thresholds, recipe.pp_min_sizes, evaluator)
    t0 = time.perf_counter()
    reference = _grid_pair_by_pair(*grid_args)
    ref_s = (time.perf_counter() - t0) / CASES
    t0 = time.perf_counter()
    grid = benchmark.pedantic(postprocess_grid, args=grid_args, rounds=1, iterations=1)
    fast_s = (time.perf_counter() - t0) / CASES
    assert grid == reference
    benchmark.extra_info["seconds_per_case"] = fast_s
    benchmark.extra_info["pair_by_pair_seconds_per_case"] = ref_s
    print(
        f"\npost-processing grid {len(recipe.pp_thresholds)}×{len(recipe.pp_min_sizes)} on "
        f"{QUICK_SHAPE}: {fast_s:.3f} s/case (pair by pair {ref_s:.3f} s/case, "
        f"{ref_s / fast_s:.1f}× faster)"
    )
