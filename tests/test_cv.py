"""k-fold cross-validation: folds, fold runs, the pooled out-of-fold record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cmbbench.datasets.folds import fold_splits, folds_of, make_folds
from cmbbench.errors import InputError

PLUGIN = str(Path(__file__).with_name("engine_plugin_example.py"))
TINY = {"steps": 10, "val_every": 10, "checkpoint_every": 10, "batch_size": 4}


def test_folds_are_stratified_disjoint_and_deterministic():
    ids = [f"c{i:02d}" for i in range(23)]
    strata = ["a" if i % 3 else "b" for i in range(23)]  # 15 'a', 8 'b'
    folds = make_folds(ids, strata, k=5, seed=1)
    sizes = sorted(len(f) for f in folds.values())
    # 23 cases over 5 folds: sizes differ by at most one (4, 4, 5, 5, 5)
    assert sizes == [4, 4, 5, 5, 5]
    listed = [c for f in folds.values() for c in f]
    assert sorted(listed) == ids  # every case exactly once
    # each stratum spread: 8 'b' cases over 5 folds -> every fold holds 1 or 2 of them
    for f in folds.values():
        assert 1 <= sum(1 for c in f if strata[ids.index(c)] == "b") <= 2
    assert make_folds(list(reversed(ids)), list(reversed(strata)), k=5, seed=1) == folds
    assert make_folds(ids, strata, k=5, seed=2) != folds
    # a fold's train/val never hold its test cases; val is ~20 % of the rest
    s = fold_splits(folds_of(folds), 2, dict(zip(ids, strata, strict=True)))
    assert not set(s["test"]) & (set(s["train"]) | set(s["val"]))
    assert len(s["train"]) + len(s["val"]) + len(s["test"]) == 23 and len(s["val"]) in (3, 4)


def test_bad_fold_requests_say_why():
    with pytest.raises(InputError, match="5 folds need at least 5 cases; the dataset has 3"):
        make_folds(["a", "b", "c"], k=5)
    with pytest.raises(InputError, match="at least 2 folds"):
        make_folds(["a", "b", "c"], k=1)
    with pytest.raises(InputError, match="defines no folds"):
        folds_of({"train": ["a"], "test": ["b"]})
    with pytest.raises(InputError, match="fold-0, fold-1"):
        folds_of({"fold-0": ["a"], "fold-2": ["b"]})
    with pytest.raises(InputError, match="fold 3 does not exist"):
        fold_splits([["a"], ["b"], ["c"]], 3)


def _cv(out, **kw):
    from cmbbench.engine.cv import run_cv
    from cmbbench.models.registry import load_plugin

    load_plugin(PLUGIN)
    torch.set_num_threads(1)
    args = dict(preset="tiny", device="cpu", overrides=TINY, n_bootstrap=10)
    return run_cv("engine_tiny", "engine-cubes", out=out, **{**args, **kw})


@pytest.mark.slow
def test_two_fold_cv_predicts_every_case_once_and_merges_separate_folds(tmp_path):
    import cmbbench
    from cmbbench.engine.record import load_run_record

    pooled = _cv(tmp_path / "seq", folds=2)
    everything = sorted(c.case_id for c in cmbbench.load_dataset("engine-cubes"))
    assert sorted(c.case_id for c in pooled.cases) == everything  # each case exactly once
    assert pooled.dataset["split"] == "cv2" and pooled.dataset["fold_sizes"] in ([5, 4], [4, 5])
    saved = json.loads((tmp_path / "seq" / "folds.json").read_text())
    for i in range(2):
        rec = load_run_record(tmp_path / "seq" / f"fold-{i}")
        test = {c.case_id for c in rec.cases}
        assert test == set(saved[f"fold-{i}"])
        seen = set(rec.dataset["train_ids"]) | set(rec.dataset["val_ids"])
        assert not test & seen and seen | test == set(everything)  # never saw its test cases
        assert rec.dataset["split"] == f"cv2-fold-{i}"
    # the same folds run as two separate --fold jobs, then pooled by rerunning --folds 2
    _cv(tmp_path / "par", folds=2, fold=1)
    _cv(tmp_path / "par", folds=2, fold=0)
    merged = _cv(tmp_path / "par", folds=2)  # both folds reused, nothing retrained
    counts = lambda r: [(c.case_id, c.tp, c.fp, c.fn) for c in r.cases]  # noqa: E731
    assert counts(merged) == counts(pooled)
    assert merged.metrics["detection"] == pooled.metrics["detection"]
    # the leaderboard shows the pooled record, in a table of its own split
    from cmbbench.leaderboard.store import load_records

    entries = load_records([tmp_path / "seq"])
    assert [e.split for e in entries] == ["cv2"]
    # other folds in the same folder are refused, not silently refolded
    bad = tmp_path / "folds.json"
    bad.write_text(json.dumps({"fold-0": everything[:4], "fold-1": everything[4:]}))
    with pytest.raises(InputError, match="other folds"):
        _cv(tmp_path / "seq", folds=2, split_file=bad)


def test_a_fold_file_must_hold_every_case_once(tmp_path):
    import cmbbench
    from cmbbench.models.registry import load_plugin

    load_plugin(PLUGIN)
    ids = sorted(c.case_id for c in cmbbench.load_dataset("engine-cubes"))
    bad = tmp_path / "folds.json"
    bad.write_text(json.dumps({"fold-0": ids[:3], "fold-1": ids[3:6]}))
    with pytest.raises(InputError, match="missing"):
        _cv(tmp_path / "out", folds=2, split_file=bad)
    bad.write_text(json.dumps({"fold-0": ids[:3], "fold-1": ids[2:]}))
    with pytest.raises(InputError, match="appears in both"):
        _cv(tmp_path / "out2", folds=2, split_file=bad)


@pytest.mark.slow
def test_cv_over_train_and_val_keeps_the_test_split_out(tmp_path):
    import cmbbench

    pooled = _cv(tmp_path / "tv", folds=2, pool=("train", "val"))
    test_ids = {c.case_id for c in cmbbench.load_dataset("engine-cubes", split="test")}
    pooled_ids = {c.case_id for c in pooled.cases}
    tv = {
        c.case_id for s in ("train", "val") for c in cmbbench.load_dataset("engine-cubes", split=s)
    }
    assert pooled_ids == tv and not pooled_ids & test_ids
    assert pooled.dataset["cv_over"] == ["train", "val"]


def test_a_datasets_official_folds_win(tmp_path):
    import dataclasses

    import cmbbench
    from cmbbench.datasets import registry
    from cmbbench.models.registry import load_plugin

    plugin = load_plugin(PLUGIN)
    ids = sorted(c.case_id for c in cmbbench.load_dataset("engine-cubes"))
    official = {"fold-0": ids[0::2], "fold-1": ids[1::2]}  # not what make_folds would give
    info = dataclasses.replace(plugin.CUBES, name="engine-cubes-official")
    info = dataclasses.replace(info, official_folds=lambda root, k: official if k == 2 else None)

    @registry.register_dataset(info)
    def cubes_official(root=None, split=None, **options):
        base = plugin.engine_cubes(split=split)
        return registry.Dataset(info, list(base), split=split, options=options)

    from cmbbench.engine.cv import run_cv

    torch.set_num_threads(1)
    rec = run_cv(
        "engine_tiny", "engine-cubes-official", folds=2, out=tmp_path / "cv",
        preset="tiny", device="cpu", overrides=TINY, n_bootstrap=10,
    )  # fmt: skip
    saved = json.loads((tmp_path / "cv" / "folds.json").read_text())
    assert saved["fold-0"] == official["fold-0"] and saved["fold-1"] == official["fold-1"]
    assert sorted(c.case_id for c in rec.cases) == ids
