"""Leaderboard: records -> grouped tables, seeds aggregated, significance, byte-stable files."""

from __future__ import annotations

import csv
import io
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from cmbbench.errors import InputError
from cmbbench.io import write_json_atomic
from cmbbench.leaderboard import build_leaderboard, build_tables
from cmbbench.leaderboard.render_html import SORT_SCRIPT
from cmbbench.leaderboard.store import find_records, group_runs, load_records
from cmbbench.scoring.metrics import EDGE_CASE_POLICY
from cmbbench.scoring.records import CaseResult, Lesion, Pair

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"connectivity": 26, "min_overlap_voxels": 1}
N_BOOT = 50  # small bootstrap: these tests check plumbing, not the intervals themselves


def make_case(
    cid: str, n_gt: int, tp: int, fp: int, rng: np.random.Generator, threshold: float = 0.5
) -> CaseResult:
    """A case whose first ``tp`` predictions match the first ``tp`` CMBs; TP scores are high
    (0.6-1.0), FP scores low (0.5-0.8), CMB diameters 1.5-6 mm."""
    gt = [
        Lesion(
            id=j + 1,
            voxels=8,
            volume_mm3=8.0,
            diameter_mm=float(rng.uniform(1.5, 6.0)),
            matched=j < tp,
        )
        for j in range(n_gt)
    ]
    pred = [
        Lesion(
            id=j + 1,
            voxels=8,
            volume_mm3=8.0,
            diameter_mm=2.5,
            score=float(rng.uniform(0.6, 1.0) if j < tp else rng.uniform(0.5, 0.8)),
            matched=j < tp,
        )
        for j in range(tp + fp)
    ]
    pairs = [
        Pair(pred_id=j + 1, gt_id=j + 1, overlap_voxels=6, distance_mm=0.5, dice=0.75)
        for j in range(tp)
    ]
    return CaseResult(
        case_id=cid,
        rule="overlap",
        params={**PARAMS, "threshold": threshold},
        spacing=(1.0, 1.0, 3.0),
        shape=(32, 32, 16),
        n_gt=n_gt,
        n_pred=tp + fp,
        tp=tp,
        fp=fp,
        fn=n_gt - tp,
        pairs=pairs,
        gt=gt,
        pred=pred,
        gt_voxels=8 * n_gt,
        pred_voxels=8 * (tp + fp),
        intersection_voxels=6 * tp,
    )


def make_record(
    model: str,
    seed: int,
    recall: float,
    fp_rate: float,
    *,
    preset: str = "quick",
    device: str = "cpu",
    version: str = "1",
    n_cases: int = 12,
    threshold: float = 0.5,
) -> dict:
    """A run record (docs/run-record.md layout) of ``n_cases`` cases with 0-4 CMBs each; the
    model detects a fraction ``recall`` of CMBs and adds Poisson(``fp_rate``) FPs per scan."""
    rng = np.random.default_rng(zlib.crc32(f"{model}/{seed}/{preset}/{device}/{version}".encode()))
    counts = np.random.default_rng(7).integers(0, 5, n_cases)  # same cases for every model
    cases = []
    for i, n_gt in enumerate(counts):
        tp = int(rng.binomial(int(n_gt), recall))
        fp = int(rng.poisson(fp_rate))
        cases.append(make_case(f"sub-{i:03d}", int(n_gt), tp, fp, rng, threshold).to_dict())
    return {
        "record_type": "cmbbench-run",
        "schema_version": 1,
        "run_id": f"{model}-{seed}",
        "model": {"name": model, "kind": "network"},
        "recipe": {"steps": 100, "lr": 0.001, "seed": seed},
        "recipe_preset": preset,
        "recipe_sources": {"steps": f"preset:{preset}", "lr": f"preset:{preset}", "seed": "user"},
        "recipe_overridden": {"seed": "user"},
        "dataset": {"name": "synthetic", "version": version, "split": "test"},
        "seed": seed,
        "rule": "overlap",
        "params": {**PARAMS, "threshold": threshold},
        "cases": cases,
        "metrics": {},
        "environment": {"device": device, "device_name": "Fake GPU" if device != "cpu" else "x86"},
        "timings": {
            "train_seconds": 100.0 + seed,
            "seconds_per_step": 0.5,
            "inference_seconds_per_case": 2.0,
        },
    }


def write_records(folder: Path) -> list[Path]:
    """Three seeds of a good and a weak model, one seed of a floor model on the quick CPU
    track; one GPU run of the good model; one run on dataset version 2."""
    paths = []
    specs = [
        *[("good_net", s, 0.9, 0.3, "quick", "cpu", "1") for s in (0, 1, 2)],
        *[("weak_net", s, 0.5, 2.0, "quick", "cpu", "1") for s in (0, 1, 2)],
        ("classical_log", 0, 0.3, 4.0, "quick", "cpu", "1"),
        ("good_net", 0, 0.9, 0.3, "full", "cuda:0", "1"),
        ("good_net", 0, 0.9, 0.3, "quick", "cpu", "2"),
    ]
    for model, seed, rec, fp, preset, dev, ver in specs:
        p = folder / f"{model}-{preset}-{dev.replace(':', '')}-v{ver}-s{seed}" / "record.json"
        # models tune their own binarisation threshold: weak_net's differs per seed, and it
        # still shares the table of the other models (the threshold is not a rule parameter)
        thr = 0.3 + 0.1 * seed if model == "weak_net" else 0.5
        rec_ = make_record(
            model, seed, rec, fp, preset=preset, device=dev, version=ver, threshold=thr
        )
        write_json_atomic(p, rec_)
        paths.append(p)
    return paths


@pytest.fixture()
def records(tmp_path: Path) -> Path:
    folder = tmp_path / "records"
    write_records(folder)
    return folder


def test_grouping_by_version_rule_and_track(records: Path) -> None:
    groups = group_runs(load_records([records]))
    # the newest dataset version first (the current tables lead the page), then by track
    assert [(k.version, k.track) for k in groups] == [
        ("2", "quick / cpu"),
        ("1", "full / gpu"),
        ("1", "quick / cpu"),
    ]
    assert (
        len(groups[next(k for k in groups if k.track == "quick / cpu" and k.version == "1")]) == 7
    )


def test_newest_dataset_version_sorts_first() -> None:
    from cmbbench.leaderboard.store import _newest_first

    versions = ["1.0", "1.10", "dev", "1.1", "1.9", "2"]
    # numeric parts compare as numbers, newest first; a text part sorts after the numbers
    assert sorted(versions, key=_newest_first) == ["2", "1.10", "1.9", "1.1", "1.0", "dev"]


def test_seeds_aggregate_into_one_row_with_significance(records: Path) -> None:
    tables = build_tables([records], n_bootstrap=N_BOOT)
    main = next(t for t in tables if t.key.version == "1" and t.key.track == "quick / cpu")
    assert [r.model for r in main.rows] == ["good_net", "weak_net", "classical_log"]
    good, weak, floor = main.rows
    assert good.seeds == [0, 1, 2] and floor.seeds == [0]
    f1 = good.metrics["f1_micro"]
    per_seed = [m["headline"]["f1_micro"]["value"] for m in good.per_run]
    assert f1.mean == pytest.approx(np.mean(per_seed)) and f1.sd == pytest.approx(
        np.std(per_seed, ddof=1)
    )
    assert f1.ci_lo is not None and f1.ci_lo <= f1.mean <= f1.ci_hi
    assert good.significance == {"reference": True}
    # a model with half the recall and 7x the FPs differs significantly on 12 cases x 3 seeds,
    # after Holm over the table's 3 pairs too (its p is the smallest: 3 x 2/1001 < 0.05)
    sig = weak.significance
    assert sig["diff_f1"] < 0 and sig["p_bootstrap"] < 0.05 and sig["p_holm"] < 0.05
    assert sig["p_holm"] >= sig["p_bootstrap"] and sig["significant"] is True
    assert sig["ci"][1] < 0  # row - top: the whole interval below 0
    # the vs-top entry is the table's pair (top, weak) from the shared resamples
    pair = main.rankings.pair(0, 1)
    assert sig["diff_f1"] == pytest.approx(-pair.diff) and sig["p_holm"] == pair.p_holm
    assert main.rankings.n_resamples == 1000  # N_BOOT raised so that Holm can reach 0.05
    assert [r.rank.rank for r in main.rows] == [1.0, 2.0, 3.0]
    assert good.rank.p_first > 0.9 and good.rank.rank_ci[0] == 1.0
    assert good.timings["train_s"].mean == pytest.approx(101.0)


def test_changed_preset_contents_split_a_row(tmp_path: Path) -> None:
    # seeds 0-1 of "quick" with lr 0.001, seed 2 after the preset's lr became 0.01: the label
    # ("quick", no overrides) is the same, the recipes are not -> two rows, each naming its
    # recipe; seed 3 differs only in loader processes and checkpoint cadence, which cannot
    # change its numbers -> it joins the first row
    from cmbbench.leaderboard.store import recipe_fingerprint

    for seed in range(4):
        rec = make_record("net", seed, 0.8, 0.5)
        if seed == 2:
            rec["recipe"]["lr"] = 0.01
        if seed == 3:
            rec["recipe"].update(num_workers=4, checkpoint_every=7)
        write_json_atomic(tmp_path / f"s{seed}" / "record.json", rec)
    (table,) = build_tables([tmp_path], n_bootstrap=N_BOOT)
    old = recipe_fingerprint({"steps": 100, "lr": 0.001}, {})
    new = recipe_fingerprint({"steps": 100, "lr": 0.01}, {})
    assert old != new and len(old) == 8
    rows = {r.recipe: r.seeds for r in table.rows}
    assert rows == {f"quick [recipe {old}]": [0, 1, 3], f"quick [recipe {new}]": [2]}
    # a recipe key added later (optimizer_impl) at the value that reproduces older runs
    # ("auto") keeps the older records' fingerprint; another value is another recipe
    assert recipe_fingerprint({"steps": 100, "lr": 0.001, "optimizer_impl": "auto"}, {}) == old
    assert recipe_fingerprint({"steps": 100, "lr": 0.001, "optimizer_impl": "fused"}, {}) != old
    # the model's own arguments are part of what was trained
    assert recipe_fingerprint({"lr": 0.01}, {"width": 8}) != recipe_fingerprint({"lr": 0.01}, {})


def test_outputs_markdown_csv_html(records: Path, tmp_path: Path) -> None:
    out = tmp_path / "lb"
    files = build_leaderboard([records], out, n_bootstrap=N_BOOT)
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.html"} <= names
    assert sum(n.startswith("plots/") and n.endswith(".png") for n in names) == 3 * 3  # 3 tables
    md = (out / "leaderboard.md").read_text()
    assert md.count(EDGE_CASE_POLICY.strip()) == 3  # above every table
    assert md.count("Scoring rule: `overlap`") == 3
    assert "vs top (Holm)" in md and "ref" in md and "p=" in md
    assert md.count("smallest detectable paired ΔF1") == 1  # the one table with pairs
    assert md.count("**Rankings** by micro F1") == 3 and "| Rank [95%] |" in md
    assert "| 1 [1–1] |" in md  # good_net: first in every resample
    html = (out / "leaderboard.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "http://" not in html and "https://" not in html
    assert SORT_SCRIPT in html and html.count('<table class="lb">') == 3
    assert html.count('<table class="pairs">') == 1  # the one-row tables have no pairs
    assert "smallest detectable paired ΔF1 <strong>" in html
    assert html.count("data:image/png;base64,") == 9
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert len(rows) == 5  # 3 rows + 1 GPU row + 1 v2 row
    main = [r for r in rows if r["track"] == "quick / cpu" and r["version"] == "1"]
    top = main[0]
    assert top["model"] == "good_net" and top["rank"] == "1" and top["rank_observed"] == "1.000000"
    assert top["n_seeds"] == "3" and top["seeds"] == "0 1 2" and top["vs_top_significant"] == "ref"
    # table-level settings on every line of the table; the pairwise matrix is symmetric
    assert len({r["detectable_diff_f1"] for r in main}) == 1 and main[0]["ranking"] == "bootstrap"
    assert float(main[0]["detectable_diff_f1"]) > 0 and main[0]["ranking_n_resamples"] == "1000"
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert main[a][f"p_holm_vs_{b + 1}"] == main[b][f"p_holm_vs_{a + 1}"] != ""
    assert all(main[k][f"p_holm_vs_{k + 1}"] == "" for k in range(3))
    assert main[1]["p_holm_vs_1"] == main[1]["vs_top_p_holm"]
    assert rows[0]["p_holm_vs_1"] == "" and "p_holm_vs_4" not in rows[0]  # largest table: 3


def test_regeneration_is_byte_stable(records: Path, tmp_path: Path) -> None:
    a = build_leaderboard([records], tmp_path / "a", n_bootstrap=N_BOOT)
    b = build_leaderboard([records], tmp_path / "b", n_bootstrap=N_BOOT)
    rel = lambda ps, root: [p.relative_to(root) for p in ps]  # noqa: E731
    assert rel(a, tmp_path / "a") == rel(b, tmp_path / "b")
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no run records found"):
        find_records([tmp_path])
    bad = tmp_path / "bad" / "record.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(InputError, match=re.escape(str(bad))):
        load_records([bad.parent])
    rec = make_record("m", 0, 0.5, 1.0)
    del rec["rule"]
    write_json_atomic(bad, rec)
    with pytest.raises(InputError, match="missing 'rule'") as err:
        load_records([bad])
    assert str(bad) in str(err.value)


def test_cli_leaderboard(records: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cmbbench.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(
        app, ["leaderboard", str(records), "--out", str(out), "--n-bootstrap", "20"]
    )
    assert res.exit_code == 0, res.output
    assert (out / "leaderboard.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["leaderboard", str(empty), "--out", str(out)])
    assert res.exit_code != 0
    assert "no run records found" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"record_type": "cmbbench-run"}))
    res = runner.invoke(app, ["leaderboard", str(bad), "--out", str(out)])
    assert res.exit_code != 0 and "bad.json" in res.output


COMMITTED = REPO / "leaderboards"
_PLOT_LINE = re.compile(r"Plots drawn with matplotlib ([0-9A-Za-z.+-]*[0-9A-Za-z+-])\.")
_DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def _normalised(text: str) -> str:
    """A page without what depends on the matplotlib version (the version, embedded PNGs)."""
    return _DATA_URI.sub(
        "data:image/png;base64,...", _PLOT_LINE.sub("Plots drawn with matplotlib", text)
    )


def assert_regenerates(root: Path, out: Path, n_bootstrap: int = 1000) -> None:
    """Rebuild ``root``'s tables from ``root/records`` into ``out`` and compare with ``root``:
    byte for byte when the matplotlib version matches the one named in the committed
    Markdown; otherwise everything but the PNG bytes (which depend on that version)."""
    import matplotlib

    files = build_leaderboard([root / "records"], out, n_bootstrap=n_bootstrap)
    m = _PLOT_LINE.search((root / "leaderboard.md").read_text(encoding="utf-8"))
    same_renderer = m is not None and m.group(1) == matplotlib.__version__
    for p in files:
        rel = p.relative_to(out)
        committed = root / rel
        assert committed.is_file(), f"{rel} is generated but not committed"
        if same_renderer or p.suffix not in (".md", ".html", ".png"):
            assert committed.read_bytes() == p.read_bytes(), f"{rel} differs from a regeneration"
        elif p.suffix != ".png":
            got = _normalised(p.read_text(encoding="utf-8"))
            assert _normalised(committed.read_text(encoding="utf-8")) == got, f"{rel} differs"


@pytest.mark.slow
def test_regeneration_check_detects_changes(tmp_path: Path) -> None:
    root = tmp_path / "leaderboards"
    write_records(root / "records")
    build_leaderboard([root / "records"], root, n_bootstrap=N_BOOT)
    assert_regenerates(root, tmp_path / "again", N_BOOT)
    csv_path = root / "leaderboard.csv"
    good = csv_path.read_bytes()
    csv_path.write_bytes(good.replace(b"good_net", b"gooder_net", 1))
    with pytest.raises(AssertionError, match=r"leaderboard\.csv"):
        assert_regenerates(root, tmp_path / "again2", N_BOOT)
    csv_path.write_bytes(good)
    png = next((root / "plots").glob("*.png"))
    png.write_bytes(png.read_bytes() + b"\0")
    with pytest.raises(AssertionError, match=r"\.png differs"):
        assert_regenerates(root, tmp_path / "again3", N_BOOT)
    # under another matplotlib version PNG bytes may differ, the tables must not
    md = root / "leaderboard.md"
    md.write_text(_PLOT_LINE.sub("Plots drawn with matplotlib 0.0.0.", md.read_text()))
    assert_regenerates(root, tmp_path / "again4", N_BOOT)


def test_cli_ranking_valdo_and_unknown_ranking(records: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cmbbench.cli import app

    out = tmp_path / "valdo"
    res = CliRunner().invoke(
        app,
        [
            "leaderboard",
            str(records),
            "--out",
            str(out),
            "--n-bootstrap",
            "20",
            "--ranking",
            "valdo",
        ],
    )
    assert res.exit_code == 0, res.output
    md = (out / "leaderboard.md").read_text()
    assert md.count("VALDO 2021's significance-count ranking (`--ranking valdo`)") == 3
    assert "VALDO rank (F1, count, Dice, volume)" in md
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    main = [r for r in rows if r["track"] == "quick / cpu" and r["version"] == "1"]
    finals = [float(r["valdo_rank"]) for r in main]
    assert finals == sorted(finals) and {r["ranking"] for r in rows} == {"valdo"}
    # good_net has the better per-case F1, count, Dice and volume on 12 cases x 3 seeds
    assert main[0]["model"] == "good_net" and main[0]["valdo_wins_f1"] == "2"
    res = CliRunner().invoke(app, ["leaderboard", str(records), "--ranking", "borda"])
    assert res.exit_code != 0 and "'bootstrap'" in res.output and "'valdo'" in res.output
    with pytest.raises(
        InputError, match="unknown ranking 'borda'; valid rankings: 'bootstrap', 'valdo'"
    ):
        build_tables([records], ranking="borda")  # type: ignore[arg-type]


@pytest.mark.slow
def test_committed_leaderboard_regenerates_identically(tmp_path: Path) -> None:
    # Skips ONLY while leaderboards/records/ holds no run records (they are committed later).
    records_dir = COMMITTED / "records"
    records = sorted(records_dir.rglob("*.json")) if records_dir.is_dir() else []
    if not records:
        pytest.skip("leaderboards/records/ holds no run records yet")
    assert_regenerates(COMMITTED, tmp_path)


def test_docs_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO / "docs" / "leaderboards.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    write_records(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/leaderboards.md", "exec"), {})
    assert (tmp_path / "leaderboard" / "leaderboard.html").is_file()
    assert (tmp_path / "leaderboard" / "leaderboard.md").is_file()


def test_sort_script_is_valid_javascript(tmp_path: Path) -> None:
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the script's syntax is not checked here")
    js = tmp_path / "sort.js"
    js.write_text(SORT_SCRIPT, encoding="utf-8")
    res = subprocess.run([node, "--check", str(js)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_valdo_rule_table_shows_mean_per_case_f1(tmp_path: Path) -> None:
    # Two models scored under the valdo rule (its per-case F1: NaN -> None without CMBs) form
    # their own table, which adds the official ranking metric, the mean per-case F1.
    folder = tmp_path / "records"
    write_records(folder)
    for model, rec in (("good_net", 0.9), ("weak_net", 0.5)):
        r = make_record(model, 0, rec, 1.0)
        valdo_params = {"max_distance_mm": 5.0, "threshold": 0.5}
        r["rule"], r["params"] = "valdo", valdo_params
        for c in r["cases"]:
            c["rule"], c["params"] = "valdo", valdo_params
            c["valdo_f1"] = 2 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"]) if c["n_gt"] else None
        write_json_atomic(folder / f"valdo-{model}" / "record.json", r)
    out = tmp_path / "lb"
    build_leaderboard([folder], out, n_bootstrap=N_BOOT)
    md = (out / "leaderboard.md").read_text()
    sections = md.split("\n## ")[1:]
    valdo = [s for s in sections if "rule valdo" in s.splitlines()[0]]
    assert len(valdo) == 1 and len(sections) == 4
    assert "VALDO F1 (mean per case)" in valdo[0]
    assert all("VALDO F1" not in s for s in sections if s not in valdo)


def test_inconsistent_record_error_names_the_file(tmp_path: Path) -> None:
    r = make_record("dup", 0, 0.5, 1.0)
    r["cases"].append(r["cases"][0])  # the same case twice
    path = tmp_path / "dup" / "record.json"
    write_json_atomic(path, r)
    with pytest.raises(InputError, match="duplicate case id") as err:
        build_tables([path], n_bootstrap=N_BOOT)
    assert str(path) in str(err.value)
