"""Cross-dataset evaluation: runs x target datasets, one result per pair and the matrix."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cmbbench.cases import Case, CaseData
from cmbbench.cli import app
from cmbbench.datasets.registry import Dataset, DatasetInfo, register_dataset
from cmbbench.models.registry import load_plugin

PLUGIN = str(Path(__file__).with_name("engine_plugin_example.py"))
TINY = ["--set", "steps=10", "--set", "val_every=10", "--set", "checkpoint_every=10"]
TINY += ["--set", "batch_size=4", "--bootstrap", "10", "--device", "cpu", "--no-progress"]

DIM = DatasetInfo(
    name="engine-cubes-dim",
    description="the engine cubes at a third of the contrast (a domain shift, tests)",
    version="test-1",
    label_kind="instance",
    needs_root=False,
)


@register_dataset(DIM)
def engine_cubes_dim(root=None, split=None, **options) -> Dataset:
    plugin = load_plugin(PLUGIN)
    base = plugin.engine_cubes(split=split)

    def dim(c: Case) -> Case:
        def load(c=c):
            img = np.asarray(c.image, np.float32)
            return CaseData(100.0 + (img - 100.0) / 3.0, np.asarray(c.label))

        return Case(c.case_id, c.affine, c.shape, c.label_kind, load, meta=dict(c.meta))

    return Dataset(DIM, [dim(c) for c in base], split=split, options=options)


@pytest.mark.slow
def test_runs_times_datasets_give_a_result_per_pair_and_the_matrix(tmp_path):
    torch.set_num_threads(1)
    runner = CliRunner()
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"run{seed}"
        run_args = ["run", "--plugin", PLUGIN, "--model", "engine_tiny"]
        run_args += ["--dataset", "engine-cubes", "--preset", "tiny", "--seed", str(seed)]
        r = runner.invoke(app, [*run_args, "--out", str(out), *TINY])
        assert r.exit_code == 0, r.output
        runs.append(out)
    args = ["evaluate", "--plugin", PLUGIN, "--device", "cpu", "--no-progress"]
    args += ["--bootstrap", "10", "--dataset", "engine-cubes", "--dataset", "engine-cubes-dim"]
    for run in runs:
        args += ["--model-dir", str(run)]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "--out-dir" in r.output  # several pairs need a folder
    r = runner.invoke(app, [*args, "--out-dir", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (tmp_path / "x").glob("*.json"))
    assert files == [
        "run0__engine-cubes-dim-test.json",
        "run0__engine-cubes-test.json",
        "run1__engine-cubes-dim-test.json",
        "run1__engine-cubes-test.json",
    ]
    md = (tmp_path / "x" / "matrix.md").read_text()
    # columns name the target version (and its cohorts, when the cases record one or two)
    assert (
        "| run | engine-cubes vtest-1 test [cubes] | engine-cubes-dim vtest-1 test [cubes] |" in md
    )
    rows = list(csv.DictReader(io.StringIO((tmp_path / "x" / "matrix.csv").read_text())))
    assert len(rows) == 4
    # the runs' own dataset is marked, and its cell is the run's own test result
    own = [row for row in rows if row["own_dataset"] == "1"]
    assert {row["target"] for row in own} == {"engine-cubes vtest-1 test [cubes]"}
    from cmbbench.engine.record import load_run_record
    from cmbbench.scoring.records import load_results

    for run in runs:
        rec = load_run_record(run)
        rep = load_results(tmp_path / "x" / f"{run.name}__engine-cubes-test.json")
        assert [(c.tp, c.fp, c.fn) for c in rep.cases] == [(c.tp, c.fp, c.fn) for c in rec.cases]
    # the leaderboard renders the matrix from the result files: alone, or beside the tables
    r = runner.invoke(app, ["leaderboard", str(tmp_path / "x"), "--out", str(tmp_path / "b1")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b1" / "cross-dataset.md").read_text() == md
    assert not (tmp_path / "b1" / "leaderboard.md").exists()
    board = [str(runs[0]), str(runs[1]), str(tmp_path / "x"), "--out", str(tmp_path / "b2")]
    r = runner.invoke(app, ["leaderboard", *board])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b2" / "leaderboard.md").exists()
    assert (tmp_path / "b2" / "cross-dataset.md").exists()
    # NAME:K=V,K=V targets: one result and one column per option set of the same dataset
    r = runner.invoke(
        app,
        [
            "evaluate",
            "--plugin",
            PLUGIN,
            "--model-dir",
            str(runs[0]),
            "--bootstrap",
            "10",
            "--dataset",
            "engine-cubes-dim:tag=a",
            "--dataset",
            "engine-cubes-dim:tag=b,shades=1,2",
            "--out-dir",
            str(tmp_path / "t"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "t").glob("*.json")) == [
        "run0__engine-cubes-dim-shades-1_2-tag-b-test.json",
        "run0__engine-cubes-dim-tag-a-test.json",
    ]
    rep = load_results(tmp_path / "t" / "run0__engine-cubes-dim-shades-1_2-tag-b-test.json")
    assert rep.info["dataset"]["options"] == {
        "tag": "b",
        "shades": ["1", "2"],
    }  # as --set parses lists
    md = (tmp_path / "t" / "matrix.md").read_text()
    assert "engine-cubes-dim vtest-1 test [cubes] (tag=a)" in md
    assert "engine-cubes-dim vtest-1 test [cubes] (shades=['1', '2'], tag=b)" in md
    # --root NAME=DIR is checked against the targets
    r = runner.invoke(app, [*args, "--out-dir", str(tmp_path / "y"), "--root", "valdo=/nope"])
    assert r.exit_code == 1 and "NAME=DIR" in r.output


def _report(run: str, trained: dict, target: dict, f1: float):
    """A score report as ``cmbbench evaluate`` writes it, reduced to what the matrix reads."""
    from cmbbench.scoring.records import ScoreReport

    base = {"name": "synthetic", "version": "2.0", "cohorts": ["t2s2d_3t_1x1x3"]}
    info = {
        "model": "unet3d",
        "run": run,
        "trained_on": {**base, "options": trained},
        "dataset": {**base, "split": "val", "options": target},
    }
    metrics = {
        "headline": {
            "f1_micro": {"value": f1, "ci": [f1 - 0.1, f1 + 0.1]},
            "fp_per_scan": {"value": 1.0, "ci": [0.6, 1.5]},
        }
    }
    return ScoreReport(cases=[], metrics=metrics, info=info)


def test_a_column_is_the_target_alone_whichever_run_was_scored_on_it():
    from cmbbench.leaderboard.matrix import build_matrix, render_matrix_markdown

    full, no_veins = {"preset": "quick"}, {"preset": "quick", "without": "veins"}
    # two runs (one trained with the veins, one without) on one target without veins: one
    # column, not one per run; the home mark goes to the run trained on that very distribution
    m = build_matrix(
        [
            (_report("a", full, no_veins, 0.716), "a.json"),
            (_report("b", no_veins, no_veins, 0.742), "b.json"),
        ]
    )
    col = "synthetic v2.0 val [t2s2d_3t_1x1x3] (preset=quick, without=veins)"
    assert m.columns == [col]
    row_a = "unet3d (a) trained on synthetic v2.0 [t2s2d_3t_1x1x3]"
    row_b = "unet3d (b) trained on synthetic v2.0 [t2s2d_3t_1x1x3] (without=veins)"
    assert m.rows == [row_a, row_b]  # preset=quick is every run's: said once, not per row
    assert m.common_runs == {"preset": "quick"}
    assert m.home == {row_b: col}
    md = render_matrix_markdown(m)
    assert "Options of every run: preset=quick." in md
    assert f"| {row_a} | 0.716 [0.616, 0.816], 1.00 [0.60, 1.50] FP/scan (n=0) |" in md
    assert f"| {row_b} | 0.742 [0.642, 0.842], 1.00 [0.60, 1.50] FP/scan (n=0) * |" in md


def test_another_draw_of_the_same_distribution_is_home_and_shared_options_are_said_once():
    from cmbbench.leaderboard.matrix import build_matrix

    # the generalisation matrix: one run, a test draw (n, seed) per protocol; the draw of the
    # training protocol is its own data, a run's other option (without=...) would not be
    reports = []
    for proto in ("swi_3t_094x094x175", "t2s2d_3t_1x1x3"):
        target = {"preset": "quick", "n": 60, "seed": 1, "protocol": proto}
        r = _report("a", {"preset": "quick"}, target, 0.5)
        r.info["dataset"]["cohorts"] = [proto]
        reports.append((r, f"{proto}.json"))
    m = build_matrix(reports)
    assert m.common_targets == {"n": 60, "preset": "quick", "seed": 1}
    assert m.columns == [
        "synthetic v2.0 val [swi_3t_094x094x175] (protocol=swi_3t_094x094x175)",
        "synthetic v2.0 val [t2s2d_3t_1x1x3] (protocol=t2s2d_3t_1x1x3)",
    ]
    assert list(m.home.values()) == [m.columns[1]]
    shifted = _report("c", {"preset": "quick", "without": "veins"}, {"preset": "quick"}, 0.5)
    assert build_matrix([(shifted, "c.json")]).home == {}
