"""Synthetic-dataset speed (pytest-benchmark).

(a) generation of one subject at the 1×1×3 mm protocol (``quick`` preset field of view),
    after warm-up (templates loaded, air–bone field cached), in this process set up as a
    generation worker is (one native thread, freed memory kept: ``init_worker``). Target
    ≤ 1 s per subject per core.
(b) loading a cached case (image float32 + instance label + ignore mask from NIfTI).
    Target ≤ 0.2 s.
(c) (opt-in, ``CMBBENCH_BENCH_FULL=1``) the whole ``quick`` preset generated on all cores
    into an empty cache. Target ≤ 2 min on 2 cores (v2.0, 232 subjects).

Run: ``pytest benchmarks/bench_synthetic.py --benchmark-only -s``.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest

from cmbbench.datasets.synthetic.cache import init_worker, load_subject_arrays, write_subject
from cmbbench.datasets.synthetic.generator import SubjectSpec, generate_subject, subject_ids

PROTOCOL = "t2s2d_3t_1x1x3"


def test_generate_subject_1x1x3(benchmark):
    init_worker()  # one core, as a worker of the generation pool runs
    generate_subject(SubjectSpec("sub-0100", 0, PROTOCOL, "quick"))  # warm-up
    ids = itertools.cycle(subject_ids(48))
    cpu: list[float] = []

    def one():
        t = time.process_time()
        generate_subject(SubjectSpec(next(ids), 0, PROTOCOL, "quick"))
        cpu.append(time.process_time() - t)

    benchmark.pedantic(one, rounds=12, iterations=1)
    print(
        f"\n1x1x3 generation: mean wall {benchmark.stats.stats.mean:.3f} s, "
        f"mean CPU {sum(cpu) / len(cpu):.3f} s per subject"
    )


def test_load_cached_case(benchmark, tmp_path: Path):
    sub = generate_subject(SubjectSpec("sub-0005", 0, PROTOCOL, "quick"))
    write_subject(tmp_path, sub)
    data = benchmark(load_subject_arrays, tmp_path, "sub-0005")
    assert data.image.shape == sub.image.shape
    print(f"\ncached-case load ({sub.image.shape}): mean {benchmark.stats.stats.mean:.3f} s")


@pytest.mark.skipif(not os.environ.get("CMBBENCH_BENCH_FULL"), reason="set CMBBENCH_BENCH_FULL=1")
def test_generate_quick_preset(benchmark, tmp_path: Path):
    import cmbbench

    ds = benchmark.pedantic(
        cmbbench.load_dataset, args=("synthetic",),
        kwargs={"preset": "quick", "cache_dir": tmp_path, "progress": False},
        rounds=1, iterations=1,
    )  # fmt: skip
    dt = benchmark.stats.stats.mean
    print(f"\nquick preset: {len(ds)} subjects in {dt:.1f} s on {os.cpu_count()} cores")
