"""Engine building blocks: recipes, losses, checkpoints, the patch sampler, the training loop."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch
from _engine_helpers import TinyNet, cube_case, standardize

from cmbbench.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
)
from cmbbench.engine.losses import CmbLoss, focal_tversky_loss
from cmbbench.engine.patches import PatchSampler, make_loader, prepare_volumes
from cmbbench.engine.recipe import Recipe, RecipeError, resolve_recipe
from cmbbench.engine.trainer import autocast_dtype, bf16_is_faster, lr_at, train
from cmbbench.errors import UnknownNameError
from cmbbench.options import OptionError, parse_key_values


# ----------------------------------------------------------------------------- recipes
def test_recipe_layers_and_sources():
    r = resolve_recipe(
        "full", {"patch_size": (64, 64, 64), "lr": 1e-4}, {"lr": "3e-4", "steps": "7"}
    )
    assert r.recipe.patch_size == (64, 64, 64)
    assert r.recipe.lr == pytest.approx(3e-4) and r.recipe.steps == 7
    assert r.sources["patch_size"] == "model" and r.sources["lr"] == "user"
    assert r.sources["batch_size"] == "preset:full"
    assert r.overridden == {"patch_size": "model", "lr": "user", "steps": "user"}
    # the published seed recipe
    full = resolve_recipe("full").recipe
    assert (full.patch_size, full.batch_size, full.lr, full.weight_decay) == (
        (40, 40, 40),
        8,
        5e-5,
        1e-4,
    )
    assert (full.tversky_alpha, full.tversky_beta, full.tversky_gamma) == (0.3, 0.7, 3.0)
    assert full.ce_class_weights == (0.1, 5.0)
    assert (full.patches_per_volume, full.cmb_fraction) == (30, 0.9)


def test_recipe_coercion_and_errors():
    r = resolve_recipe(
        "tiny", None, parse_key_values(["patch_size=24", "aug_flip=false", "optimizer=adamw"])
    )
    assert r.recipe.patch_size == (24, 24, 24) and r.recipe.aug_flip is False
    assert r.recipe.optimizer == "adamw"
    assert resolve_recipe("tiny", None, {"patch_size": "32x32x16"}).recipe.patch_size == (
        32,
        32,
        16,
    )
    with pytest.raises(RecipeError, match="unknown recipe key 'lrr'"):
        resolve_recipe("tiny", None, {"lrr": 1})
    with pytest.raises(RecipeError, match="expected one of"):
        resolve_recipe("tiny", None, {"optimizer": "lion"})
    with pytest.raises(RecipeError, match="positive"):
        resolve_recipe("tiny", None, {"steps": 0})
    with pytest.raises(OptionError, match="key=value"):
        parse_key_values(["lr"])
    # the one parser: recipe values and dataset options read alike
    assert parse_key_values(["channels=T2S,T1", "n=40", "space=voxel", "val-every=50"]) == {
        "channels": ["T2S", "T1"],
        "n": 40,
        "space": "voxel",
        "val_every": 50,
    }
    r = resolve_recipe("tiny", None, parse_key_values(["patch_size=32,32,16", "lr=1e-3"]))
    assert r.recipe.patch_size == (32, 32, 16) and r.recipe.lr == 1e-3
    with pytest.raises(UnknownNameError, match="quick"):
        resolve_recipe("huge")
    assert (
        Recipe.from_dict(resolve_recipe("quick").recipe.to_dict()) == resolve_recipe("quick").recipe
    )


def test_lr_schedule():
    r = resolve_recipe(
        "tiny", None, {"steps": 100, "lr": 1.0, "warmup_steps": 10, "lr_schedule": "cosine"}
    ).recipe
    assert lr_at(r, 0) == pytest.approx(0.1)  # warm-up: (0 + 1) / 10
    assert lr_at(r, 10) == pytest.approx(1.0)
    assert lr_at(r, 100) == pytest.approx(0.01)  # cosine floor


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize(
    ("vendor", "flags", "expected"),
    [
        ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, True),  # Zen 4: bf16 is faster
        ("AuthenticAMD", {"avx2", "avx512f"}, False),  # Zen 3 / Zen 4 without the flag
        ("GenuineIntel", {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, True),  # AMX
        # Emerald Rapids guest with AMX hidden: bf16 at half the float32 rate (measured)
        ("GenuineIntel", {"avx512f", "avx512_bf16", "avx512_fp16"}, False),
        ("GenuineIntel", {"avx2", "fma"}, False),
        ("", set(), False),  # nothing readable
    ],
)
def test_bf16_is_only_chosen_where_it_is_faster(vendor, flags, expected, monkeypatch):
    assert bf16_is_faster(vendor, flags) is expected
    import cmbbench.engine.trainer as trainer

    monkeypatch.setattr(trainer, "cpu_prefers_bf16", lambda: bf16_is_faster(vendor, flags))
    cpu = torch.device("cpu")
    auto = autocast_dtype(Recipe(amp_cpu="auto"), cpu)
    assert auto == (torch.bfloat16 if expected else None)
    # "on" and "off" do not look at the CPU
    assert autocast_dtype(Recipe(amp_cpu="on"), cpu) == torch.bfloat16
    assert autocast_dtype(Recipe(amp_cpu="off"), cpu) is None


def test_focal_tversky_values():
    t = torch.zeros(1, 4, 4, 4)
    t[0, 1, 1, 1] = 1
    # perfect prediction: TI = (1 + 1) / (1 + 0 + 0 + 1) = 1 -> loss 0
    assert focal_tversky_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-7)
    # all-zero prediction: TP=0, FP=0, FN=1 -> TI = 1 / (0.7 + 1); loss = (1 - TI)^(1/3)
    expected = (1 - 1 / 1.7) ** (1 / 3)
    assert focal_tversky_loss(torch.zeros_like(t), t).item() == pytest.approx(expected, rel=1e-6)
    # a voxel outside `valid` does not count
    valid = torch.ones_like(t, dtype=torch.bool)
    valid[0, 1, 1, 1] = False
    assert focal_tversky_loss(torch.zeros_like(t), t, valid).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("channels", [1, 2])
def test_cmb_loss_both_heads_and_gradients(channels):
    torch.manual_seed(0)
    target = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    target[0, 3:5, 3:5, 3:5] = 1
    logits = torch.zeros(2, channels, 8, 8, 8, requires_grad=True)
    loss = CmbLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    # the gradient pushes CMB voxels up and background down
    g = logits.grad[:, -1]
    assert g[0, 4, 4, 4] < 0 < g[1, 0, 0, 0]
    # a confident correct prediction has a smaller loss
    good = torch.full((2, channels, 8, 8, 8), -6.0)
    good[:, -1][target.bool()] = 6.0
    if channels == 2:
        good[:, 0] = -good[:, 1]
    assert CmbLoss()(good, target).item() < loss.item() / 3


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_and_corruption(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    state = {"model": TinyNet().state_dict(), "step": 3, "best_metric": None, "losses": [1.0, 0.5]}
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert back["step"] == 3 and back["losses"] == [1.0, 0.5]
    assert all(torch.equal(a, back["model"][k]) for k, a in state["model"].items())
    raw = path.read_bytes()
    # truncated
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt is truncated or corrupted"):
        load_checkpoint(path)
    # same size, one byte flipped
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupted: sha256"):
        load_checkpoint(path)
    # no sidecar
    path.write_bytes(raw)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="no checksum file"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_refuses_pickled_objects(tmp_path):
    """weights_only=True: a checkpoint holding an arbitrary object is refused, not executed."""

    path = tmp_path / "evil.pt"
    save_checkpoint(path, {"obj": np.random.default_rng(0)})  # a Generator is not allow-listed
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("code", "message"),
    [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only or not writable")],
)
def test_checkpoint_write_errors_are_clear(tmp_path, monkeypatch, code, message):
    import os

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("cmbbench.engine.checkpoint.os.fdopen", refuse)
    with pytest.raises(CheckpointError, match=message) as info:
        save_checkpoint(tmp_path / "x.pt", {"step": 1})
    assert "x.pt" in str(info.value)
    assert not list(tmp_path.iterdir())  # no temp file left behind


# ----------------------------------------------------------------------------- patches
def _volumes(n=3):
    return prepare_volumes([cube_case(f"c{i}", i, n_cmb=2) for i in range(n)], standardize)


def test_prepare_volume_indexes_instances():
    (v,) = prepare_volumes([cube_case("c", 0, n_cmb=2)], standardize)
    assert len(v.instances) == 2 and all(len(i) == 27 for i in v.instances)  # two 3×3×3 cubes
    assert v.label.max() == 1 and v.image.dtype == np.float32
    assert abs(float(v.image.mean())) < 1e-3


def test_sampler_is_pure_function_of_seed_and_index():
    vols = _volumes()
    kw = dict(patch_size=(16, 16, 8), batch_size=3, patches_per_volume=4, cmb_fraction=1.0)
    a = PatchSampler(vols, seed=1, rotate_deg=10.0, **kw)
    b = PatchSampler(vols, seed=1, rotate_deg=10.0, **kw)
    for step in (5, 0, 5, 2):  # any order, any repetition
        ba, bb = a.batch(step), b.batch(step)
        assert all(torch.equal(ba[k], bb[k]) for k in ba)
    assert ba["image"].shape == (3, 1, 16, 16, 8) and ba["label"].shape == (3, 16, 16, 8)
    # cmb_fraction = 1: every patch holds CMB voxels (the jitter is at most a quarter patch)
    assert all(ba["label"][i].sum() > 0 for i in range(3))
    c = PatchSampler(vols, seed=2, rotate_deg=10.0, **kw)
    assert not torch.equal(c.batch(5)["image"], a.batch(5)["image"])
    # ranks draw disjoint samples
    r0 = PatchSampler(vols, seed=1, rank=0, world_size=2, **kw).batch(1)
    r1 = PatchSampler(vols, seed=1, rank=1, world_size=2, **kw).batch(1)
    assert not torch.equal(r0["image"], r1["image"])


def test_sampler_class_fraction():
    vols = _volumes()
    s = PatchSampler(
        vols, patch_size=(8, 8, 8), batch_size=1, cmb_fraction=0.0, flip=False, intensity=False
    )
    hits = sum(int(s.sample(i)[1].any()) for i in range(60))
    # 8³ random patches in a 32×32×24 volume with two 27-voxel cubes rarely hit one
    assert hits < 30
    s1 = PatchSampler(
        vols, patch_size=(8, 8, 8), batch_size=1, cmb_fraction=1.0, flip=False, intensity=False
    )
    assert all(s1.sample(i)[1].any() for i in range(30))


def test_loader_with_workers_keeps_step_order():
    vols = _volumes(2)
    s = PatchSampler(vols, patch_size=(8, 8, 8), batch_size=2, seed=3)
    steps = [int(b["step"]) for b in make_loader(s, 3, 9, num_workers=2)]
    assert steps == [3, 4, 5, 6, 7, 8]
    b0 = next(iter(make_loader(s, 3, 4, num_workers=0)))
    b2 = next(iter(make_loader(s, 3, 4, num_workers=2)))
    assert torch.equal(b0["image"], b2["image"])


# ----------------------------------------------------------------------------- training loop
@pytest.mark.parametrize("impl", ["auto", "fused"])
def test_resume_equals_uninterrupted(tmp_path, impl):
    # also with the fused optimizer, whose state (a float step tensor) must round-trip too
    vols = _volumes()
    recipe = resolve_recipe(
        "tiny",
        None,
        {"steps": 12, "checkpoint_every": 4, "val_every": 4, "patch_size": 16,
         "optimizer_impl": impl},
    ).recipe  # fmt: skip
    sampler = PatchSampler.from_recipe(vols, recipe, seed=0)
    calls = []

    def validate(model):  # deterministic stand-in for lesion F1: a function of the weights
        calls.append(1)
        w = next(model.parameters())
        return {"f1": float(w.abs().sum()) % 1.0}

    torch.manual_seed(0)
    full = TinyNet()
    res_full = train(
        full, sampler, recipe, out_dir=tmp_path / "a", device=torch.device("cpu"), validate=validate
    )
    torch.manual_seed(0)
    part = TinyNet()
    res_part = train(
        part,
        sampler,
        recipe,
        out_dir=tmp_path / "b",
        device=torch.device("cpu"),
        validate=validate,
        stop_after=6,
    )
    assert res_part.steps == 6
    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    resumed = TinyNet()
    res_res = train(
        resumed,
        sampler,
        recipe,
        out_dir=tmp_path / "b",
        device=torch.device("cpu"),
        validate=validate,
        resume=True,
    )
    assert res_res.start_step == 6 and res_res.steps == 12
    assert res_res.losses == res_full.losses
    assert [v["f1"] for v in res_res.validations] == [v["f1"] for v in res_full.validations]
    assert (res_res.best_step, res_res.best_metric) == (res_full.best_step, res_full.best_metric)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    best_a = load_checkpoint(tmp_path / "a" / "checkpoints" / "best.pt")
    best_b = load_checkpoint(tmp_path / "b" / "checkpoints" / "best.pt")
    assert best_a["step"] == best_b["step"]
    assert all(torch.equal(v, best_b["model"][k]) for k, v in best_a["model"].items())


def test_seed_model_recipe_keeps_the_quick_preset():
    """unet3d declares the seed recipe (= the reference `full` preset) in its own spelling:
    under `quick` nothing counts as a model override; a differing entry does."""
    seed_recipe = {
        "patch_size": (40, 40, 40),
        "batch_size": 8,
        "optimizer": "adam",
        "lr": 5e-5,
        "weight_decay": 1e-4,
        "loss": "focal_tversky+ce",
        "loss_params": {"alpha": 0.3, "beta": 0.7, "gamma": 3.0, "ce_class_weights": (0.1, 5.0)},
        "patches_per_volume": 30,
        "positive_fraction": 0.9,
        "normalize": "zscore_foreground",
        "divisor": 8,
    }
    quick = resolve_recipe("quick", seed_recipe)
    assert quick.overridden == {}
    assert quick.recipe == resolve_recipe("quick").recipe
    other = resolve_recipe(
        "quick", {**seed_recipe, "positive_fraction": 0.5, "loss_params": {"beta": 0.9}}
    )
    assert other.overridden == {"cmb_fraction": "model", "tversky_beta": "model"}
    with pytest.raises(RecipeError, match="'loss'"):
        resolve_recipe("quick", {"loss": "dice"})


def test_hard_negative_candidates_and_sampling():
    from cmbbench.engine.patches import dark_spot_candidates, prepare_volume

    case = cube_case("v", 5, n_cmb=1)
    img = case.image
    img[20:23, 4:28, 12] = 0.2  # a dark vein-like tube (3 × 24 × 1 voxels), not labelled
    (x, y, z) = np.argwhere(case.label > 0)[0]
    vol = prepare_volume(case, standardize, hard_negatives=True)
    spots = vol.dark_spots
    assert len(spots) > 0
    # candidates lie on the tube, none within 2 voxels of the CMB
    on_tube = (spots[:, 0] >= 19) & (spots[:, 0] <= 23) & (np.abs(spots[:, 2] - 12) <= 1)
    assert on_tube.mean() > 0.8
    assert np.all(np.abs(spots - np.array([x, y, z])).max(axis=1) > 2)
    direct = dark_spot_candidates(vol.image, vol.fg_mask, vol.label, case.spacing)
    np.testing.assert_array_equal(direct, spots)
    s = PatchSampler(
        [vol], patch_size=(8, 8, 8), batch_size=1, cmb_fraction=0.0, hard_negative_fraction=1.0,
        flip=False, intensity=False,
    )  # fmt: skip
    # every patch holds part of the tube (intensity ~0.2 -> strongly negative after z-scoring)
    assert all(s.sample(i)[0].min() < -3 for i in range(20))
