"""The synthetic dataset: registry, cache, splits, export and label invariants (tiny preset)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import cmbbench
from cmbbench.datasets.registry import dataset_info
from cmbbench.datasets.splits import count_bin, load_split_file
from cmbbench.datasets.synthetic import cache as cache_mod
from cmbbench.datasets.synthetic.dataset import (
    _specs,
    compute_splits,
    dataset_folder,
    export_tree,
    stored_splits,
    strata,
)
from cmbbench.datasets.synthetic.generator import MIMIC_CODES
from cmbbench.datasets.synthetic.presets import PRESETS, get_preset
from cmbbench.errors import InputError, UnknownNameError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthcache")
    calls: list[tuple[int, int]] = []
    ds = cmbbench.load_dataset(
        "synthetic",
        preset="tiny",
        cache_dir=root,
        workers=2,
        progress=lambda ev: calls.append((ev.completed, ev.total)),
    )
    return ds, root, calls


def test_registered_with_its_scoring_rule():
    assert "synthetic" in cmbbench.list_datasets()
    info = dataset_info("synthetic")
    assert (info.default_rule, info.label_kind, info.needs_root) == ("overlap", "instance", False)


def test_tiny_dataset_cases(tiny):
    ds, _, calls = tiny
    assert len(ds) == PRESETS["tiny"].n
    assert calls[0] == (0, len(ds)) and calls[-1] == (len(ds), len(ds))
    for case in ds:
        img, lab, ign = case.image, case.label, case.ignore
        assert img.dtype == np.float32 and lab.dtype == np.uint16 and ign.dtype == bool
        assert img.shape == lab.shape == ign.shape == case.shape
        assert np.all(np.isfinite(img))
        m = case.meta
        for key in (
            "protocol",
            "field_strength_t",
            "sequence",
            "cohort",
            "cmbs",
            "mimics",
            "lesion_attrs",
            "generator_version",
            "seed",
        ):
            assert key in m
        kept = [c for c in m["cmbs"] if not c["ignore"]]
        # every kept CMB has >= 1 voxel with its id; ignored ones are not labelled
        assert sorted(np.unique(lab[lab > 0]).tolist()) == sorted(c["id"] for c in kept)
        assert set(m["lesion_attrs"]) == {c["id"] for c in kept}
        for c in kept:
            assert (lab == c["id"]).sum() == c["n_voxels"] >= 1
        assert not np.any(ign & (lab > 0))
        if any(c["ignore"] for c in m["cmbs"]):
            assert ign.any()
        # labels lie inside the (masked) brain image
        assert np.all(img[lab > 0] > 0)


def test_mimics_are_never_labelled(tiny):
    ds, root, _ = tiny
    folder = dataset_folder(root, "tiny", 0, None, "dipole")
    n_mimics = 0
    for case in ds:
        inv = np.linalg.inv(case.affine)
        for mim in case.meta["mimics"]:
            ijk = np.rint(inv[:3, :3] @ mim["centre_mm"] + inv[:3, 3]).astype(int)
            if np.all(ijk >= 0) and np.all(ijk < case.shape):
                assert case.label[tuple(ijk)] == 0, mim
                n_mimics += 1
        mimic_map = cache_mod.load_mimic_map(folder, case.case_id)
        assert (mimic_map == MIMIC_CODES["vein"]).any()
        # the vein map may touch a CMB's blooming rim, never its core voxel
        for c in case.meta["cmbs"]:
            ijk = np.rint(inv[:3, :3] @ c["centre_mm"] + inv[:3, 3]).astype(int)
            assert mimic_map[tuple(ijk)] != MIMIC_CODES["vein"]
    assert n_mimics > 20


def test_cache_reuse_and_regeneration(tiny, monkeypatch):
    _, root, _ = tiny
    folder = dataset_folder(root, "tiny", 0, None, "dipole")
    specs = _specs("tiny", None, 0, None, "dipole")
    stamp = {
        s.subject_id: os.path.getmtime(cache_mod.subject_paths(folder, s.subject_id)["image"])
        for s in specs
    }
    assert cache_mod.ensure_generated(folder, specs, workers=1) == []  # all cached
    # a parameter change (here: a stale fingerprint) regenerates exactly that subject
    side_path = cache_mod.subject_paths(folder, "sub-0002")["sidecar"]
    side = json.loads(side_path.read_text())
    side["fingerprint"]["version"] = "0.0-old"
    side_path.write_text(json.dumps(side))
    assert cache_mod.ensure_generated(folder, specs, workers=1) == ["sub-0002"]
    after = json.loads(side_path.read_text())
    assert after["fingerprint"] == json.loads(json.dumps(specs[1].fingerprint()))
    assert (
        os.path.getmtime(cache_mod.subject_paths(folder, "sub-0001")["image"]) == stamp["sub-0001"]
    )


def test_interrupted_generation_leaves_no_case_and_resumes(tmp_path, monkeypatch):
    specs = _specs("tiny", 2, 0, None, "dipole")
    real = cache_mod.save_nifti
    count = {"n": 0}

    def crash_on_third(path, array, affine, header=None):
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(path, array, affine, header)

    monkeypatch.setattr(cache_mod, "save_nifti", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        cache_mod.ensure_generated(tmp_path, specs[:1], workers=1)
    sub = tmp_path / "sub-0001"
    assert not cache_mod.is_complete(tmp_path, "sub-0001", specs[0].fingerprint())
    assert not cache_mod.subject_paths(tmp_path, "sub-0001")["sidecar"].exists()
    assert not [p for p in sub.iterdir() if p.name.startswith(".")]  # no temp files left
    monkeypatch.setattr(cache_mod, "save_nifti", real)
    assert cache_mod.ensure_generated(tmp_path, specs, workers=1) == ["sub-0001", "sub-0002"]
    assert all(cache_mod.is_complete(tmp_path, s.subject_id, s.fingerprint()) for s in specs)


def test_splits_are_frozen_stratified_and_stable():
    for name in PRESETS:
        frozen = stored_splits(name)
        assert frozen is not None
        assert frozen == compute_splits(name)
        ids = sorted(i for v in frozen.values() for i in v)
        assert ids == sorted(s.subject_id for s in _specs(name, None, 0, None, "dipole"))
    # the default test split has negatives and a long-tailed count
    specs = _specs("default", None, 0, None, "dipole")
    bins = dict(
        zip([s.subject_id for s in specs], [s.split("|")[1] for s in strata(specs)], strict=True)
    )
    test_bins = [bins[i] for i in stored_splits("default")["test"]]
    assert test_bins.count("0") >= 3 and ">10" in test_bins and "1" in test_bins
    protocols = {s.protocol for s in specs}
    assert len(protocols) == 6
    # another seed gives another split, the same seed the same one
    assert compute_splits("quick", seed=1) == compute_splits("quick", seed=1)
    assert compute_splits("quick", seed=1) != compute_splits("quick", seed=0)
    assert count_bin(0) == "0"


def test_quick_preset_v1_1_sizes_and_version():
    from cmbbench.datasets.synthetic import DATASET_VERSION, GENERATOR_VERSION
    from cmbbench.datasets.synthetic.dataset import INFO
    from cmbbench.datasets.synthetic.presets import DATASET_VERSIONS

    # records and tables carry the dataset version; the volumes (and caches) keep the generator's
    assert INFO.version == DATASET_VERSION == "2.0"
    assert GENERATOR_VERSION == "2.0"
    assert DATASET_VERSIONS == {"1.1": "1.0", "2.0": "2.0"}
    frozen = stored_splits("quick", "1.1")
    # 96 subjects at 70/15/15 = 67.2 / 14.4 / 14.4; the per-stratum allocation gives 67 / 15 / 14
    assert {k: len(v) for k, v in frozen.items()} == {"train": 67, "val": 15, "test": 14}
    assert frozen == compute_splits("quick", version="1.1")
    # n overrides the size but keeps the preset's fractions (the per-stratum allocation gives
    # 32 of 48 to train at 70/15/15, where v1.0's 60/20/20 gave 28)
    assert {k: len(v) for k, v in compute_splits("quick", n=48, version="1.1").items()} == {
        "train": 32,
        "val": 8,
        "test": 8,
    }
    # the default and tiny presets keep 60/20/20
    assert {k: len(v) for k, v in stored_splits("default", "1.1").items()} == {
        "train": 72,
        "val": 24,
        "test": 24,
    }


def test_v2_presets_are_sized_to_rank():
    from cmbbench.datasets.synthetic.subjects import subject_count

    # quick: >= 100 test scans with >= 200 planned CMBs, >= 30 validation scans
    quick = stored_splits("quick")
    assert quick == compute_splits("quick")
    assert {k: len(v) for k, v in quick.items()} == {"train": 102, "val": 30, "test": 100}
    assert sum(subject_count(0, i, "quick") for i in quick["test"]) >= 300
    # the benchmark preset (all six protocols) has a test split of >= 300 scans
    bench = stored_splits("benchmark")
    assert len(bench["test"]) >= 300
    assert {s.protocol for s in _specs("benchmark", None, 0, None, "dipole")} == set(
        get_preset("benchmark").protocols
    )
    # an unknown dataset version lists the known ones
    with pytest.raises(KeyError, match=r"known synthetic dataset versions: 1\.1, 2\.0"):
        cmbbench.load_dataset("synthetic", version="3.0", progress=False)


def test_split_selection_and_split_file(tiny, tmp_path):
    _, root, _ = tiny
    test = cmbbench.load_dataset(
        "synthetic", split="test", preset="tiny", cache_dir=root, progress=False
    )
    assert [c.case_id for c in test] == sorted(stored_splits("tiny")["test"])
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["sub-0001"], "test": ["sub-0003", "sub-0004"]}))
    mine = cmbbench.load_dataset(
        "synthetic", split="test", preset="tiny", cache_dir=root, split_file=path, progress=False
    )
    assert [c.case_id for c in mine] == ["sub-0003", "sub-0004"]


def test_bad_options_raise_clear_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="known presets"):
        cmbbench.load_dataset("synthetic", preset="huge", cache_dir=tmp_path)
    with pytest.raises(UnknownNameError, match="t2s2d_3t_1x1x3"):
        cmbbench.load_dataset("synthetic", protocol="nope", cache_dir=tmp_path)
    with pytest.raises(InputError, match="n must be"):
        cmbbench.load_dataset("synthetic", n=0, cache_dir=tmp_path)


def test_export_tree_valdo_names_and_sidecars(tiny, tmp_path):
    out = export_tree(tmp_path / "tree", n=2, preset="tiny", workers=1)
    for sid in ("sub-0001", "sub-0002"):
        d = out / sid
        assert (d / f"{sid}_space-T2S_desc-masked_T2S.nii.gz").is_file()
        assert (d / f"{sid}_space-T2S_CMB.nii.gz").is_file()
        side = json.loads((d / f"{sid}_space-T2S_desc-masked_T2S.json").read_text())
        assert side["meta"]["generator_version"] == cmbbench.datasets.synthetic.GENERATOR_VERSION
        for c in side["meta"]["cmbs"]:
            assert len(c["centre_mm"]) == 3 and c["moment"] > 0 and c["region"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["n_subjects"] == 2
    split = load_split_file(out / "splits.json")
    assert sorted(i for v in split.values() for i in v) == ["sub-0001", "sub-0002"]
    # the same subjects as in the cache, byte for byte
    ds, _, _ = tiny
    arr = cache_mod.load_subject_arrays(out, "sub-0001")
    assert np.array_equal(arr.image, ds.case("sub-0001").image)
    # any VALDO reader can use the tree: here cmbbench's own
    valdo = cmbbench.load_dataset("valdo", root=str(out))
    assert [c.case_id for c in valdo] == ["sub-0001", "sub-0002"]
    assert np.array_equal(valdo[0].label > 0, arr.label > 0)
    assert os.stat(out / "sub-0001" / "sub-0001_space-T2S_CMB.nii.gz").st_mode & 0o044
