"""nnU-Net v2 raw folders: reading, writing, and the round trip."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from fixture_trees import write_folder_tree, write_nifti, write_nnunet_tree

from cmbbench.datasets.common import count_cmbs
from cmbbench.datasets.nnunet import export_nnunet
from cmbbench.datasets.registry import load_dataset
from cmbbench.errors import InputError


def test_reads_raw_folder_with_extra_channel(tmp_path) -> None:
    counts = write_nnunet_tree(tmp_path, channels=("T2S", "T1"))
    ds = load_dataset("nnunet", root=str(tmp_path))
    assert [c.case_id for c in ds] == sorted(counts)
    for c in ds:
        assert count_cmbs(c.label, c.label_kind) == counts[c.case_id]
        # channel 1 was written as image + 1
        np.testing.assert_allclose(c.load().extra["T1"], c.image + 1, rtol=1e-6)


def test_round_trip_export_then_load(tmp_path) -> None:
    write_folder_tree(tmp_path / "src")
    src = load_dataset("folder", root=str(tmp_path / "src"))
    out = export_nnunet(src, tmp_path / "raw", dataset_id=7, name="CMBtest")
    assert out.name == "Dataset007_CMBtest"
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "T2S"} and spec["labels"] == {"background": 0, "CMB": 1}
    assert spec["numTraining"] == len(src) and spec["file_ending"] == ".nii.gz"
    assert nib.load(str(out / "labelsTr" / "case_a.nii.gz")).get_data_dtype() == np.uint8
    back = load_dataset("nnunet", root=str(out))
    assert [c.case_id for c in back] == [c.case_id for c in src]
    for a, b in zip(src, back, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
        assert b.affine[0, 0] < 0  # LAS preserved


def test_unlabelled_cases_go_to_imagesTs(tmp_path) -> None:
    write_folder_tree(tmp_path / "src", {"a": 1, "b": 2})
    src = list(load_dataset("folder", root=str(tmp_path / "src")))
    # drop b's label: it is exported as a test image
    src[1].load().label = None
    out = export_nnunet(src, tmp_path, dataset_id=12, name="x")
    assert (out / "imagesTs" / "b_0000.nii.gz").is_file()
    assert not (out / "labelsTr" / "b.nii.gz").exists()
    test = load_dataset("nnunet", root=str(out), subset="test")
    assert [c.case_id for c in test] == ["b"] and test[0].label is None


def test_points_cannot_be_exported(tmp_path) -> None:
    from cmbbench.cases import Case, CaseData

    case = Case(
        "p",
        np.eye(4),
        (4, 4, 4),
        "points",
        loader=lambda: CaseData(np.zeros((4, 4, 4), np.float32), np.zeros((0, 3))),
    )
    with pytest.raises(InputError, match="centre points"):
        export_nnunet([case], tmp_path, dataset_id=1, name="p")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: (r / "dataset.json").unlink(), "missing dataset.json"),
        (lambda r: (r / "dataset.json").write_text("{"), "unreadable dataset.json"),
        (lambda r: (r / "dataset.json").write_text('{"labels": {}}'), "lacks the required key"),
        (
            lambda r: (r / "labelsTr" / "cmb_002.nii.gz").unlink(),
            r"labelsTr/cmb_002\.nii\.gz: missing label",
        ),
        (
            lambda r: _json(r, labels={"background": 0, "a": 1, "b": 2}),
            "cannot tell which label is the CMB class",
        ),
        (lambda r: _json(r, file_ending=".mha"), "not supported"),
    ],
)
def test_bad_raw_folders(tmp_path, edit, match: str) -> None:
    write_nnunet_tree(tmp_path)
    edit(tmp_path)
    with pytest.raises(InputError, match=match):
        load_dataset("nnunet", root=str(tmp_path))


def _json(root, **changes) -> None:
    spec = json.loads((root / "dataset.json").read_text())
    spec.update(changes)
    (root / "dataset.json").write_text(json.dumps(spec))


def test_multi_label_with_cmb_label_and_undeclared_values(tmp_path) -> None:
    write_nnunet_tree(tmp_path, {"c1": 1})
    _json(tmp_path, labels={"background": 0, "vessel": 1, "microbleed": 2})
    lab_path = tmp_path / "labelsTr" / "c1.nii.gz"
    img = nib.load(str(lab_path))
    lab = np.asarray(img.dataobj).astype(np.uint8)
    lab[lab == 1] = 2  # the CMB block becomes value 2
    lab[0, 0, 0] = 1  # one vessel voxel
    write_nifti(lab_path, lab, img.affine)
    case = load_dataset("nnunet", root=str(tmp_path))[0]  # "microbleed" picked by name
    assert int(case.label.sum()) == 4 and case.label[0, 0, 0] == 0
    lab[1, 1, 1] = 5  # not declared in dataset.json
    write_nifti(lab_path, lab, img.affine)
    case = load_dataset("nnunet", root=str(tmp_path), cmb_label="microbleed")[0]
    with pytest.raises(InputError, match=r"c1\.nii\.gz: label holds values \[5\] not declared"):
        _ = case.label


def test_export_name_checks(tmp_path) -> None:
    with pytest.raises(InputError, match=r"0\.\.999"):
        export_nnunet([], tmp_path, dataset_id=1000, name="x")
    with pytest.raises(InputError, match="letters"):
        export_nnunet([], tmp_path, dataset_id=1, name="a b")


def test_export_extra_channels_round_trip(tmp_path) -> None:
    from fixture_trees import write_valdo_tree

    write_valdo_tree(tmp_path / "v", {"sub-101": 1, "sub-301": 2})
    src = load_dataset("valdo", root=str(tmp_path / "v"), channels=("T2S", "T1"))
    out = export_nnunet(src, tmp_path / "raw", dataset_id=3, name="V", extra_channels=("T1",))
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "T2S", "1": "T1"}
    back = load_dataset("nnunet", root=str(out))
    for a, b in zip(src, back, strict=True):
        # the NaNs of VALDO's T1 were replaced by 0 on load, so they are exported as 0
        np.testing.assert_array_equal(a.load().extra["T1"], b.load().extra["T1"])
        assert a.case_id == b.case_id and count_cmbs(b.label, "mask") == count_cmbs(a.label, "mask")
    with pytest.raises(InputError, match="extra channel 'T2' not available"):
        export_nnunet(src, tmp_path / "raw2", dataset_id=4, name="V", extra_channels=("T2",))
    (out / "imagesTr" / "sub-101_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"sub-101_0001\.nii\.gz: missing channel file"):
        load_dataset("nnunet", root=str(out))
