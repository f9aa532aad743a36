"""The plain images/ + labels/ loader, incl. every common bad-input case."""

from __future__ import annotations

import numpy as np
import pytest
from fixture_trees import case_arrays, las_affine, write_folder_tree, write_nifti

from cmbbench.datasets.common import count_cmbs
from cmbbench.datasets.registry import load_dataset
from cmbbench.errors import InputError

AFF = las_affine((1.0, 1.0, 3.0))


@pytest.mark.parametrize("suffix", [False, True])
def test_loads_with_and_without_nnunet_suffix(tmp_path, suffix: bool) -> None:
    counts = write_folder_tree(tmp_path, nnunet_suffix=suffix)
    ds = load_dataset("folder", root=str(tmp_path))
    assert [c.case_id for c in ds] == sorted(counts)
    for c in ds:
        assert c.label_kind == "mask" and c.shape == (16, 16, 6)
        assert count_cmbs(c.label, c.label_kind) == counts[c.case_id]
        np.testing.assert_allclose(c.affine, AFF, atol=1e-6)


def test_plain_nii_and_instance_labels(tmp_path) -> None:
    image, mask, corners = case_arrays((16, 16, 6), 3, seed=0)
    inst = np.zeros(mask.shape, np.int16)
    # three blocks get ids 1, 2, 7 (ids need not be consecutive): 3 CMBs
    for val, (i, j, k) in zip((1, 2, 7), corners, strict=True):
        inst[i : i + 2, j : j + 2, k] = val
    write_nifti(tmp_path / "images" / "x.nii", image, AFF)
    write_nifti(tmp_path / "labels" / "x.nii", inst, AFF)
    case = load_dataset("folder", root=str(tmp_path), instance_labels=True)[0]
    assert case.label_kind == "instance" and case.label.dtype == np.int32
    assert count_cmbs(case.label, "instance") == 3
    # the same file read as binary is an error naming the file and a bad value
    case = load_dataset("folder", root=str(tmp_path))[0]
    with pytest.raises(InputError, match=r"labels/x\.nii: label must be binary.*e\.g\. 2, 7"):
        _ = case.label


def _bad(tmp_path, problem: str) -> str:
    write_folder_tree(tmp_path, {"a": 1, "b": 0})
    img = tmp_path / "images" / "b.nii.gz"
    lab = tmp_path / "labels" / "b.nii.gz"
    if problem == "missing_label":
        lab.unlink()
        return r"case 'b', file .*labels/b\.nii\.gz: missing label file"
    if problem == "shape":
        write_nifti(lab, np.zeros((16, 16, 5), np.uint8), AFF)
        return r"labels/b\.nii\.gz: label shape"
    if problem == "affine":
        write_nifti(lab, np.zeros((16, 16, 6), np.uint8), las_affine((1.0, 1.0, 2.0)))
        return r"labels/b\.nii\.gz: label affine differs"
    if problem == "4d":
        write_nifti(img, np.zeros((16, 16, 6, 3), np.float32), AFF)
        return r"images/b\.nii\.gz: expected a 3-D image, got 4-D"
    if problem == "duplicate":
        write_nifti(tmp_path / "images" / "b_0000.nii.gz", np.zeros((16, 16, 6), np.float32), AFF)
        return r"duplicate case id 'b'"
    if problem == "unreadable":
        lab.write_bytes(b"\x1f\x8b garbage")
        return r"labels/b\.nii\.gz: unreadable"
    if problem == "empty":
        for p in (tmp_path / "images").iterdir():
            p.unlink()
        return "no NIfTI images found"
    raise AssertionError(problem)


@pytest.mark.parametrize(
    "problem", ["missing_label", "shape", "affine", "4d", "duplicate", "unreadable", "empty"]
)
def test_bad_input_names_the_file(tmp_path, problem: str) -> None:
    match = _bad(tmp_path, problem)
    with pytest.raises(InputError, match=match):
        load_dataset("folder", root=str(tmp_path))


def test_nan_fails_on_access(tmp_path) -> None:
    write_folder_tree(tmp_path, {"a": 1})
    image, _, _ = case_arrays((16, 16, 6), 1, seed=0)
    image[1, 1, 1] = np.nan
    write_nifti(tmp_path / "images" / "a.nii.gz", image, AFF)
    case = load_dataset("folder", root=str(tmp_path))[0]
    with pytest.raises(InputError, match=r"images/a\.nii\.gz: main image channel contains 1 NaN"):
        _ = case.image


def test_missing_root(tmp_path) -> None:
    with pytest.raises(InputError, match=r"dataset 'folder' needs --root PATH; expected layout"):
        load_dataset("folder")
    with pytest.raises(InputError, match="root folder not found"):
        load_dataset("folder", root=str(tmp_path / "nope"))


def test_split(tmp_path) -> None:
    write_folder_tree(tmp_path)
    a = [c.case_id for c in load_dataset("folder", root=str(tmp_path), split="train", seed=5)]
    b = [c.case_id for c in load_dataset("folder", root=str(tmp_path), split="train", seed=5)]
    assert a == b and len(a) == 3  # 5 cases at 0.6 -> 3


def test_split_counts_are_read_once_per_label_file(tmp_path, monkeypatch) -> None:
    import cmbbench.datasets.common as common

    write_folder_tree(tmp_path)
    reads = []
    real = common.as_binary_mask
    monkeypatch.setattr(common, "as_binary_mask", lambda *a, **k: reads.append(1) or real(*a, **k))
    monkeypatch.setattr(common, "_COUNT_CACHE", {})
    for s in ("train", "val", "test"):
        load_dataset("folder", root=str(tmp_path), split=s)
    assert len(reads) == 5  # 5 label files, read once across the three splits
    # a rewritten label file is read again (the key has its size and mtime)
    _, mask, _ = case_arrays((16, 16, 6), 4, seed=9)
    write_nifti(tmp_path / "labels" / "case_b.nii.gz", mask, AFF)
    load_dataset("folder", root=str(tmp_path), split="test")
    assert len(reads) == 6
