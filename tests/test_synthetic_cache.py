"""Cache safety of the synthetic dataset: concurrent fills, corrupt entries, clean reloads."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cmbbench
from cmbbench.datasets.synthetic import cache as cache_mod
from cmbbench.datasets.synthetic.dataset import _specs, dataset_folder

N = 3  # tiny subjects per fill: enough for the fills of several processes to overlap
CACHE_LOG = "cmbbench.datasets.synthetic.cache"

# One filling process: imports, says it is ready, waits for the common start, then loads the
# dataset (generating what is missing) and reads every case's arrays. Its NIfTI writes are
# slowed down (a slow disk) so that the fills of the processes overlap on every run.
CHILD = """
import sys, time
from pathlib import Path
import nibabel
import cmbbench
real_save = nibabel.save
def slow_save(img, filename, **kwargs):
    real_save(img, filename, **kwargs)
    time.sleep(0.05)
nibabel.save = slow_save
cache, n, workers, ready, go = sys.argv[1:6]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
ds = cmbbench.load_dataset(
    "synthetic", preset="tiny", n=int(n), cache_dir=cache, workers=int(workers), progress=False
)
for case in ds:
    assert case.image.shape == case.label.shape == case.ignore.shape == case.shape
"""


def _load(cache_dir: Path, workers: int = 1):
    return cmbbench.load_dataset(
        "synthetic", preset="tiny", n=N, cache_dir=cache_dir, workers=workers, progress=False
    )


def _folder(cache_dir: Path) -> Path:
    return dataset_folder(cache_dir, "tiny", 0, None, "dipole")


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A cache filled by one process, one worker: the bytes every other fill must match."""
    root = tmp_path_factory.mktemp("cache_ref")
    _load(root)
    return root


@pytest.fixture
def cache_copy(reference, tmp_path) -> Path:
    """A private copy of the reference cache (file times kept) for a test to damage."""
    root = tmp_path / "cache"
    shutil.copytree(reference, root)
    return root


def test_concurrent_fills_all_succeed_with_identical_files(reference, tmp_path):
    cache = tmp_path / "shared"
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    workers = [1, 2, 1]  # single-process fills and a forked pool, all on one cache
    procs = []
    for i, w in enumerate(workers):
        ready = tmp_path / f"ready{i}"
        args = [sys.executable, "-c", CHILD, str(cache), str(N), str(w), str(ready), str(go)]
        procs.append(
            (ready, subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        )
    deadline = time.monotonic() + 60
    while not all(r.exists() for r, _ in procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all start filling at once
    failures = []
    for i, (_, proc) in enumerate(procs):
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failures.append(
                f"process {i} (workers={workers[i]}) exit {proc.returncode}:\n{err.decode()}"
            )
    assert not failures, "\n".join(failures)
    assert _hashes(_folder(cache)) == _hashes(_folder(reference))


def test_truncated_nifti_is_regenerated(reference, cache_copy, caplog):
    folder = _folder(cache_copy)
    image = cache_mod.subject_paths(folder, "sub-0002")["image"]
    other = _mtimes(folder / "sub-0001")
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger=CACHE_LOG):
        ds = _load(cache_copy)
    assert ds[1].image.shape == ds[1].shape
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(image) in warnings[0] and "regenerated" in warnings[0]
    assert _hashes(folder) == _hashes(_folder(reference))
    assert _mtimes(folder / "sub-0001") == other  # only the damaged subject was rewritten


def test_corrupt_sidecar_is_regenerated(reference, cache_copy, caplog):
    folder = _folder(cache_copy)
    side = cache_mod.subject_paths(folder, "sub-0003")["sidecar"]
    side.write_bytes(side.read_bytes()[:-40])  # a cut-off JSON document
    with caplog.at_level(logging.WARNING, logger=CACHE_LOG):
        ds = _load(cache_copy)
    assert ds[2].meta["protocol"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(side) in warnings[0] and "regenerated" in warnings[0]
    assert _hashes(folder) == _hashes(_folder(reference))


def test_clean_second_load_regenerates_nothing(cache_copy, caplog):
    folder = _folder(cache_copy)
    before = _mtimes(folder)
    specs = _specs("tiny", N, 0, None, "dipole")
    with caplog.at_level(logging.INFO, logger=CACHE_LOG):
        ds = _load(cache_copy, workers=2)
        assert cache_mod.ensure_generated(folder, specs, workers=2) == []
    for case in ds:
        assert case.image.shape == case.shape
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    assert _mtimes(folder) == before


def test_subject_lock_is_exclusive(tmp_path):
    with cache_mod.subject_lock(tmp_path, "sub-0001") as held:
        assert held
        with cache_mod.subject_lock(tmp_path, "sub-0001", wait=False) as second:
            assert not second  # another open handle (as in another process) is refused
        with cache_mod.subject_lock(tmp_path, "sub-0002", wait=False) as other:
            assert other  # one lock per subject
    with cache_mod.subject_lock(tmp_path, "sub-0001", wait=False) as again:
        assert again  # released on leaving the block
    assert (tmp_path / cache_mod.LOCK_DIR / "sub-0001.lock").is_file()  # kept, never deleted


def test_without_file_locking_one_process_still_fills(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cache_mod, "fcntl", None)
    monkeypatch.setattr(cache_mod, "msvcrt", None)
    monkeypatch.setattr(cache_mod, "_warned_no_lock", False)
    specs = _specs("tiny", 1, 0, None, "dipole")
    with caplog.at_level(logging.WARNING, logger=CACHE_LOG):
        assert cache_mod.ensure_generated(tmp_path, specs, workers=1) == ["sub-0001"]
    assert cache_mod.is_complete(tmp_path, "sub-0001", specs[0].fingerprint())
    assert ["no file locking" in r.getMessage() for r in caplog.records] == [True]


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info()]


def test_generation_workers_run_one_native_thread_each():
    # A forked worker inherits the parent's BLAS pool (2 threads on a 2-core machine); with
    # one worker per core that would put several spinning BLAS threads on every core.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2), cache_mod._pool(2) as pool:
        threads = pool.submit(_blas_threads).result()
    assert threads, "no native thread pool found in the worker"
    assert set(threads) == {1}, f"expected 1 thread per native pool in a worker, got {threads}"
