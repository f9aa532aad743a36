"""The trainer overfits one tiny case: the loss falls and the CMBs are found."""

from __future__ import annotations

import torch
from _engine_helpers import TinyNet, cube_case, standardize

from cmbbench.engine.inference import predict_probability
from cmbbench.engine.patches import PatchSampler, prepare_volumes
from cmbbench.engine.recipe import resolve_recipe
from cmbbench.engine.trainer import train
from cmbbench.scoring.evaluator import Evaluator


def test_trainer_overfits_a_tiny_case(tmp_path):
    torch.manual_seed(0)
    case = cube_case("one", 3, n_cmb=2)  # two dark 3×3×3 cubes (27 voxels each)
    recipe = resolve_recipe(
        "tiny",
        None,
        {"steps": 60, "batch_size": 2, "lr": 1e-2, "patch_size": 16, "val_every": 60,
         "checkpoint_every": 60, "infer_patch_size": 32, "cmb_fraction": 0.8},
    ).recipe  # fmt: skip
    sampler = PatchSampler.from_recipe(prepare_volumes([case], standardize), recipe, seed=0)
    net = TinyNet()
    device = torch.device("cpu")

    def validate(model):
        prob = predict_probability(model, standardize(case.image), recipe, device=device)
        res = Evaluator("overlap").evaluate(prob, case, threshold=0.5)
        return {"f1": res.f1, "tp": res.tp, "fp": res.fp, "fn": res.fn}

    result = train(net, sampler, recipe, out_dir=tmp_path, device=device, validate=validate)
    first, last = result.losses[:10], result.losses[-10:]
    assert sum(last) / 10 < 0.5 * sum(first) / 10, (first, last)
    final = result.validations[-1]
    # both cubes found, as one component each, and nothing else
    assert (final["tp"], final["fn"], final["fp"]) == (2, 0, 0), final
    assert result.best_metric == 1.0 and result.best_checkpoint.is_file()


class _Flaky(torch.nn.Module):
    """Wraps a network; returns NaN logits on the training calls listed in ``nan_calls``."""

    def __init__(self, net: torch.nn.Module, nan_calls: set[int] | None = None):
        super().__init__()
        self.net, self.nan_calls, self.calls = net, nan_calls, 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            bad = self.nan_calls is None or self.calls in self.nan_calls
            self.calls += 1
            if bad:
                return out * float("nan")
        return out


def _tiny_training(tmp_path, steps: int):
    case = cube_case("one", 3, n_cmb=2)
    recipe = resolve_recipe(
        "tiny", None,
        {"steps": steps, "batch_size": 2, "patch_size": 16, "checkpoint_every": steps},
    ).recipe  # fmt: skip
    sampler = PatchSampler.from_recipe(prepare_volumes([case], standardize), recipe, seed=0)
    return sampler, recipe


def test_non_finite_steps_are_skipped_and_recorded(tmp_path):
    # NaN logits at steps 2 and 5: those two updates are skipped (weights unchanged by them),
    # the run completes, the record lists them, and their losses are NaN (null in JSON).
    torch.manual_seed(0)
    sampler, recipe = _tiny_training(tmp_path, 8)
    net = _Flaky(TinyNet(), {2, 5})
    result = train(net, sampler, recipe, out_dir=tmp_path, device=torch.device("cpu"))
    assert result.steps == 8 and result.skipped_steps == [2, 5]
    assert [i for i, v in enumerate(result.losses) if v != v] == [2, 5]
    assert all(torch.isfinite(p).all() for p in net.parameters())


class _NanGrad(torch.autograd.Function):
    """Identity forward; NaN gradients backward (as oneDNN's bf16 convolution backward gave
    some smp encoder layers on AVX512-BF16 CPUs, with a finite loss)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class _Bf16NanGrad(torch.nn.Module):
    """Non-finite gradients on the listed training calls, only under bfloat16 autocast."""

    def __init__(self, net: torch.nn.Module, calls: set[int]):
        super().__init__()
        self.net, self.bad, self.calls, self.in_bf16 = net, calls, 0, []

    def forward(self, x):
        out = self.net(x)
        if self.training:
            bf16 = torch.is_autocast_enabled("cpu")
            self.in_bf16.append(bf16)
            call, self.calls = self.calls, self.calls + 1
            if bf16 and call in self.bad:
                return _NanGrad.apply(out)
        return out


def test_non_finite_bf16_gradients_are_redone_in_float32(tmp_path):
    # bf16 autocast (amp_cpu=on); the training calls 2 and 6 give NaN gradients with a finite
    # loss: calls 0, 1 are steps 0, 1; call 2 is step 2 in bf16, call 3 its float32 redo;
    # calls 4, 5 are steps 3, 4; call 6 is step 5 in bf16, call 7 its redo; 8, 9 steps 6, 7
    import dataclasses

    torch.manual_seed(0)
    sampler, recipe = _tiny_training(tmp_path, 8)
    recipe = dataclasses.replace(recipe, amp_cpu="on")
    net = _Bf16NanGrad(TinyNet(), {2, 6})
    result = train(net, sampler, recipe, out_dir=tmp_path, device=torch.device("cpu"))
    assert result.amp_dtype == "bfloat16"
    assert result.fp32_retried_steps == [2, 5] and result.skipped_steps == []
    assert net.in_bf16 == [True, True, True, False, True, True, True, False, True, True]
    assert all(v == v for v in result.losses) and len(result.losses) == 8
    assert all(torch.isfinite(p).all() for p in net.parameters())
    # a NaN loss (not the kernels' doing) is still skipped, not redone
    net = _Flaky(TinyNet(), {3})
    result = train(net, sampler, recipe, out_dir=tmp_path / "b", device=torch.device("cpu"))
    assert result.skipped_steps == [3] and result.fp32_retried_steps == []


def test_training_that_only_produces_nan_is_reported_as_diverged(tmp_path):
    import pytest

    from cmbbench.engine.trainer import MAX_CONSECUTIVE_SKIPS
    from cmbbench.errors import CmbbenchError

    sampler, recipe = _tiny_training(tmp_path, MAX_CONSECUTIVE_SKIPS + 5)
    net = _Flaky(TinyNet(), None)  # NaN on every step
    with pytest.raises(CmbbenchError, match=f"{MAX_CONSECUTIVE_SKIPS} consecutive steps"):
        train(net, sampler, recipe, out_dir=tmp_path, device=torch.device("cpu"))


def test_optimizer_implementations_agree():
    # every optimizer x implementation builds and steps; from the same weights and gradients,
    # "foreach" and "fused" land where the default per-parameter loop does, up to rounding
    # (Adam's first step moves each weight by ~lr = 1e-2: a 1e-6 tolerance is 1e-4 of it)
    import dataclasses

    import pytest

    from cmbbench.engine.recipe import RecipeError
    from cmbbench.engine.trainer import make_optimizer

    base = resolve_recipe("tiny", None, {"lr": 1e-2}).recipe
    for optimizer in ("adam", "adamw", "sgd"):
        moved = {}
        for impl in ("auto", "foreach", "fused"):
            torch.manual_seed(0)
            net = TinyNet()
            recipe = dataclasses.replace(base, optimizer=optimizer, optimizer_impl=impl)
            start = torch.cat([p.detach().flatten() for p in net.parameters()])
            opt = make_optimizer(net, recipe)
            assert opt.defaults.get("fused") is (True if impl == "fused" else None)
            for p in net.parameters():
                p.grad = torch.linspace(-1.0, 1.0, p.numel()).reshape(p.shape)
            opt.step()
            moved[impl] = torch.cat([p.detach().flatten() for p in net.parameters()])
        assert (moved["auto"] - start).abs().max() > 1e-3  # the step did move the weights
        for impl in ("foreach", "fused"):
            assert torch.allclose(moved[impl], moved["auto"], atol=1e-6), (optimizer, impl)
    with pytest.raises(RecipeError, match=r"'optimizer_impl': expected one of"):
        resolve_recipe("tiny", None, {"optimizer_impl": "apex"})
