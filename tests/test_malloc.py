"""cmbbench.malloc: generation workers keep freed memory instead of re-faulting it."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cmbbench.malloc as malloc_mod

# Allocates and fills a 64 MB array ten times (above glibc's largest dynamic mmap threshold,
# 32 MB, so by default every one is a fresh mapping the kernel must fault in and zero) and
# prints the page faults it took.
_CHILD = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from cmbbench.malloc import keep_freed_memory
    assert keep_freed_memory()
np.ones(8 << 20).sum()  # warm up numpy itself
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.empty(8 << 20)  # 64 MB of float64
    a.fill(1.0)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_kept_memory_is_reused_not_faulted_again():
    # default: ten fresh 64 MB mappings, each faulted in (16 384 small pages, or 32 huge
    # pages under transparent huge pages); kept: the first one grows the heap, the other nine
    # reuse it, so at most about a tenth of the faults (a third allows for noise)
    default, kept = _faults("default"), _faults("keep")
    assert default >= 10 * 30, f"expected >= 300 faults by default, got {default}"
    assert 3 * kept < default, f"expected < 1/3 of {default} faults when kept, got {kept}"


def test_off_linux_it_is_a_no_op(monkeypatch):
    keep = malloc_mod.keep_freed_memory.__wrapped__  # the uncached function
    monkeypatch.setattr(malloc_mod.sys, "platform", "darwin")
    assert keep() is False


def _fault_loop() -> int:
    """The loop of ``_CHILD`` in this process: page faults of ten 64 MB fill-and-free."""
    import resource

    import numpy as np

    np.ones(8 << 20).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        a = np.empty(8 << 20)
        a.fill(1.0)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_generation_workers_keep_freed_memory():
    # the pool's initializer sets it up: a worker reuses its freed 64 MB blocks (compared
    # with a fresh interpreter that does not)
    from cmbbench.datasets.synthetic import cache as cache_mod

    with cache_mod._pool(1) as pool:
        in_worker = pool.submit(_fault_loop).result()
    default = _faults("default")
    assert 3 * in_worker < default, f"worker: {in_worker} faults, default {default}"
