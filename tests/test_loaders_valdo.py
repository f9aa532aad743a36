"""The VALDO Task 2 loader on tiny trees with the real names, dtypes (float64/float32/uint16) and LAS."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
from fixture_trees import VALDO_GRIDS, case_arrays, las_affine, write_nifti, write_valdo_tree

from cmbbench.datasets.common import count_cmbs
from cmbbench.datasets.registry import dataset_info, load_dataset
from cmbbench.errors import InputError, UnknownNameError


def test_loads_every_cohort_lazily_with_las_affine(tmp_path) -> None:
    counts = write_valdo_tree(tmp_path)
    ds = load_dataset("valdo", root=str(tmp_path))
    assert [c.case_id for c in ds] == sorted(counts)
    for case in ds:
        assert case._data is None  # lazy: only headers were read
        cohort = case.case_id[4]
        spacing, shape = VALDO_GRIDS[cohort]
        assert case.shape == shape
        assert case.affine[0, 0] < 0  # LAS kept, not reoriented
        np.testing.assert_allclose(case.affine, las_affine(spacing), atol=1e-5)
        np.testing.assert_allclose(case.spacing, spacing, rtol=1e-5)
        assert case.meta["cohort"] == f"cohort{cohort}"
        assert case.image.dtype == np.float32 and case.image.shape == shape
        assert case.label.dtype == np.uint8
        assert count_cmbs(case.label, case.label_kind) == counts[case.case_id]
    # the array equals the file's voxel order: corner of the first CMB block of sub-101
    sub101 = ds.case("sub-101")
    img, mask, _ = case_arrays(VALDO_GRIDS["1"][1], 2, seed=0, scale=1.0)
    np.testing.assert_array_equal(sub101.label, mask)
    np.testing.assert_allclose(sub101.image, img)
    assert sub101.meta["expected_spacing_mm"] == [0.45, 0.45, 4.0]


def test_info_declares_overlap_rule() -> None:
    info = dataset_info("valdo")
    assert info.default_rule == "overlap" and info.label_kind == "mask"
    assert "sub-XXX_space-T2S_CMB" in info.expected_input_format


def test_extra_channels_nan_replaced_with_warning(tmp_path, caplog) -> None:
    write_valdo_tree(tmp_path, {"sub-101": 1})
    case = load_dataset("valdo", root=str(tmp_path), channels=("T2S", "T1", "T2"))[0]
    with caplog.at_level(logging.WARNING):
        extra = case.load().extra
    assert set(extra) == {"T1", "T2"}
    assert np.all(np.isfinite(extra["T1"])) and np.all(extra["T1"][0] == 0)
    assert "NaN" in caplog.text and "T1" in caplog.text


def test_nan_in_main_channel_is_error(tmp_path) -> None:
    write_valdo_tree(tmp_path, {"sub-101": 1})
    case = load_dataset("valdo", root=str(tmp_path), channels=("T1",))[0]  # T1 as main has NaNs
    with pytest.raises(InputError, match=r"sub-101_space-T2S_desc-masked_T1\.nii\.gz.*NaN"):
        _ = case.image


def test_non_binary_label_names_file(tmp_path) -> None:
    write_valdo_tree(tmp_path, {"sub-201": 1})
    spacing, shape = VALDO_GRIDS["2"]
    lab = np.zeros(shape, np.float32)
    lab[3, 3, 3] = 0.5  # a float label with a value other than 0/1
    write_nifti(tmp_path / "sub-201" / "sub-201_space-T2S_CMB.nii.gz", lab, las_affine(spacing))
    case = load_dataset("valdo", root=str(tmp_path))[0]
    with pytest.raises(InputError, match=r"sub-201_space-T2S_CMB\.nii\.gz.*binary.*0\.5"):
        _ = case.label


@pytest.mark.parametrize("problem", ["missing_label", "shape", "affine", "4d", "truncated"])
def test_bad_trees(tmp_path, problem: str) -> None:
    write_valdo_tree(tmp_path, {"sub-101": 1, "sub-301": 0})
    d = tmp_path / "sub-301"
    lab = d / "sub-301_space-T2S_CMB.nii.gz"
    spacing, shape = VALDO_GRIDS["3"]
    if problem == "missing_label":
        lab.unlink()
        match = "missing label file"
    elif problem == "shape":
        write_nifti(lab, np.zeros((16, 16, 7), np.uint16), las_affine(spacing))
        match = r"label shape \(16, 16, 7\) does not match the image shape \(16, 16, 6\)"
    elif problem == "affine":
        write_nifti(lab, np.zeros(shape, np.uint16), las_affine(spacing, origin=(0, 0, 0)))
        match = "affine differs"
    elif problem == "4d":
        img = d / "sub-301_space-T2S_desc-masked_T2S.nii.gz"
        write_nifti(img, np.zeros((*shape, 2), np.float32), las_affine(spacing))
        match = "expected a 3-D image, got 4-D"
    else:
        img = d / "sub-301_space-T2S_desc-masked_T2S.nii.gz"
        img.write_bytes(b"not a nifti at all")
        match = "unreadable"
    with pytest.raises(InputError, match=match) as err:
        load_dataset("valdo", root=str(tmp_path))
    assert "sub-301" in str(err.value)


def test_truncated_data_fails_on_access(tmp_path) -> None:
    write_valdo_tree(tmp_path, {"sub-201": 1})
    img = tmp_path / "sub-201" / "sub-201_space-T2S_desc-masked_T2S.nii.gz"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])  # header intact, data cut
    case = load_dataset("valdo", root=str(tmp_path))[0]
    with pytest.raises(InputError, match="sub-201_space-T2S_desc-masked_T2S"):
        _ = case.image


def test_needs_root_and_layout(tmp_path) -> None:
    with pytest.raises(
        InputError, match=r"dataset 'valdo' needs --root PATH; expected layout: ROOT/sub-XXX"
    ):
        load_dataset("valdo")
    with pytest.raises(InputError, match="no VALDO subject folders"):
        load_dataset("valdo", root=str(tmp_path))
    with pytest.raises(InputError, match="unknown option"):
        load_dataset("valdo", root=str(tmp_path), preset="small")
    with pytest.raises(UnknownNameError, match=r"known datasets:.*valdo"):
        load_dataset("valdoo")


def test_split_stratified_by_cohort_and_count(tmp_path) -> None:
    subjects = {f"sub-{c}{i:02d}": (i % 3) for c in "123" for i in range(1, 6)}
    write_valdo_tree(tmp_path, subjects, extras=False)
    parts = {
        s: load_dataset("valdo", root=str(tmp_path), split=s, seed=1)
        for s in ("train", "val", "test")
    }
    ids = [c.case_id for s in parts.values() for c in s]
    assert sorted(ids) == sorted(subjects)  # a partition
    assert {len(p) for p in parts.values()} <= {3, 9}  # 15 cases at 0.6/0.2/0.2 -> 9/3/3
    again = load_dataset("valdo", root=str(tmp_path), split="test", seed=1)
    assert [c.case_id for c in again] == [c.case_id for c in parts["test"]]
    assert parts["test"].split == "test"
    with pytest.raises(UnknownNameError, match="known splits"):
        load_dataset("valdo", root=str(tmp_path), split="dev")


def test_split_file_option(tmp_path) -> None:
    write_valdo_tree(tmp_path, extras=False)
    sf = tmp_path / "split.json"
    sf.write_text('{"train": ["sub-101", "sub-201"], "test": ["sub-301"]}')
    ds = load_dataset("valdo", root=str(tmp_path), split="test", split_file=str(sf))
    assert [c.case_id for c in ds] == ["sub-301"]
    sf.write_text('{"test": ["sub-999"]}')
    with pytest.raises(InputError, match="sub-999"):
        load_dataset("valdo", root=str(tmp_path), split="test", split_file=str(sf))


def test_label_dtypes_as_released(tmp_path) -> None:
    write_valdo_tree(tmp_path, extras=False)
    dtypes = {
        sid: nib.load(str(tmp_path / sid / f"{sid}_space-T2S_CMB.nii.gz")).get_data_dtype()
        for sid in ("sub-101", "sub-201", "sub-301")
    }
    assert dtypes == {"sub-101": np.float64, "sub-201": np.float32, "sub-301": np.uint16}


def test_read_label_skips_the_image(tmp_path) -> None:
    write_valdo_tree(tmp_path, {"sub-201": 3})
    img = tmp_path / "sub-201" / "sub-201_space-T2S_desc-masked_T2S.nii.gz"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])  # image data unreadable: must not be touched
    case = load_dataset("valdo", root=str(tmp_path))[0]
    label = case.read_label()
    assert count_cmbs(label, "mask") == 3 and case._data is None
    # stratified splits and dataset summaries read labels only, too
    assert len(load_dataset("valdo", root=str(tmp_path), split="train")) == 1
    from cmbbench.datasets.summary import summarize_dataset

    assert summarize_dataset(load_dataset("valdo", root=str(tmp_path))).n_cmb == 3
