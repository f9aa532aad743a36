"""NIfTI writing (cmbbench.io.save_nifti): nibabel's own stream, a deterministic gzip."""

from __future__ import annotations

import builtins
import gzip
import os
import stat
import sys

import nibabel as nib
import numpy as np
import pytest

import cmbbench.io as io_mod
from cmbbench.io import gzip_bytes, load_nifti, save_nifti, write_atomic

AFFINE = np.array([[0.9, 0, 0, -70.0], [0, 0.9, 0, -90.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]])


def _nib_stream(array: np.ndarray, tmp_path) -> bytes:
    """What ``nib.save`` writes for ``array`` (uncompressed), with the q/sform save_nifti sets."""
    img = nib.Nifti1Image(array, AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=1)
    nib.save(img, tmp_path / "ref.nii")
    return (tmp_path / "ref.nii").read_bytes()


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16, np.float64])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_save_nifti_writes_nibabels_stream(tmp_path, dtype, suffix):
    array = (np.random.default_rng(3).random((13, 7, 5)) * 200).astype(dtype)
    path = save_nifti(tmp_path / f"a{suffix}", array, AFFINE)
    raw = path.read_bytes()
    stream = gzip.decompress(raw) if suffix == ".nii.gz" else raw
    assert stream == _nib_stream(array, tmp_path)
    data, affine, _ = load_nifti(path)
    np.testing.assert_array_equal(data, array)
    np.testing.assert_allclose(affine, AFFINE)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_gzip_is_deterministic(tmp_path):
    # mtime 0 and no file name in the gzip header: the same array gives the same bytes under
    # another name at another time
    array = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    a = save_nifti(tmp_path / "a.nii.gz", array, AFFINE).read_bytes()
    b = save_nifti(tmp_path / "sub" / "b.nii.gz", array, AFFINE).read_bytes()
    assert a == b
    assert a[4:8] == b"\x00\x00\x00\x00"  # MTIME field of the gzip header (RFC 1952)


def test_gzip_without_isal_falls_back_to_zlib(monkeypatch):
    real_import = builtins.__import__

    def no_isal(name, *args, **kwargs):
        if name.startswith("isal"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    data = np.random.default_rng(0).standard_normal(10_000).astype(np.float32).tobytes()
    with_isal = gzip_bytes(data)
    monkeypatch.setattr(builtins, "__import__", no_isal)
    without = gzip_bytes(data)
    assert without != with_isal  # another compressor ran
    assert gzip.decompress(without) == gzip.decompress(with_isal) == data
    assert without[4:8] == b"\x00\x00\x00\x00"


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX permissions")
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_get_the_umask_permissions(tmp_path, mask, monkeypatch):
    # a shared cache: what one user writes must be as readable as a plain open() would make
    # it (0o666 less the umask: 0o644, 0o640, 0o600), not mkstemp's 0o600
    old = os.umask(mask)
    try:
        path = write_atomic(tmp_path / "a.json", "{}\n")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
        # the fallback (no /proc) reads the same mask
        monkeypatch.setattr(io_mod, "Path", _NoProcPath)
        assert io_mod._umask() == mask
    finally:
        os.umask(old)


class _NoProcPath:
    """A ``Path`` stand-in for a system without ``/proc``."""

    def __init__(self, *parts: object) -> None:
        pass

    def read_text(self) -> str:
        raise OSError("no /proc here")
