"""Paired comparison of two result sets, in Python and as `cmbbench compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _case_records import make_case
from scipy.stats import wilcoxon
from typer.testing import CliRunner

import cmbbench
from cmbbench.cli import app
from cmbbench.errors import InputError
from cmbbench.scoring.bootstrap import percentile_ci
from cmbbench.scoring.compare import compare
from cmbbench.scoring.records import ScoreReport, save_results


def set_a():
    """A: c1 TP1 FP1 FN1; c2 (no CMB) FP2; c3 TP2; c4 FN1.

    totals TP 3, FP 3, FN 2 -> recall 3/5, precision 3/6, F1 6/11, FP/scan 3/4
    per-case F1: c1 2/4, c2 0, c3 1, c4 0
    """
    return [
        make_case("c1", 2, 2, 1),
        make_case("c2", 0, 2, 0),
        make_case("c3", 2, 2, 2),
        make_case("c4", 1, 0, 0),
    ]


def set_b():
    """B: c1 TP2; c2 nothing; c3 TP2 FP1; c4 TP1.

    totals TP 5, FP 1, FN 0 -> recall 1, precision 5/6, F1 10/11, FP/scan 1/4
    per-case F1: c1 1, c2 undefined, c3 4/5, c4 1
    """
    return [
        make_case("c4", 1, 1, 1),  # order differs from A on purpose
        make_case("c1", 2, 2, 2),
        make_case("c2", 0, 0, 0),
        make_case("c3", 2, 3, 2),
    ]


def test_hand_example():
    r = compare(set_a(), set_b(), n_bootstrap=500, seed=1)
    m = r["metrics"]
    assert r["n_cases"] == 4
    assert m["f1_micro"]["a"] == pytest.approx(6 / 11)
    assert m["f1_micro"]["b"] == pytest.approx(10 / 11)
    assert m["f1_micro"]["diff"] == pytest.approx(4 / 11)
    assert m["recall_micro"]["diff"] == pytest.approx(1 - 3 / 5)
    assert m["precision_micro"]["diff"] == pytest.approx(5 / 6 - 1 / 2)
    assert m["fp_per_scan"]["diff"] == pytest.approx(1 / 4 - 3 / 4)
    # macro F1: A (0.5 + 0 + 1 + 0) / 4 = 0.375; B (1 + 0.8 + 1) / 3 (c2 skipped)
    assert m["f1_macro"]["diff"] == pytest.approx(2.8 / 3 - 0.375)
    for row in m.values():
        lo, hi = row["ci"]
        assert lo <= row["diff"] <= hi
        assert 0 < row["p"] <= 1
    # B - A per case in FP: c1 -1, c2 -2, c3 +1, c4 0 -> most resamples have fewer FP in B
    assert m["fp_per_scan"]["ci"][0] < 0
    # Wilcoxon over cases with F1 defined in both (c1, c3, c4): differences 0.5, -0.2, 1.0
    w = r["wilcoxon"]
    ref = wilcoxon([0.5, -0.2, 1.0])
    assert w["n"] == 3
    assert w["p"] == pytest.approx(ref.pvalue)
    assert w["statistic"] == pytest.approx(ref.statistic)
    assert w["median_diff"] == pytest.approx(0.5)


def test_paired_bootstrap_uses_the_same_draws():
    # the difference's samples equal B's samples minus A's samples from the same draws:
    # recompute the recall difference interval by hand
    a, b = set_a(), set_b()
    r = compare(a, b, n_bootstrap=200, seed=3)
    idx = np.random.default_rng(3).integers(0, 4, size=(200, 4))
    by_id_a = {c.case_id: c for c in a}
    by_id_b = {c.case_id: c for c in b}
    ids = sorted(by_id_a)
    diffs = []
    for row in idx:
        ca = [by_id_a[ids[i]] for i in row]
        cb = [by_id_b[ids[i]] for i in row]
        ra = sum(c.tp for c in ca) / max(1, sum(c.tp + c.fn for c in ca))
        rb = sum(c.tp for c in cb) / max(1, sum(c.tp + c.fn for c in cb))
        if sum(c.n_gt for c in ca) == 0:
            diffs.append(np.nan)  # recall undefined in this resample
        else:
            diffs.append(rb - ra)
    assert r["metrics"]["recall_micro"]["ci"] == pytest.approx(percentile_ci(diffs, 0.95))


def test_identical_sets():
    r = compare(set_a(), ScoreReport(cases=set_a()), n_bootstrap=100)
    for row in r["metrics"].values():
        assert row["diff"] == 0
        assert row["ci"] == [0.0, 0.0]
        assert row["p"] == 1.0
    assert r["wilcoxon"]["p"] == 1.0 and "zero" in r["wilcoxon"]["note"]


def test_mismatched_case_sets_name_the_ids():
    b = [*set_b()[:3], make_case("c9", 1, 1, 1)]  # drops c3, adds c9
    with pytest.raises(InputError) as err:
        compare(set_a(), b)
    assert "missing from B: 'c3'" in str(err.value)
    assert "missing from A: 'c9'" in str(err.value)


def test_rule_mismatch_names_both():
    b = [make_case(c.case_id, c.n_gt, c.n_pred, c.tp, rule="distance") for c in set_b()]
    with pytest.raises(InputError, match=r"'overlap'.*'distance'"):
        compare(set_a(), b)
    b2 = [make_case(c.case_id, c.n_gt, c.n_pred, c.tp, params={"connectivity": 6}) for c in set_b()]
    with pytest.raises(InputError, match="scored differently"):
        cmbbench.compare(set_a(), b2)
    with pytest.raises(InputError, match="no cases"):
        compare([], set_b())


def test_each_side_keeps_its_own_operating_threshold():
    # two models tuned to different thresholds (a detector at 0.5, a network at 0.98) are
    # still comparable: only the rule and its other parameters must agree
    a = [make_case(c.case_id, c.n_gt, c.n_pred, c.tp, params={"threshold": 0.5}) for c in set_a()]
    b = [make_case(c.case_id, c.n_gt, c.n_pred, c.tp, params={"threshold": 0.98}) for c in set_b()]
    out = compare(a, b, n_bootstrap=50)
    assert out["thresholds"] == {"a": 0.5, "b": 0.98}
    assert "threshold" not in out["params"]
    assert (
        out["metrics"]["f1_micro"]["diff"]
        == compare(set_a(), set_b(), n_bootstrap=0)["metrics"]["f1_micro"]["diff"]
    )


def test_cli_compare(tmp_path):
    pa = save_results(set_a(), tmp_path / "a.json")
    pb = save_results(set_b(), tmp_path / "b.json")
    out = tmp_path / "diff.json"
    res = CliRunner().invoke(
        app, ["compare", str(pa), str(pb), "--n-bootstrap", "200", "--seed", "2", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "F1 (micro)" in res.output and "Wilcoxon" in res.output
    assert "+0.364" in res.output  # 4/11
    saved = json.loads(out.read_text())
    assert saved["metrics"]["f1_micro"]["diff"] == pytest.approx(4 / 11)
    assert saved == json.loads(json.dumps(compare(set_a(), set_b(), n_bootstrap=200, seed=2)))


def test_cli_compare_errors(tmp_path):
    pa = save_results(set_a(), tmp_path / "a.json")
    pb = save_results(set_b()[:3], tmp_path / "b.json")
    res = CliRunner().invoke(app, ["compare", str(pa), str(pb)])
    assert res.exit_code != 0
    assert "missing from B: 'c3'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = CliRunner().invoke(app, ["compare", str(pa), str(tmp_path / "nope.json")])
    assert res.exit_code != 0 and "no such result file" in res.stderr
