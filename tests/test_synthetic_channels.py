"""The synthetic T1-weighted channel (issue 15, part 2): optional, deterministic, cached
beside each subject without changing a byte of the T2* data or of existing cache entries."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import cmbbench
from cmbbench.datasets.synthetic import cache as cache_mod
from cmbbench.datasets.synthetic.dataset import dataset_folder
from cmbbench.datasets.synthetic.generator import T1W_SEQUENCE, generate_subject, generate_t1
from cmbbench.datasets.synthetic.subjects import SubjectSpec, subject_protocol
from cmbbench.errors import InputError

N = 3


def _load(cache: Path, channels=None, workers: int = 1):
    opts = {} if channels is None else {"channels": channels}
    return cmbbench.load_dataset(
        "synthetic", preset="tiny", n=N, cache_dir=cache, workers=workers, progress=False, **opts
    )


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".locks" not in p.parts
    }


def test_t1_channel_added_without_touching_cached_subjects(tmp_path, caplog):
    cache = tmp_path / "cache"
    plain = _load(cache)
    folder = dataset_folder(cache, "tiny", 0, None, "dipole")
    before = _hashes(folder)
    assert not any("T1" in k for k in before)  # never written unless asked for
    with caplog.at_level(logging.INFO, logger="cmbbench.datasets.synthetic.cache"):
        two = _load(cache, channels=["T2S", "T1"], workers=2)
    after = _hashes(folder)
    # every existing file keeps its bytes (no subject regenerated); only T1 files were added
    assert {k: v for k, v in after.items() if k in before} == before
    added = sorted(set(after) - set(before))
    assert len(added) == 2 * N and all("desc-masked_T1" in k for k in added)
    assert "generating 3 synthetic T1 subject(s)" in caplog.text
    assert "generating 3 synthetic subject(s)" not in caplog.text
    assert two.options["channels"] == ["T2S", "T1"] and "channels" not in plain.options
    for a, b in zip(plain, two, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        t1 = b.load().extra["T1"]
        assert t1.shape == b.shape and t1.dtype == np.float32 and np.all(np.isfinite(t1))
        assert a.load().extra == {}
    # a second request reads the cache: nothing is generated again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cmbbench.datasets.synthetic.cache"):
        _load(cache, channels="T2S,T1".split(","))
    assert "generating" not in caplog.text and _hashes(folder) == after
    # deterministic: a lost T1 file is regenerated to the same bytes, the subject left alone
    t1_file, _ = cache_mod.extra_paths(folder, "sub-0002", "T1")
    t1_file.unlink()
    _load(cache, channels=["T2S", "T1"])
    assert _hashes(folder) == after


def test_t1_image_is_t1_weighted_and_cmbs_nearly_invisible():
    from scipy import ndimage as ndi

    ratios = []
    for sid in ("sub-0001", "sub-0002", "sub-0004"):
        spec = SubjectSpec(sid, 0, subject_protocol(0, sid, "tiny"), "tiny", "dipole")
        subject = generate_subject(spec)
        t1, grid = generate_t1(spec)
        again, _ = generate_t1(spec)
        np.testing.assert_array_equal(t1, again)  # deterministic
        assert t1.shape == subject.image.shape and np.allclose(grid.affine, subject.grid.affine)
        lab = subject.label > 0
        if not lab.any():
            continue
        ring = ndi.binary_dilation(lab, iterations=2) & ~lab & (subject.image > 0)
        t2s_ratio = subject.image[lab].mean() / subject.image[ring].mean()
        t1_ratio = t1[lab].mean() / t1[ring].mean()
        ratios.append((t2s_ratio, t1_ratio))
    assert ratios
    for t2s_ratio, t1_ratio in ratios:
        assert t2s_ratio < 0.7 and t1_ratio > 0.8 and t1_ratio > t2s_ratio + 0.2


def test_t1_tissue_contrast_is_t1_weighted():
    # white matter brighter than grey matter, grey brighter than CSF (the T2* image: CSF brightest)
    from cmbbench.datasets.synthetic.contrast import spgr_signal, tissue_params

    params = tissue_params(3.0)
    s = {t: spgr_signal(p["pd"], p["t1"], p["t2s"], **T1W_SEQUENCE) for t, p in params.items()}
    assert s["wm"] > s["gm"] > s["csf"]


def test_bad_synthetic_channels_are_clear(tmp_path):
    with pytest.raises(InputError, match="channels must start with the main T2S"):
        _load(tmp_path, channels=["T1", "T2S"])
    with pytest.raises(InputError, match="T2S, T1"):
        _load(tmp_path, channels=["T2S", "T2"])


def test_two_channel_tiny_run_on_synthetic(tmp_path):
    from cmbbench.engine.run import run

    torch.set_num_threads(1)
    record = run(
        "unet3d", "synthetic", preset="tiny", device="cpu", out=tmp_path / "run",
        dataset_options={"channels": ["T2S", "T1"], "n": 8, "cache_dir": str(tmp_path / "c")},
        model_kwargs={"filters": (4, 8)},
        overrides={"steps": 4, "val_every": 4, "checkpoint_every": 4, "batch_size": 2,
                   "patch_size": (16, 16, 8), "infer_patch_size": (32, 32, 16)},
        n_bootstrap=20,
    )  # fmt: skip
    assert record.dataset["channels"] == ["T2S", "T1"] and record.model["in_channels"] == 2
    assert all(np.isfinite(record.training["loss_every_step"]))


# one filling process asking for the T1 channel; NIfTI writes slowed so that fills overlap
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
ds = cmbbench.load_dataset("synthetic", preset="tiny", n=int(n), cache_dir=cache,
                           workers=int(workers), progress=False, channels=["T2S", "T1"])
for case in ds:
    assert case.load().extra["T1"].shape == case.shape
"""


def test_concurrent_t1_fills_agree_with_a_single_fill(tmp_path):
    import os
    import subprocess
    import sys
    import time

    reference = tmp_path / "ref"
    _load(reference, channels=["T2S", "T1"])
    cache, go = tmp_path / "shared", tmp_path / "go"
    _load(cache)  # the subjects exist already (cached before the channel was asked for)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs = []
    for i, w in enumerate([1, 2, 1]):
        ready = tmp_path / f"ready{i}"
        args = [sys.executable, "-c", CHILD, str(cache), str(N), str(w), str(ready), str(go)]
        procs.append(
            (ready, subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        )
    deadline = time.monotonic() + 60
    while not all(r.exists() for r, _ in procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for _, proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    folder = lambda root: dataset_folder(root, "tiny", 0, None, "dipole")  # noqa: E731
    assert _hashes(folder(cache)) == _hashes(folder(reference))


def test_truncated_t1_is_regenerated_with_a_warning(tmp_path, caplog):
    cache = tmp_path / "cache"
    _load(cache, channels=["T2S", "T1"])
    folder = dataset_folder(cache, "tiny", 0, None, "dipole")
    before = _hashes(folder)
    t1_file, _ = cache_mod.extra_paths(folder, "sub-0003", "T1")
    data = t1_file.read_bytes()
    t1_file.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="cmbbench.datasets.synthetic.cache"):
        _load(cache, channels=["T2S", "T1"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(t1_file) in warnings[0] and "regenerated" in warnings[0]
    assert _hashes(folder) == before


def test_export_tree_with_t1_reads_as_valdo_with_two_channels(tmp_path):
    from cmbbench.datasets.synthetic.dataset import export_tree

    out = export_tree(tmp_path / "tree", n=2, preset="tiny", workers=1, channels=["T2S", "T1"])
    ds = cmbbench.load_dataset("valdo", root=str(out), channels=["T2S", "T1"])
    assert [c.case_id for c in ds] == ["sub-0001", "sub-0002"]
    case = ds[0]
    assert case.load().extra["T1"].shape == case.shape
