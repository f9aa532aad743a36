"""The main job's wall time (pytest-benchmark, opt-in: ``CMBBENCH_BENCH_FULL=1``).

A fresh ``cmbbench run --model unet3d`` (quick recipe on the default dataset) in its own
process, as a user types it, with an empty dataset cache: data generation, patch preparation,
training, validation, inference on the test split and scoring. Target ≤ 10 min on 2 cores.
The run record's phase timings go into the benchmark's ``extra_info`` and are printed.
It takes 10–25 minutes on two cores, hence opt-in. Run:
``CMBBENCH_BENCH_FULL=1 pytest benchmarks/bench_run.py --benchmark-only -s``
(``CMBBENCH_BENCH_DEVICE=cuda`` for the GPU recipe's device).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PHASES = (
    "data_seconds",
    "prepare_seconds",
    "train_seconds",
    "seconds_per_step",
    "validation_seconds",
    "inference_seconds",
    "inference_seconds_per_case",
    "total_seconds",
    "peak_memory_bytes",
)


@pytest.mark.skipif(not os.environ.get("CMBBENCH_BENCH_FULL"), reason="set CMBBENCH_BENCH_FULL=1")
def test_fresh_unet3d_quick_run(benchmark, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "CMBBENCH_CACHE": str(tmp_path / "cache")}
    device = os.environ.get("CMBBENCH_BENCH_DEVICE", "auto")
    cmd = [sys.executable, "-m", "cmbbench.cli", "run", "--model", "unet3d"]
    cmd += ["--device", device, "--out", str(out), "--no-progress"]

    def fresh_run() -> None:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)

    benchmark.pedantic(fresh_run, rounds=1, iterations=1)
    record = json.loads((out / "record.json").read_text(encoding="utf-8"))
    timings = record["timings"]
    for key in PHASES:
        benchmark.extra_info[key] = timings.get(key)
    f1 = record["metrics"]["headline"]["f1_micro"]["value"]
    benchmark.extra_info["f1_micro"] = f1
    print(
        f"\nfresh unet3d quick run: {benchmark.stats.stats.mean:.0f} s wall on "
        f"{os.cpu_count()} cores; "
        + ", ".join(f"{k} {timings.get(k):.3g}" for k in PHASES if timings.get(k) is not None)
        + f"; test F1 {f1:.3f}"
    )
