"""Sliding-window inference: blending, windows, padding, 1-logit and 2-class outputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmbbench.engine.inference import (  # noqa: E402
    gaussian_importance_map,
    sliding_window_predict,
    window_starts,
)
from cmbbench.models.detector import ModelShapeError  # noqa: E402


class Pointwise(torch.nn.Module):
    """Per-voxel model: 2-class logits (0, 2x) -> P(CMB) = sigmoid(2x); or 1 logit 2x."""

    def __init__(self, channels: int = 2):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        if self.channels == 1:
            return 2 * x
        return torch.cat([torch.zeros_like(x), 2 * x], dim=1)


def _expected(img):
    return 1 / (1 + np.exp(-2 * img.astype(np.float64)))


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("patch", [None, (8, 8, 8), (16, 8, 24)])
def test_pointwise_model_is_exact_whatever_the_windows(channels, patch):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(13, 21, 10)).astype(np.float32)  # not multiples of 8: padding
    out = sliding_window_predict(Pointwise(channels), img, patch_size=patch, overlap=0.5)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, _expected(img), atol=1e-5)


def test_sliding_window_close_to_whole_volume_for_conv_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 2, 3, padding=1)
    )
    img = np.random.default_rng(1).normal(size=(32, 32, 24)).astype(np.float32)
    whole = sliding_window_predict(model, img, patch_size=None)
    windows = sliding_window_predict(model, img, patch_size=(16, 16, 16), overlap=0.5)
    # differences come only from zero padding at window borders, which the Gaussian
    # weighting discounts; away from the volume border they are small
    inner = (slice(2, -2),) * 3
    assert np.abs(whole - windows)[inner].max() < 0.05
    assert np.abs(whole - windows)[inner].mean() < 0.005


def test_gaussian_map_and_window_starts():
    w = gaussian_importance_map((9, 9, 9))
    assert w.shape == (9, 9, 9) and w.max() == pytest.approx(1.0) and w[4, 4, 4] == w.max()
    assert w.min() > 0 and w[0, 0, 0] < w[4, 4, 4] * 1e-3  # σ = 9/8 voxels: corners tiny
    assert np.allclose(w, w[::-1, ::-1, ::-1])
    assert window_starts(100, 40, 0.5) == [0, 20, 40, 60]  # stride 20 = 40 × (1 - 0.5)
    assert window_starts(100, 40, 0.25) == [0, 30, 60]  # stride ≤ 30, last ends at 100
    assert window_starts(40, 40, 0.5) == [0]


def test_blending_weights_favour_window_centres():
    """A model that reports where in its window a voxel lies: the blend must weight each
    window by the Gaussian (σ = 8/8 = 1 voxel) at the voxel's position in it."""

    class Position(torch.nn.Module):
        def forward(self, x):
            # logit +20 in the central band 2:6 (axis 0) of each 8-voxel window, -20 elsewhere
            logit = torch.full_like(x, -20.0)
            logit[:, :, 2:6] = 20.0
            return logit

    img = np.zeros((16, 8, 8), np.float32)  # windows start at 0, 4, 8 along axis 0 only
    out = sliding_window_predict(Position(), img, patch_size=(8, 8, 8), overlap=0.5)
    # voxel 6 is at position 6 (outside the band) of window 0 and position 2 (inside) of
    # window 4; window centre 3.5, σ 1: weights exp(-6.25/2) = 0.0439 and exp(-2.25/2) = 0.3247
    w6, w2 = np.exp(-0.5 * 2.5**2), np.exp(-0.5 * 1.5**2)
    assert out[6, 4, 4] == pytest.approx(w2 / (w2 + w6), abs=1e-4)  # 0.881
    # voxel 0 is covered only by window 0, outside its band
    assert out[0, 4, 4] < 1e-6
    # voxel 4: position 4 (in) of window 0 and 0 (out) of window 4: mostly "in"
    w4, w0 = np.exp(-0.5 * 0.5**2), np.exp(-0.5 * 3.5**2)
    assert out[4, 4, 4] == pytest.approx(w4 / (w4 + w0), abs=1e-4)


def test_bad_inputs_are_clear():
    model = Pointwise()
    img = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ModelShapeError, match="divisible by 8"):
        sliding_window_predict(model, img, patch_size=(12, 8, 8))
    with pytest.raises(ModelShapeError, match="3 channels"):
        sliding_window_predict(torch.nn.Conv3d(1, 3, 1), img)
    with pytest.raises(ModelShapeError, match="does not match"):
        sliding_window_predict(torch.nn.Conv3d(1, 2, 3), img)  # no padding: shrinks
    with pytest.raises(Exception, match="3-D"):
        sliding_window_predict(model, np.zeros((8, 8)))


def test_batching_and_progress_and_mode_restored():
    model = torch.nn.Conv3d(1, 2, 1)
    model.train()
    img = np.random.default_rng(2).normal(size=(16, 16, 16)).astype(np.float32)
    calls = []
    a = sliding_window_predict(model, img, patch_size=(8, 8, 8), overlap=0.5, batch_size=1)
    b = sliding_window_predict(
        model,
        img,
        patch_size=(8, 8, 8),
        overlap=0.5,
        batch_size=5,
        progress=lambda ev: calls.append((ev.phase, ev.completed, ev.total)),
    )
    np.testing.assert_allclose(a, b, atol=1e-6)
    # the start, then 3³ windows in batches of 5: 0, 5, 10, 15, 20, 25, 27
    assert calls[0] == ("infer", 0, 27) and calls[-1] == ("infer", 27, 27) and len(calls) == 7
    assert model.training


def test_channels_last_layout_changes_no_value():
    # On the CPU the engine runs 3-D networks channels-last (engine.layout): only the memory
    # layout may change. A small conv net with batch norm (eval mode, float32) must give the
    # same probabilities as with the default layout, and its weights keep their values.
    from cmbbench.engine.layout import channels_last_input, to_channels_last

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.BatchNorm3d(4),
        torch.nn.ELU(),
        torch.nn.Conv3d(4, 2, 1),
    ).eval()
    img = np.random.default_rng(1).normal(size=(20, 18, 12)).astype(np.float32)
    x = torch.from_numpy(img)[None, None]
    with torch.no_grad():
        reference = torch.softmax(net(x), 1)[0, 1].numpy()
    weights = net[0].weight.detach().clone()
    out = sliding_window_predict(net, img, patch_size=None, divisor=1)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(net[0].weight.detach(), weights, rtol=0, atol=0)
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-5)
    # not a module / not a CPU tensor: nothing happens
    assert to_channels_last(len, "cpu") is len
    assert channels_last_input(x, "cuda") is x
