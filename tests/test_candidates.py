"""Every candidate a model emits: extraction at a floor, the sweep past the operating point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmbbench.cases import Case, CaseData
from cmbbench.errors import InputError
from cmbbench.scoring.candidates import Candidates, one_tp_per_cmb
from cmbbench.scoring.evaluator import Evaluator
from cmbbench.scoring.metrics import aggregate
from cmbbench.scoring.records import CaseResult

AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


def _case(gt: np.ndarray, ignore: np.ndarray | None = None, cid: str = "c") -> Case:
    image = np.zeros(gt.shape, np.float32)
    return Case(cid, AFFINE, gt.shape, "mask", lambda: CaseData(image, gt, ignore))


def _two_cmbs() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((20, 20, 10), np.uint8)
    gt[2:4, 2:4, 2] = 1  # CMB A
    gt[12:14, 12:14, 6] = 1  # CMB B
    prob = np.zeros(gt.shape, np.float32)
    prob[2:4, 2:4, 2] = 0.875  # hits A
    prob[8, 8, 8] = 0.5  # a false alarm
    prob[12:14, 12:14, 6] = 0.25  # hits B, below the operating point
    prob[16, 3, 3] = 0.0625  # a faint false alarm
    return gt, prob


def test_candidates_hold_what_the_operating_point_drops():
    gt, prob = _two_cmbs()
    case = _case(gt)
    ev = Evaluator()
    op = prob >= 0.5  # the operating point: threshold 0.5
    c = ev.candidates(prob, case, operating=op, floor=0.01)
    # four components above 0.01, by descending max: A (0.875), FP (0.5), B (0.25), FP (0.0625)
    assert c.scores == (0.875, 0.5, 0.25, 0.0625)
    assert c.tp == (0, 2) and c.operating == (0, 1)
    assert (c.n_found, c.cap, c.floor) == (4, None, 0.01)
    # a higher floor drops the faint alarm
    assert ev.candidates(prob, case, floor=0.1).scores == (0.875, 0.5, 0.25)


def test_full_froc_goes_past_the_operating_point():
    gt, prob = _two_cmbs()
    case = _case(gt)
    ev = Evaluator()
    res = ev.evaluate(np.where(prob >= 0.5, prob, 0), case, threshold=0.5)
    # operating point: A found, one false alarm, B missed
    assert (res.tp, res.fp, res.fn) == (1, 1, 1)
    op_only = aggregate([res], n_bootstrap=0)["sweep"]
    res.candidates = ev.candidates(prob, case, operating=prob >= 0.5, floor=0.01)
    full = aggregate([res], n_bootstrap=0)
    sweep = full["sweep"]
    # counting metrics stay the operating point's
    assert full["detection"]["totals"] == {"tp": 1, "fp": 1, "fn": 1, "n_gt": 2, "n_pred": 2}
    assert op_only["source"] == "operating_point" and sweep["source"] == "candidates"
    assert sweep["candidate_floor"] == 0.01
    # FROC (one scan): origin, then 0.875 -> (0 FP, 1/2), 0.5 -> (1, 1/2), 0.25 -> (1, 2/2),
    # 0.0625 -> (2, 2/2); the operating-point curve stops at (1 FP, 1/2)
    assert sweep["froc"]["fp_per_scan"] == [0.0, 0.0, 1.0, 1.0, 2.0]
    assert sweep["froc"]["sensitivity"] == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert op_only["froc"]["sensitivity"] == [0.0, 0.5, 0.5]
    assert sweep["sensitivity_at"]["1"] == 1.0 and op_only["sensitivity_at"]["1"] == 0.5
    # AP: recall steps 1/2 at precision 1 (0.875) and 1/2 at precision 2/3 (0.25) -> 5/6
    assert sweep["ap"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_candidates_in_ignore_regions_are_left_out():
    gt, prob = _two_cmbs()
    ignore = np.zeros(gt.shape, bool)
    ignore[8, 8, 8] = True  # the 0.5 false alarm sits in an ignore region
    c = Evaluator().candidates(prob, _case(gt, ignore), floor=0.01)
    assert c.scores == (0.875, 0.25, 0.0625) and c.tp == (0, 1)


def test_the_cap_keeps_the_highest_scores_and_says_so():
    gt = np.zeros((30, 30, 6), np.uint8)
    gt[1, 1, 1] = 1
    prob = np.zeros(gt.shape, np.float32)
    prob[1, 1, 1] = 0.9
    for k in range(12):  # twelve isolated false alarms, 0.02 ... 0.46
        prob[4 + 2 * k, 20, 3] = 0.02 + 0.04 * k
    c = Evaluator().candidates(prob, _case(gt), floor=0.01, cap=5)
    assert (len(c), c.n_found, c.cap) == (5, 13, 5)
    assert c.scores[0] == pytest.approx(0.9) and c.tp == (0,)
    assert c.scores[-1] == pytest.approx(0.02 + 0.04 * 8)  # the four highest alarms stay
    with pytest.raises(InputError, match="cap"):
        Evaluator().candidates(prob, _case(gt), cap=0)


def test_candidates_round_trip_and_stay_out_of_json_when_absent():
    gt, prob = _two_cmbs()
    case = _case(gt)
    res = Evaluator().evaluate(prob, case, threshold=0.5)
    assert "candidates" not in res.to_dict()
    res.candidates = Evaluator().candidates(prob, case, operating=prob >= 0.5)
    d = res.to_dict()
    assert d["candidates"]["tp"] == [0, 2]
    back = CaseResult.from_dict(d)
    assert back.candidates == res.candidates
    with pytest.raises(InputError, match="indices"):
        Candidates(floor=0.1, scores=(0.5,), tp=(1,))
    with pytest.raises(InputError, match="finite"):
        Candidates(floor=0.1, scores=(float("nan"),))


def test_one_tp_per_cmb_keeps_the_highest_scoring_match():
    # predictions 1 and 2 both matched CMB 7 (valdo ties): 2 scores higher and is the TP;
    # prediction 3 is matched but absent from the pairs: it counts as it is
    assert one_tp_per_cmb([1, 2, 3], [0.4, 0.6, 0.1], {1, 2, 3}, [(1, 7), (2, 7)]) == {2, 3}
    # equal scores: the lower id
    assert one_tp_per_cmb([1, 2], [0.5, 0.5], {1, 2}, [(2, 7), (1, 7)]) == {1}


@pytest.mark.slow
def test_a_run_records_every_candidate(tmp_path):
    from cmbbench.engine.run import run
    from cmbbench.models.registry import load_plugin

    load_plugin(str(Path(__file__).with_name("engine_plugin_example.py")))
    torch.set_num_threads(1)
    record = run(
        "engine_tiny",
        "engine-cubes",
        preset="tiny",
        device="cpu",
        out=tmp_path / "run",
        overrides={"steps": 20, "val_every": 10, "checkpoint_every": 10, "batch_size": 4},
        n_bootstrap=20,
    )
    threshold = record.postprocess["threshold"]
    for c in record.cases:
        cand = c.candidates
        assert cand is not None and cand.floor == 0.01
        # the components kept at the operating point lie in candidates marked operating (a
        # candidate can hold several of them)
        kept = [p for p in c.pred if not p.attrs.get("ignore")]
        assert (len(cand.operating) > 0) == (len(kept) > 0)
        assert len(cand.operating) <= len(kept)
        assert all(s >= cand.floor for s in cand.scores)
        assert all(cand.scores[i] >= threshold for i in cand.operating)
    assert record.metrics["sweep"]["source"] == "candidates"
