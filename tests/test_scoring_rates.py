"""The one recall / precision / F1 (cmbbench.scoring.rates) and its empty-input convention."""

import math

import numpy as np
import pytest

from cmbbench.scoring.rates import DetectionRates, detection_rates, ratio


def _same(a: float, b: float) -> bool:
    """Equal, or both NaN."""
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize(
    ("tp", "fp", "fn", "expected"),
    [
        # 3 of 4 CMBs found, 1 false alarm: recall 3/4, precision 3/4, F1 6/(6+1+1) = 3/4
        (3, 1, 1, (0.75, 0.75, 0.75)),
        # 1 TP, 3 FP, 0 FN: recall 1/1, precision 1/4, F1 2/(2+3+0) = 2/5
        (1, 3, 0, (1.0, 0.25, 0.4)),
        # 2 TP, 0 FP, 6 FN: recall 2/8, precision 2/2, F1 4/(4+0+6) = 2/5
        (2, 0, 6, (0.25, 1.0, 0.4)),
        # CMBs but no prediction: recall 0/5, precision 0/0 undefined, F1 0/(0+0+5) = 0
        (0, 0, 5, (0.0, math.nan, 0.0)),
        # predictions but no CMB: recall 0/0 undefined, precision 0/2, F1 0/(0+2+0) = 0
        (0, 2, 0, (math.nan, 0.0, 0.0)),
        # empty scan: every denominator is 0, everything undefined
        (0, 0, 0, (math.nan, math.nan, math.nan)),
        # everything found, nothing else: all 1
        (7, 0, 0, (1.0, 1.0, 1.0)),
        # bootstrap-weighted sums need not be whole: recall 1.5/2, precision 1.5/3.5,
        # F1 3/(3+2+0.5) = 6/11
        (1.5, 2.0, 0.5, (0.75, 1.5 / 3.5, 6 / 11)),
    ],
)
def test_hand_made_cases(tp, fp, fn, expected):
    r = detection_rates(tp, fp, fn)
    assert isinstance(r, DetectionRates)
    assert all(isinstance(v, float) for v in (r.recall, r.precision, r.f1))
    for got, want in zip((r.recall, r.precision, r.f1), expected, strict=True):
        assert math.isnan(got) if math.isnan(want) else got == pytest.approx(want, abs=0)


def test_scalars_of_any_kind_give_python_floats():
    for args in [(1, 2, 3), (np.int64(1), np.int64(2), np.int64(3)), (1.0, 2.0, 3.0)]:
        r = detection_rates(*args)
        assert type(r.recall) is float and type(r.precision) is float and type(r.f1) is float
        assert (r.recall, r.precision, r.f1) == (0.25, 1 / 3, 2 / 7)


def test_frozen():
    r = detection_rates(1, 1, 1)
    with pytest.raises(AttributeError):
        r.recall = 0.0  # type: ignore[misc]


def _naive(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """The textbook formulas, one scalar at a time."""
    rec = tp / (tp + fn) if tp + fn else math.nan
    prec = tp / (tp + fp) if tp + fp else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else math.nan
    return rec, prec, f1


@pytest.mark.parametrize("seed", range(5))
def test_grid_against_naive_reference(seed):
    rng = np.random.default_rng(seed)
    # small counts so that zeros (empty sides) are frequent
    tp, fp, fn = (rng.integers(0, 4, size=(40, 7)) for _ in range(3))
    r = detection_rates(tp, fp, fn)
    assert r.recall.shape == r.precision.shape == r.f1.shape == (40, 7)
    assert r.recall.dtype == np.float64
    for idx in np.ndindex(tp.shape):
        want = _naive(int(tp[idx]), int(fp[idx]), int(fn[idx]))
        got = (float(r.recall[idx]), float(r.precision[idx]), float(r.f1[idx]))
        assert all(_same(g, w) for g, w in zip(got, want, strict=True)), (idx, got, want)
        # each element equals the scalar call (elementwise, nothing mixed across entries)
        s = detection_rates(int(tp[idx]), int(fp[idx]), int(fn[idx]))
        assert all(_same(g, w) for g, w in zip(got, (s.recall, s.precision, s.f1), strict=True))


@pytest.mark.parametrize("seed", range(3))
def test_weighted_sums_bitwise_equal_to_the_inline_formulas(seed):
    """The formulas cmbbench had written inline, on float64 bootstrap sums: same bits."""
    rng = np.random.default_rng(100 + seed)
    w = rng.integers(0, 3, size=(50, 12)).astype(np.float64)
    tp, fp, fn = (w @ rng.integers(0, 5, size=12).astype(np.float64) for _ in range(3))
    r = detection_rates(tp, fp, fn)
    np.testing.assert_array_equal(r.recall, ratio(tp, tp + fn))
    np.testing.assert_array_equal(r.precision, ratio(tp, tp + fp))
    np.testing.assert_array_equal(r.f1, ratio(2 * tp, 2 * tp + fp + fn))


def test_broadcasting():
    r = detection_rates(np.array([0, 1, 2]), 1, np.array([[0], [2]]))
    assert r.recall.shape == r.precision.shape == r.f1.shape == (2, 3)
    # row 1, column 2: tp 2, fp 1, fn 2 -> recall 1/2, precision 2/3, F1 4/7
    assert (r.recall[1, 2], r.precision[1, 2], r.f1[1, 2]) == (0.5, 2 / 3, 4 / 7)
    # row 0, column 0: tp 0, fp 1, fn 0 -> recall undefined, precision 0, F1 0
    assert math.isnan(r.recall[0, 0]) and r.precision[0, 0] == 0 and r.f1[0, 0] == 0


def test_ratio():
    np.testing.assert_array_equal(ratio([1, 0, 3], [2, 0, 0]), [0.5, np.nan, np.nan])
    assert float(ratio(3, 4)) == 0.75 and ratio(3, 4).ndim == 0
    with np.errstate(all="raise"):  # no division warning on a zero denominator
        assert math.isnan(float(ratio(0, 0)))
