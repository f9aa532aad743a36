"""Every registered model builds; networks run a forward pass of the right shape, no NaNs."""

from __future__ import annotations

import numpy as np
import pytest

from cmbbench.errors import CmbbenchError
from cmbbench.models.detector import (
    Detector,
    ModelShapeError,
    Prediction,
    check_input_size,
    check_output_shape,
    divisor_triple,
)
from cmbbench.models.registry import build_model, list_models, model_info

torch = pytest.importorskip("torch")


def _small_shape(divisor) -> tuple[int, int, int]:
    # the smallest input the model takes (at least 8 per axis); made anisotropic where the
    # divisor is not, so that each axis is exercised separately
    d = [max(k, 8) for k in divisor_triple(divisor)]
    if max(d) < 32:
        d[0] *= 2
    return (d[0], d[1], d[2])


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs(name):
    torch.manual_seed(0)
    built = build_model(name)
    if built.kind == "detector":
        assert isinstance(built.model, Detector)
        return
    model, info = built.model, built.info
    shape = _small_shape(info.divisor)
    check_input_size(info, shape)
    assert check_output_shape(model, shape, name=name, divisor=info.divisor) in (
        "softmax2",
        "logit1",
    )
    x = torch.randn(2, 1, *shape)
    model.train()
    out = model(x)
    assert out.shape[0] == 2 and out.shape[1] in (1, 2) and tuple(out.shape[2:]) == shape
    assert torch.isfinite(out).all(), f"{name}: non-finite output"
    out.float().mean().backward()
    assert any(p.grad is not None for p in model.parameters())


def test_smp_size_is_checked_up_front():
    # smp U-Nets: 32 in x, y; 8 in z (two stages keep z) -> 40 fails in x, 16 slices pass
    with pytest.raises(
        ModelShapeError,
        match=r"'smp_unet_r18' needs spatial sizes divisible by 32×32×8 \(x×y×z\), "
        r"got \(40, 40, 40\) \(e.g. use \(64, 64, 40\)\)",
    ):
        check_input_size(model_info("smp_unet_r18"), (40, 40, 40))
    check_input_size("smp_unet_r18", (32, 32, 16))
    with pytest.raises(ModelShapeError, match="divisible by 32×32×16"):
        check_input_size("smp_linknet_r18", (32, 32, 8))
    with pytest.raises(ModelShapeError, match="divisible by 32, got"):
        check_input_size("smp_fpn_r18", (32, 32, 16))
    check_input_size("unet3d", (40, 40, 40))  # multiple of 8: fine
    with pytest.raises(ModelShapeError, match="divisible by 8"):
        check_input_size("unet3d", (1, 1, 36, 40, 40))


def test_check_output_shape_names_the_model():
    with pytest.raises(ModelShapeError, match=r"'shrinker'.*does not match"):
        check_output_shape(torch.nn.Conv3d(1, 2, 3), (8, 8, 8), name="shrinker")
    with pytest.raises(ModelShapeError, match=r"'three'.*3 channels"):
        check_output_shape(torch.nn.Conv3d(1, 3, 1), (8, 8, 8), name="three")
    with pytest.raises(ModelShapeError, match=r"'fails' failed on an input"):
        check_output_shape(torch.nn.Conv3d(2, 2, 1), (8, 8, 8), name="fails")
    assert check_output_shape(torch.nn.Conv3d(1, 1, 1), (8, 8, 8)) == "logit1"


def test_unet3d_matches_the_seed_network():
    net = build_model("unet3d").model
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    # encoder: two 3×3×3 convs per level with 32/64/128/256 filters
    enc = [c.out_channels for c in convs[:8]]
    assert enc == [32, 32, 64, 64, 128, 128, 256, 256]
    assert all(c.kernel_size == (3, 3, 3) for c in convs[:-1])
    assert convs[-1].kernel_size == (1, 1, 1) and convs[-1].out_channels == 2
    assert any(isinstance(m, torch.nn.ELU) for m in net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 1, 12, 16, 16))


def test_deep_supervision_aux_outputs_only_in_training():
    net = build_model("unet3d_ds", filters=(4, 8, 16)).model
    x = torch.randn(2, 1, 8, 8, 8)
    net.train()
    out = net(x)
    assert out.shape == (2, 2, 8, 8, 8)
    assert [a.shape for a in net.aux_outputs] == [(2, 2, 8, 8, 8)]  # one level below the top
    net.eval()
    assert net(x).shape == (2, 2, 8, 8, 8) and net.aux_outputs == []


def test_prediction_holds_exactly_one_form():
    p = Prediction(points=[[1.0, 2.0, 3.0]])
    assert p.kind == "points" and p.scores.tolist() == [1.0]
    assert Prediction(prob=np.zeros((2, 2, 2))).array.dtype == np.float32
    with pytest.raises(Exception, match="exactly one"):
        Prediction(prob=np.zeros((2, 2, 2)), mask=np.zeros((2, 2, 2)))
    with pytest.raises(Exception, match="2 scores"):
        Prediction(points=np.zeros((1, 3)), scores=[0.1, 0.2])


@pytest.mark.parametrize("name", ["unet3d", "unet3d_ds", "smp_unet_r18"])
def test_learned_models_start_from_a_low_cmb_prior(name):
    # The output bias is initialised to logit(0.01) for the CMB class (docs/seed-results.md):
    # at initialisation the mean CMB probability over a random input is ~1 %, not ~50 %.
    torch = pytest.importorskip("torch")
    from cmbbench.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(name).model.eval()
    with torch.no_grad():
        p = torch.softmax(model(torch.randn(1, 1, 32, 32, 32)), dim=1)[:, 1]
    assert 0.002 < float(p.mean()) < 0.05
    default = build_model(name, prior=None).model.eval()
    with torch.no_grad():
        q = torch.softmax(default(torch.randn(1, 1, 32, 32, 32)), dim=1)[:, 1]
    assert 0.2 < float(q.mean()) < 0.8


def test_divisor_triple_accepts_int_or_three_and_rejects_the_rest():
    assert divisor_triple(8) == (8, 8, 8)
    assert divisor_triple((32, 32, 8)) == (32, 32, 8)
    assert divisor_triple([4, 4, 2]) == (4, 4, 2)
    for bad in (0, -2, (32, 32), (32, 0, 8), 2.5, "8", True):
        with pytest.raises(CmbbenchError, match=r"model 'm': divisor must be a positive int or 3"):
            divisor_triple(bad, name="model 'm'")


def test_smp_strides_decide_the_divisor():
    from cmbbench_baselines.smp import ANISO_STRIDES, strides_divisor

    # z strides 1, 2, 2, 2, 1 -> 8; x, y 2^5 = 32
    assert strides_divisor(ANISO_STRIDES) == (32, 32, 8)
    assert build_model("smp_unet_r18").info.divisor == (32, 32, 8)
    iso = build_model("smp_unet_r18", strides=((2, 2, 2),) * 5)
    assert iso.info.divisor == 32  # the library's default: 2^5 on every axis
    out = iso.model.eval()(torch.zeros(1, 1, 32, 32, 32))
    assert tuple(out.shape) == (1, 2, 32, 32, 32)
    assert build_model("smp_linknet_r18").info.divisor == (32, 32, 16)
    assert build_model("smp_linknet_r18", z_factor=1).info.divisor == 32


def test_z_upsampled_wrapper_returns_the_input_grid():
    from cmbbench_baselines.smp_net import ZUpsampled

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return torch.cat([x, -x], dim=1)

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(1, 1, 2, 3, 20)
    out = ZUpsampled(Probe(), 2)(x)
    assert seen == [(1, 1, 2, 3, 40)]  # the network saw 2x the slices
    assert tuple(out.shape) == (1, 2, 2, 3, 20)
    # linear up-sampling then pair averaging keeps a z-ramp's mean per pair close to it
    assert torch.allclose(out[:, :1, :, :, 1:-1], x[:, :, :, :, 1:-1], atol=1e-4)


def test_whole_volume_inference_pads_each_axis_to_its_own_divisor():
    from cmbbench.engine.inference import sliding_window_predict

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[2:]))
            return torch.cat([torch.zeros_like(x), x], dim=1)

    img = np.zeros((5, 6, 3), np.float32)
    prob = sliding_window_predict(Probe(), img, patch_size=None, divisor=(4, 4, 2))
    assert seen == [(8, 8, 4)] and prob.shape == (5, 6, 3)  # 5->8, 6->8, 3->4
    with pytest.raises(ModelShapeError, match="divisible by"):
        sliding_window_predict(Probe(), img, patch_size=(8, 8, 3), divisor=(4, 4, 2))
