"""Point-annotated sets: CSV (voxel / world, per case or one file) and MATLAB .mat (1-based voxels)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from fixture_trees import las_affine, write_nifti

from cmbbench.datasets.registry import dataset_info, load_dataset
from cmbbench.errors import InputError

# LAS 1×1×3 mm grid, origin (60, -80, -40): voxel (i, j, k) -> world (60 - i, -80 + j, -40 + 3k)
AFF = las_affine((1.0, 1.0, 3.0))
SHAPE = (16, 16, 6)


def _images(root, names=("s01", "s02")) -> None:
    for n in names:
        write_nifti(root / "images" / f"{n}.nii.gz", np.ones(SHAPE, np.float32), AFF)


def test_default_rule_is_point() -> None:
    info = dataset_info("points")
    assert info.default_rule == "point" and info.rule_params == {"max_distance_mm": 5.0}
    assert info.label_kind == "points"


def test_per_case_csv_voxel_and_world(tmp_path) -> None:
    _images(tmp_path)
    (tmp_path / "points").mkdir()
    # s01: voxel (2, 3, 1) -> world (58, -77, -37); world row given directly
    (tmp_path / "points" / "s01.csv").write_text("x,y,z,space\n2,3,1,voxel\n50,-70,-31,world\n")
    (tmp_path / "points" / "s02.csv").write_text("x,y,z,space\n")  # header only: no CMBs
    ds = load_dataset("points", root=str(tmp_path))
    s01, s02 = ds
    assert s01.label_kind == "points" and s01.label.dtype == np.float64
    np.testing.assert_allclose(s01.label, [[58, -77, -37], [50, -70, -31]])
    assert s02.label.shape == (0, 3)
    np.testing.assert_allclose(ds[0].read_label(), s01.label)
    assert s01.image.shape == SHAPE


def test_space_option_and_one_based(tmp_path) -> None:
    _images(tmp_path, ["s01"])
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "s01.csv").write_text("X,Y,Z\n3,4,2\n")
    # 1-based voxel (3, 4, 2) -> 0-based (2, 3, 1) -> world (58, -77, -37)
    ds = load_dataset("points", root=str(tmp_path), space="voxel", one_based=True)
    np.testing.assert_allclose(ds[0].label, [[58, -77, -37]])
    with pytest.raises(InputError, match="coordinate space not declared"):
        load_dataset("points", root=str(tmp_path))


def test_single_csv_with_case_id(tmp_path) -> None:
    _images(tmp_path)
    (tmp_path / "points.csv").write_text("case_id,x,y,z\ns01,0,0,0\ns01,15,15,5\n")
    ds = load_dataset("points", root=str(tmp_path), space="voxel")
    # voxel (15, 15, 5) -> world (45, -65, -25); s02 has no rows -> a negative case
    np.testing.assert_allclose(ds[0].label, [[60, -80, -40], [45, -65, -25]])
    assert ds[1].label.shape == (0, 3)
    (tmp_path / "points.csv").write_text("case_id,x,y,z\ns03,0,0,0\n")
    with pytest.raises(InputError, match=r"points\.csv: row at line 2: case_id 's03' has no image"):
        load_dataset("points", root=str(tmp_path), space="voxel")


def test_mat_one_based_voxels(tmp_path) -> None:
    _images(tmp_path)
    (tmp_path / "points").mkdir()
    # MATLAB 1-based (1, 1, 1) -> 0-based (0, 0, 0) -> world (60, -80, -40);
    # (16, 16, 6) -> (15, 15, 5) -> (45, -65, -25)
    scipy.io.savemat(tmp_path / "points" / "s01.mat", {"cen": np.array([[1, 1, 1], [16, 16, 6]])})
    scipy.io.savemat(tmp_path / "points" / "s02.mat", {"whatever": np.zeros((0, 3))})
    ds = load_dataset("points", root=str(tmp_path))
    np.testing.assert_allclose(ds[0].label, [[60, -80, -40], [45, -65, -25]])
    assert ds[1].label.shape == (0, 3)
    # the only N×3 variable is used when no known name is present
    scipy.io.savemat(tmp_path / "points" / "s02.mat", {"foo": np.array([[2, 2, 2]]), "n": 1})
    np.testing.assert_allclose(
        load_dataset("points", root=str(tmp_path))[1].label, [[59, -79, -37]]
    )


@pytest.mark.parametrize(
    ("files", "opts", "match"),
    [
        (
            {"s01.csv": "x,y,z\n16,0,0\n"},
            {"space": "voxel"},
            r"s01\.csv: row at line 2: .*outside the image",
        ),
        (
            {"s01.csv": "x,y,z\n0,0,100\n"},
            {"space": "world"},
            r"s01\.csv: row at line 2: .*outside",
        ),
        (
            {"s01.csv": "x,y\n1,2\n"},
            {"space": "voxel"},
            r"s01\.csv: CSV header lacks column\(s\) z",
        ),
        ({"s01.csv": "x,y,z\n1,a,2\n"}, {"space": "voxel"}, r"line 2: x,y,z must be numbers"),
        ({"s01.csv": "x,y,z,space\n1,1,1,mm\n"}, {}, r"space must be 'voxel' or 'world'"),
        ({}, {"space": "voxel"}, r"points/s01\.csv: missing label file"),
        ({"s01.mat": b"not a mat file"}, {}, r"s01\.mat: unreadable MATLAB file"),
        ({"s01.mat": {"cen": np.array([[0, 1, 1]])}}, {}, r"s01\.mat: row 1: .*outside the image"),
        ({"s01.mat": {"a": np.ones((2, 3)), "b": np.ones((1, 3))}}, {}, "pass option mat_key"),
        ({"s01.mat": {"cen": np.ones((2, 3))}}, {"mat_key": "xyz"}, "variable 'xyz' not found"),
    ],
)
def test_bad_points(tmp_path, files, opts, match) -> None:
    _images(tmp_path, ["s01"])
    d = tmp_path / "points"
    d.mkdir()
    for name, content in files.items():
        if isinstance(content, dict):
            scipy.io.savemat(d / name, content)
        elif isinstance(content, bytes):
            (d / name).write_bytes(content)
        else:
            (d / name).write_text(content)
    with pytest.raises(InputError, match=match):
        load_dataset("points", root=str(tmp_path), **opts)


def test_no_annotations_and_split(tmp_path) -> None:
    _images(tmp_path, [f"s{i:02d}" for i in range(5)])
    with pytest.raises(InputError, match=r"no points/ folder and no points\.csv"):
        load_dataset("points", root=str(tmp_path))
    (tmp_path / "points.csv").write_text("case_id,x,y,z\ns00,1,1,1\ns01,2,2,2\ns01,5,5,1\n")
    parts = [
        load_dataset("points", root=str(tmp_path), space="voxel", split=s)
        for s in ("train", "val", "test")
    ]
    assert sorted(c.case_id for p in parts for c in p) == [f"s{i:02d}" for i in range(5)]
    assert all(c._data is None for p in parts for c in p)  # stratifying read no image
    case = parts[0][0]
    assert case.read_label().shape[1] == 3 and case._data is None  # points need no file read
