"""The engine's fast paths give exactly what the reference computations give.

- whole-volume (one-window) inference skips the blending buffers: bitwise the blend of one
  window with weight 1;
- priming the CPU's vector math (:func:`cmbbench.engine.environment.prime_vector_math`)
  changes the speed of ``expm1``/ELU, never a value (checked in a fresh process, where the
  slow path is still the one taken);
- the post-processing grid labels each threshold once and scores each distinct mask once:
  the same counts as scoring every (threshold, min size) pair on its own.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cmbbench.cases import Case, CaseData
from cmbbench.engine.postprocess import (
    GridPoint,
    clean_probability,
    kept_voxels,
    postprocess_grid,
)
from cmbbench.scoring.components import label_volume
from cmbbench.scoring.evaluator import Evaluator

torch = pytest.importorskip("torch")

from cmbbench.engine.inference import sliding_window_predict  # noqa: E402


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.BatchNorm3d(4),
        torch.nn.ELU(),
        torch.nn.Conv3d(4, 2, 1),
    ).eval()


def _reference_whole_volume(net: torch.nn.Module, img: np.ndarray, amp: bool) -> np.ndarray:
    """The blending path for one window, as the engine computed it before the fast path:
    pad to multiples of 8, run, softmax, accumulate with weight 1, divide, crop, clamp."""
    from cmbbench.engine.layout import channels_last_input, to_channels_last

    shape = img.shape
    padded = tuple(-(-s // 8) * 8 for s in shape)
    vol = torch.zeros(padded)
    vol[: shape[0], : shape[1], : shape[2]] = torch.from_numpy(img)
    to_channels_last(net, "cpu")
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp)
    with torch.inference_mode(), ctx:
        out = net(channels_last_input(vol[None, None], "cpu"))
    prob = torch.softmax(out.float(), dim=1)[0, 1]
    weight = torch.ones(padded)
    acc = torch.zeros(padded) + prob * weight
    norm = torch.zeros(padded) + weight
    res = (acc / norm)[: shape[0], : shape[1], : shape[2]].clamp_(0.0, 1.0)
    return res.numpy().astype(np.float32, copy=False)


@pytest.mark.parametrize("amp", [False, True])
def test_whole_volume_inference_is_bitwise_the_one_window_blend(amp):
    img = np.random.default_rng(3).normal(size=(21, 18, 11)).astype(np.float32)
    net = _net()
    fast = sliding_window_predict(net, img, patch_size=None, amp=amp)
    ref = _reference_whole_volume(net, img, amp)
    assert fast.dtype == np.float32 and fast.flags.c_contiguous
    np.testing.assert_array_equal(fast, ref)
    # a window as large as the padded image is the same single window
    same = sliding_window_predict(net, img, patch_size=(24, 24, 16), overlap=0.5, amp=amp)
    np.testing.assert_array_equal(same, fast)


_PRIME_CHECK = """
import sys, time
import torch
from cmbbench.engine.environment import prime_vector_math
torch.manual_seed(0)
x = torch.randn(2_000_000)
xb = torch.randn(1, 8, 40, 40, 30).to(torch.bfloat16)
before = (torch.expm1(x), torch.nn.functional.elu(x), torch.nn.functional.elu(xb))
prime_vector_math()
after = (torch.expm1(x), torch.nn.functional.elu(x), torch.nn.functional.elu(xb))
sys.exit(0 if all(torch.equal(a, b) for a, b in zip(before, after)) else 1)
"""


def test_priming_vector_math_changes_no_value():
    # a fresh process: there the first expm1/ELU calls run before any priming
    done = subprocess.run([sys.executable, "-c", _PRIME_CHECK], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def _blobs(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A seeded probability map (float32) with blobs of 1-12 voxels at many levels, and an
    instance label (uint16) of which some blobs are CMBs."""
    prob = (rng.random(shape) * 0.12).astype(np.float32)
    label = np.zeros(shape, np.uint16)
    for k in range(40):
        c = rng.integers(1, np.asarray(shape) - 3)
        size = rng.integers(1, 4, size=3)
        region = tuple(slice(int(a), int(a + s)) for a, s in zip(c, size, strict=True))
        prob[region] = np.maximum(prob[region], rng.uniform(0.15, 1.0))
        if k % 3 == 0:
            label[region] = k + 1
    return prob, label


def _case(case_id: str, label: np.ndarray) -> Case:
    img = np.zeros(label.shape, np.float32)
    return Case(
        case_id,
        np.diag([1.0, 1.0, 3.0, 1.0]),
        label.shape,
        "instance",
        lambda: CaseData(img, label),
    )


def _reference_grid(probs, cases, thresholds, min_sizes, evaluator, connectivity):
    """Every (threshold, min size) pair scored on its own with a dense cc3d labelling."""
    counts = {(float(t), int(m)): [0, 0, 0] for t in thresholds for m in min_sizes}
    for prob, case in zip(probs, cases, strict=True):
        for t in thresholds:
            labels = label_volume(prob >= t, connectivity)
            sizes = np.bincount(labels.ravel())
            for m in min_sizes:
                keep = sizes >= max(int(m), 1)
                keep[0] = False
                mask = keep[labels].astype(np.uint8)
                res = evaluator.evaluate(mask, case, pred_kind="mask", connectivity=connectivity)
                c = counts[(float(t), int(m))]
                c[0], c[1], c[2] = c[0] + res.tp, c[1] + res.fp, c[2] + res.fn
    return [GridPoint(t, m, *c) for (t, m), c in counts.items()]


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("rule", ["overlap", "distance"])
def test_grid_equals_scoring_every_pair_on_its_own(connectivity, rule):
    rng = np.random.default_rng(11)
    pairs = [_blobs(rng, (30, 28, 12)) for _ in range(3)]
    probs = [p for p, _ in pairs]
    cases = [_case(f"c{i}", lab) for i, (_, lab) in enumerate(pairs)]
    thresholds = [0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.999]
    min_sizes = [0, 1, 2, 3, 5, 9]
    params = {"max_distance_mm": 3.0} if rule == "distance" else {}
    evaluator = Evaluator(rule, params)
    fast = postprocess_grid(
        probs, cases, thresholds, min_sizes, evaluator, connectivity=connectivity
    )
    ref = _reference_grid(probs, cases, thresholds, min_sizes, evaluator, connectivity)
    assert fast == ref
    assert any(g.tp for g in fast) and any(g.fp for g in fast)  # a grid worth comparing


def test_kept_voxels_are_the_cleaned_maps_voxels():
    prob, _ = _blobs(np.random.default_rng(5), (24, 20, 10))
    for t in (0.1, 0.4, 0.8):
        kept = kept_voxels(prob, t, [1, 2, 4, 8], 26)
        for m, flat in zip([1, 2, 4, 8], kept, strict=True):
            cleaned = clean_probability(prob, t, m, 26)
            np.testing.assert_array_equal(flat, np.flatnonzero(cleaned))
