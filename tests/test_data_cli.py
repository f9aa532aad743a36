"""`cmbbench data` commands through typer's CliRunner on fixture trees."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixture_trees import write_folder_tree, write_valdo_tree
from typer.testing import CliRunner

from cmbbench.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    # rich wraps tables at the terminal width (80 under CliRunner): widen so rows stay on one line
    from cmbbench.cli._app import console

    monkeypatch.setattr(console, "width", 240)


def _cell(out: str, key: str) -> str:
    """The value next to ``key`` in a two-column rich table."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if key in cells:
            return cells[cells.index(key) + 1]
    raise AssertionError(f"no row {key!r} in:\n{out}")


def _invoke(*args: str):
    return runner.invoke(app, ["data", *args])


def test_list() -> None:
    r = _invoke("list")
    assert r.exit_code == 0, r.output
    for name in ("valdo", "nnunet", "points", "folder"):
        assert name in r.output
    assert "point (max_distance_mm=5.0)" in r.output


def test_info_on_valdo_tree(tmp_path) -> None:
    write_valdo_tree(tmp_path)  # counts 2, 0, 3, 1, 1 -> 7 CMBs, 1 negative
    r = _invoke("info", "valdo", "--root", str(tmp_path))
    assert r.exit_code == 0, r.output
    out = r.output
    assert _cell(out, "cases") == "5"
    assert _cell(out, "CMBs total") == "7"
    assert _cell(out, "negatives (no CMB)") == "1"
    assert _cell(out, "cases by CMB count") == "0: 1, 1: 2, 2-4: 2, 5-10: 0, >10: 0"
    # every CMB is a 2×2×1 block: 4 voxels
    assert _cell(out, "CMB size (voxels)") == "median 4 (IQR 4–4, range 4–4)"
    assert _cell(out, "default rule") == "overlap (min_overlap_voxels=1)"
    assert "cohort1" in out and "cohort3" in out
    assert "0.45 × 0.45 × 4" in out and "32 × 32 × 24" in out
    # the paired ΔF1 these 5 cases resolve, from the tree's own per-case counts, and how
    from cmbbench.scoring.power import detectable_delta_f1

    mdd = _cell(out, "smallest detectable paired ΔF1")
    assert mdd.startswith(f"{detectable_delta_f1([2, 0, 3, 1, 1]):.3f} (bootstrap of a simulated")
    assert float(mdd.split()[0]) > 0.2  # 7 CMBs resolve nothing finer


def test_info_split_and_errors(tmp_path) -> None:
    write_valdo_tree(tmp_path)
    r = _invoke("info", "valdo", "--root", str(tmp_path), "--split", "test")
    assert r.exit_code == 0, r.output
    assert "valdo v1, split test" in r.output and _cell(r.output, "cases") == "1"
    r = _invoke("info", "valdo")
    assert r.exit_code == 1 and "needs --root PATH" in r.output
    r = _invoke("info", "nope")
    assert r.exit_code == 1 and "unknown dataset 'nope'" in r.output
    r = _invoke("info", "valdo", "--root", str(tmp_path), "--preset", "small")
    assert r.exit_code == 1 and "unknown option(s) preset" in r.output
    r = _invoke("info", "valdo", "--root", str(tmp_path), "-o", "channels=T2S,T9")
    assert r.exit_code == 1 and "T9" in r.output


def test_show_writes_png(tmp_path) -> None:
    write_valdo_tree(tmp_path / "v")
    out = tmp_path / "case.png"
    r = _invoke("show", "valdo", "sub-201", "--root", str(tmp_path / "v"), "--out", str(out))
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    # a negative case draws full slices instead of crops
    r = _invoke("show", "valdo", "sub-102", "--root", str(tmp_path / "v"), "--out", str(out))
    assert r.exit_code == 0, r.output
    r = _invoke("show", "valdo", "sub-999", "--root", str(tmp_path / "v"), "--out", str(out))
    assert r.exit_code == 1 and "no case 'sub-999'" in r.output


def test_export_nnunet_command(tmp_path) -> None:
    write_folder_tree(tmp_path / "f")
    r = _invoke(
        "export-nnunet",
        "folder",
        "--root",
        str(tmp_path / "f"),
        "--out",
        str(tmp_path / "raw"),
        "--id",
        "42",
    )
    assert r.exit_code == 0, r.output
    spec = json.loads(
        (tmp_path / "raw" / "Dataset042_cmbbench_folder" / "dataset.json").read_text()
    )
    assert spec["numTraining"] == 5


def test_generate_wires_export_tree(tmp_path, monkeypatch) -> None:
    import cmbbench.datasets.synthetic as synthetic

    calls = {}

    def fake_export_tree(
        out_dir,
        *,
        n=None,
        preset="default",
        protocol=None,
        seed=0,
        workers=None,
        progress=None,
        split=None,
    ):
        from cmbbench.progress import ProgressEvent

        calls.update(out_dir=out_dir, n=n, preset=preset, protocol=protocol, seed=seed)
        if split is not None:
            calls["split"] = split
        progress(ProgressEvent("data", 1, 1, "generating synthetic data"))
        return out_dir

    monkeypatch.setattr(synthetic, "export_tree", fake_export_tree, raising=False)
    r = _invoke(
        "generate",
        "synthetic",
        "--out",
        str(tmp_path),
        "--n",
        "3",
        "--protocol",
        "swi",
        "--seed",
        "4",
    )
    assert r.exit_code == 0, r.output
    assert calls == {"out_dir": tmp_path, "n": 3, "preset": "default", "protocol": "swi", "seed": 4}
    r = _invoke("generate", "valdo", "--out", str(tmp_path))
    assert r.exit_code == 1 and "only the 'synthetic'" in r.output


@pytest.mark.parametrize("kind", ["points"])
def test_show_points_case(tmp_path, kind) -> None:
    from fixture_trees import las_affine, write_nifti

    write_nifti(
        tmp_path / "images" / "s1.nii.gz", np.ones((16, 16, 6), np.float32), las_affine((1, 1, 3))
    )
    (tmp_path / "points.csv").write_text("case_id,x,y,z\ns1,4,5,2\n")
    out = tmp_path / "p.png"
    r = _invoke("show", kind, "s1", "--root", str(tmp_path), "-o", "space=voxel", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 1000


def test_summary_sizes_and_diameters() -> None:
    from cmbbench.datasets.summary import component_sizes, equivalent_diameter_mm

    lab = np.zeros((10, 10, 10), np.uint8)
    lab[1:3, 1:3, 1] = 1  # 4 voxels
    lab[6, 6, 6:9] = 1  # 3 voxels
    lab[9, 0, 0] = 1  # 1 voxel, touches nothing
    assert sorted(component_sizes(lab, "mask").tolist()) == [1, 3, 4]
    assert component_sizes(np.zeros((2, 3)), "points").size == 0
    inst = lab.astype(np.int32)
    inst[6, 6, 6:9] = 5
    assert sorted(component_sizes(inst, "instance").tolist()) == [
        3,
        5,
    ]  # ids 1 (5 vox) and 5 (3 vox)
    # 4 voxels of 0.49×0.49×0.8 mm = 0.76832 mm³ -> sphere diameter cbrt(6·0.76832/π) = 1.1364 mm
    np.testing.assert_allclose(
        equivalent_diameter_mm(np.array([4]), (0.49, 0.49, 0.8)), [1.1364], atol=1e-4
    )


def test_montage_view_ignores_voxel_order() -> None:
    # the same anatomy stored RAS and LAS (first axis flipped) must display identically
    from cmbbench.datasets.viz import _View

    rng = np.random.default_rng(0)
    vol = rng.random((6, 7, 5))
    ras = np.diag([1.0, 1.0, 2.0, 1.0])
    flip = np.array([[-1, 0, 0, 5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    las = ras @ flip  # voxel i of the LAS array is voxel 5 - i of the RAS array
    v_ras, v_las = _View.of(ras, (1, 1, 2)), _View.of(las, (1, 1, 2))
    np.testing.assert_array_equal(v_ras.slice2d(vol, 2), v_las.slice2d(vol[::-1], 2))
    # radiological display: RAS x grows to the patient's right -> columns reversed; anterior up
    assert v_ras.flip_cols and v_ras.flip_rows and not v_las.flip_cols
    assert v_ras.rowcol(np.array([0.0, 0.0, 2.0]), vol.shape) == (6.0, 5.0)


def test_render_synthetic_like_case_with_mimics(tmp_path) -> None:
    from cmbbench.cases import Case, CaseData
    from cmbbench.datasets.viz import _mimics, render_case

    shape = (20, 20, 8)
    img = np.full(shape, 100.0, np.float32)
    inst = np.zeros(shape, np.uint16)
    inst[5:7, 5:7, 3] = 1
    inst[12:14, 12:14, 4] = 2
    ignore = np.zeros(shape, bool)
    ignore[15, 3, 3] = True
    mm = np.zeros(shape, np.uint8)
    mm[8, 2:18, 3] = 1  # a vein across slice 3
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    meta = {
        "protocol": "t2s_2d_1x1x3",
        "mimics": [
            {"type": "calcification", "centre_mm": [9.0, 9.0, 6.0]},  # voxel (9, 9, 3)
            {"type": "vein", "kind": "cortical", "centre_mm": [8.0, 10.0, 6.0]},
            {"type": "iron"},  # no centre: skipped
        ],
    }
    case = Case(
        "syn-0001",
        aff,
        shape,
        "instance",
        lambda: CaseData(img, inst, ignore, {"mimics": mm}),
        meta,
    )
    marks = _mimics(case)
    assert [k for _, k in marks] == ["calcification", "vein"]
    np.testing.assert_allclose(marks[0][0], [9, 9, 3])
    out = render_case(case, tmp_path / "syn.png", crop_mm=16)
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_synthetic_end_to_end(tmp_path, monkeypatch) -> None:
    # the real generator (one tiny subject): info and show through the CLI, and the exported
    # VALDO-style tree loads with the valdo loader with the same CMB count
    monkeypatch.setenv("CMBBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    opts = ["--preset", "tiny", "-o", "n=1", "-o", "workers=1"]
    r = _invoke("info", "synthetic", *opts)
    assert r.exit_code == 0, r.output
    n_cmb = int(_cell(r.output, "CMBs total"))
    r = _invoke("show", "synthetic", "sub-0001", *opts, "--out", str(tmp_path / "s.png"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.png").stat().st_size > 5000
    r = _invoke(
        "generate",
        "synthetic",
        "--out",
        str(tmp_path / "tree"),
        "--preset",
        "tiny",
        "--n",
        "1",
        "--workers",
        "1",
    )
    assert r.exit_code == 0, r.output
    r = _invoke("info", "valdo", "--root", str(tmp_path / "tree"))
    assert r.exit_code == 0, r.output
    assert int(_cell(r.output, "CMBs total")) == n_cmb


def test_info_on_points(tmp_path) -> None:
    from fixture_trees import las_affine, write_nifti

    for cid in ("a", "b"):
        write_nifti(
            tmp_path / "images" / f"{cid}.nii.gz",
            np.ones((8, 8, 4), np.float32),
            las_affine((1, 1, 3)),
        )
    (tmp_path / "points.csv").write_text("case_id,x,y,z,space\na,1,1,1,voxel\na,5,5,2,voxel\n")
    r = _invoke("info", "points", "--root", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert _cell(r.output, "CMBs total") == "2" and _cell(r.output, "negatives (no CMB)") == "1"
    assert _cell(r.output, "CMB size (voxels)") == "n/a"  # points carry no size
    assert _cell(r.output, "default rule") == "point (max_distance_mm=5.0)"


def test_show_names_anatomy_and_single_rater_cmbs() -> None:
    from cmbbench.cases import Case, CaseData
    from cmbbench.datasets.viz import _anatomy_note, _cmb_titles, cmb_sites

    meta = {"age": 73.6, "atrophy": 0.421, "warp_rms_mm": 2.14, "wmh_burden": 0.6}
    assert _anatomy_note(meta) == "anatomy: age 74, atrophy 0.42, warp 2.1 mm RMS, WMH burden 0.60"
    assert _anatomy_note({"age": 60}) == "anatomy: age 60" and _anatomy_note({}) == ""
    # three CMBs: id 1 (2 voxels), id 2 (4 voxels, marked by one rater), id 3 (1 voxel):
    # largest first -> id 2, id 1, id 3; only id 2 is named as a one-rater CMB
    shape = (10, 10, 4)
    inst = np.zeros(shape, np.uint16)
    inst[1, 1:3, 1] = 1
    inst[5:7, 5:7, 2] = 2
    inst[8, 8, 3] = 3
    attrs = {"1": {"agreement": 1.0}, "2": {"agreement": 0.5}, "3": {"agreement": 1.0}}
    img = np.ones(shape, np.float32)
    case = Case(
        "syn-0002",
        np.eye(4),
        shape,
        "instance",
        lambda: CaseData(img, inst),
        {"lesion_attrs": attrs},
    )
    sites = cmb_sites(case)
    assert [n for _, n in sites] == [4, 2, 1]
    assert _cmb_titles(case, sites) == [
        "CMB 1 (4 vox, 1 of 2 raters)",
        "CMB 2 (2 vox)",
        "CMB 3 (1 vox)",
    ]
    assert _cmb_titles(case, sites[:1]) == ["CMB 1 (4 vox, 1 of 2 raters)"]
