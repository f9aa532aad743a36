"""Multi-sequence input (issue 15, part 2): channels through normalisation, sampler,
augmentation, networks, inference, the record and predict; single-channel bit-identity."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _engine_helpers import TinyNet, cube_case, standardize
from fixture_trees import write_valdo_tree

from cmbbench.datasets.registry import load_dataset
from cmbbench.engine.augment import augment_patch
from cmbbench.engine.channels import channel_names, extra_channels, normalized_channels
from cmbbench.engine.inference import sliding_window_predict
from cmbbench.engine.normalize import normalize_image, normalizer
from cmbbench.engine.patches import PatchSampler, prepare_volumes
from cmbbench.engine.recipe import resolve_recipe
from cmbbench.engine.trainer import train
from cmbbench.errors import CmbbenchError
from cmbbench.models.registry import build_model, load_plugin

PLUGIN = str(Path(__file__).with_name("engine_plugin_example.py"))
CHANNELS = ["T2S", "T1", "T2"]
# two subjects per cohort and then some: every split of a stratified 60/20/20 cut is non-empty
SUBJECTS = {
    "sub-101": 2, "sub-102": 1, "sub-103": 0, "sub-104": 1, "sub-201": 3, "sub-202": 1,
    "sub-203": 0, "sub-301": 1, "sub-302": 2, "sub-303": 0,
}  # fmt: skip
TINY_RUN = {
    "steps": 6, "val_every": 6, "checkpoint_every": 6, "batch_size": 2,
    "patch_size": (16, 16, 8), "infer_patch_size": (16, 16, 8),
}  # fmt: skip


def test_channel_names_from_dataset_options():
    assert channel_names({}) is None and extra_channels({}) == ()
    assert (
        channel_names({"channels": "T2S"}) == ["T2S"] and extra_channels({"channels": "T2S"}) == ()
    )
    assert extra_channels({"channels": CHANNELS}) == ("T1", "T2")


def test_channels_normalised_each_on_its_own_nans_zero_after(tmp_path):
    write_valdo_tree(tmp_path, {"sub-201": 2})
    case = load_dataset("valdo", root=str(tmp_path), channels=CHANNELS)[0]
    norm = normalizer("zscore_foreground")
    out = normalized_channels(case, norm, ("T1", "T2"))
    assert out.shape == (3, *case.shape) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    # the main channel is exactly the single-channel input
    np.testing.assert_array_equal(out[0], norm(np.asarray(case.image, np.float32)))
    data = case.load()
    missing = data.missing["T1"]
    assert missing[0].all() and not missing[1:].any()  # the fixture's NaNs: the first row
    assert np.all(out[1][missing] == 0) and np.all(out[2][missing] == 0)
    # statistics of the valued voxels only: the NaN row (stored as 0) does not shift them
    inside = data.extra["T1"][1:]
    fg = inside > 0.5 * np.median(inside)
    ref = normalize_image(inside, method="zscore_foreground", mask=fg)
    np.testing.assert_allclose(out[1][1:], ref, atol=1e-5)
    # zscore and none honour the missing voxels too
    for method in ("zscore", "none"):
        o = normalized_channels(case, normalizer(method), ("T1",))
        assert np.all(o[1][missing] == 0) and np.all(np.isfinite(o))
    with pytest.raises(CmbbenchError, match=r"sub-201.*T2S"):
        normalized_channels(case, norm, ("T2S",))  # no extra named T2S (it is the main)


def test_augmentation_spatial_shared_intensity_per_channel():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((12, 10, 8)).astype(np.float32)
    image = np.stack([base, base, base])
    label = (base > 1.5).astype(np.uint8)
    valid = np.ones(base.shape, bool)
    img, lab, _ = augment_patch(
        image, label, valid, np.random.default_rng(5), flip=True, rotate_deg=20.0, intensity=False
    )
    assert img.shape == image.shape
    np.testing.assert_array_equal(img[0], img[1])
    np.testing.assert_array_equal(img[0], img[2])
    # the same spatial transform as a single-channel patch with the same generator
    one, one_lab, _ = augment_patch(
        base, label, valid, np.random.default_rng(5), flip=True, rotate_deg=20.0, intensity=False
    )
    np.testing.assert_array_equal(img[0], one)
    np.testing.assert_array_equal(lab, one_lab)
    img, _, _ = augment_patch(image, label, valid, np.random.default_rng(5), intensity=True)
    assert not np.array_equal(img[0], img[1])  # gain/offset/noise drawn per channel


def _train_tiny(volumes, tmp_path, recipe):
    torch.manual_seed(0)
    sampler = PatchSampler.from_recipe(volumes, recipe, seed=0)
    net = TinyNet()
    result = train(
        net, sampler, recipe, out_dir=tmp_path, device=torch.device("cpu"), write_logs=False
    )
    return net, sampler, result


def test_explicit_one_channel_input_equals_the_implicit_one_bit_for_bit(tmp_path):
    # a (1, X, Y, Z) volume trains, samples and predicts exactly like the (X, Y, Z) one:
    # the multi-channel code paths add nothing to the arithmetic of a single channel
    recipe = resolve_recipe(
        "tiny", None,
        {"steps": 8, "batch_size": 2, "patch_size": 16, "checkpoint_every": 8,
         "infer_patch_size": 16, "aug_rotate_deg": 15.0, "hard_negative_fraction": 0.2},
    ).recipe  # fmt: skip
    cases = [cube_case(f"c{i}", i, n_cmb=2) for i in range(2)]
    implicit = prepare_volumes(cases, standardize, hard_negatives=True)
    explicit = [dataclasses.replace(v, image=v.image[None].copy()) for v in implicit]
    net_a, samp_a, res_a = _train_tiny(implicit, tmp_path / "a", recipe)
    net_b, samp_b, res_b = _train_tiny(explicit, tmp_path / "b", recipe)
    for step in (0, 3, 7):
        ba, bb = samp_a.batch(step), samp_b.batch(step)
        assert ba["image"].shape == bb["image"].shape == (2, 1, 16, 16, 16)
        for key in ("image", "label", "valid"):
            assert torch.equal(ba[key], bb[key]), key
    assert res_a.losses == res_b.losses  # exact float equality, step by step
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    img = implicit[0].image
    prob_a = sliding_window_predict(net_a, img, patch_size=(16, 16, 16))
    prob_b = sliding_window_predict(net_a, img[None], patch_size=(16, 16, 16))
    np.testing.assert_array_equal(prob_a, prob_b)


def test_multichannel_sampler_batches_have_c_channels():
    recipe = resolve_recipe("tiny", None, {"batch_size": 3, "patch_size": 16}).recipe
    (vol,) = prepare_volumes([cube_case("c", 0, n_cmb=2)], standardize)
    three = dataclasses.replace(vol, image=np.stack([vol.image, -vol.image, 2 * vol.image]))
    batch = PatchSampler.from_recipe(
        [three], dataclasses.replace(recipe, aug_intensity=False), seed=1
    ).batch(0)
    assert batch["image"].shape == (3, 3, 16, 16, 16)
    # spatial crops and flips are shared: the channels keep their relation voxel for voxel
    x = batch["image"]
    inside = x[:, 0] != x[:, 0].amin()  # away from out-of-volume padding
    assert torch.allclose(x[:, 1][inside], -x[:, 0][inside])
    assert torch.allclose(x[:, 2][inside], 2 * x[:, 0][inside])


def test_baselines_take_in_channels():
    built = build_model("unet3d", in_channels=3, filters=(4, 8))
    assert built.in_channels == 3 and "in_channels" not in built.kwargs
    out = built.model.eval()(torch.zeros(1, 3, 8, 8, 8))
    assert out.shape == (1, 2, 8, 8, 8)
    assert build_model("unet3d_small").model.down[0].conv1.in_channels == 1  # default: one


@pytest.mark.parametrize("name", ["smp_unet_r18", "smp_linknet_r18", "smp_fpn_r18"])
def test_smp_baselines_take_in_channels(name):
    pytest.importorskip("segmentation_models_pytorch_3d")
    from cmbbench.models.registry import model_info

    built = build_model(name, in_channels=3)
    spatial = tuple(32 if d == 32 else max(d, 16) for d in _triple(model_info(name).divisor))
    with torch.no_grad():
        out = built.model.eval()(torch.zeros(1, 3, *spatial))
    assert out.shape == (1, 2, *spatial)
    with pytest.raises(RuntimeError):  # the network really expects three channels
        built.model(torch.zeros(1, 1, *spatial))


def _triple(d):
    return (d, d, d) if isinstance(d, int) else tuple(d)


def test_model_that_takes_one_channel_fails_up_front(tmp_path):
    from cmbbench.engine.run import run

    load_plugin(PLUGIN)
    write_valdo_tree(tmp_path / "valdo", SUBJECTS)
    for model in ("engine_tiny", "classical_log"):
        out = tmp_path / model
        with pytest.raises(
            CmbbenchError, match=rf"model '{model}' cannot take 3 input channels \(T2S, T1, T2\)"
        ):
            run(model, "valdo", root=tmp_path / "valdo", preset="tiny", device="cpu", out=out,
                dataset_options={"channels": CHANNELS}, overrides=TINY_RUN)  # fmt: skip
        assert not (out / "checkpoints").exists()  # nothing was trained
    with pytest.raises(CmbbenchError, match="in_channels=2 does not match the 3 dataset channels"):
        run("unet3d", "valdo", root=tmp_path / "valdo", preset="tiny", device="cpu",
            out=tmp_path / "mismatch", dataset_options={"channels": CHANNELS},
            model_kwargs={"in_channels": 2}, overrides=TINY_RUN)  # fmt: skip


@pytest.fixture(scope="module")
def three_channel_run(tmp_path_factory):
    from cmbbench.engine.run import run

    base = tmp_path_factory.mktemp("mc")
    write_valdo_tree(base / "valdo", SUBJECTS)  # T1/T2 hold NaNs outside the "brain"
    torch.set_num_threads(1)
    out = base / "run"
    record = run(
        "unet3d", "valdo", root=base / "valdo", preset="tiny", device="cpu", out=out,
        dataset_options={"channels": CHANNELS}, model_kwargs={"filters": (4, 8)},
        overrides=TINY_RUN, n_bootstrap=20,
    )  # fmt: skip
    return base, out, record


def test_three_channel_run_on_valdo_with_nans(three_channel_run):
    _, out, record = three_channel_run
    assert record.dataset["channels"] == CHANNELS
    assert record.model["in_channels"] == 3 and "in_channels" not in record.model["kwargs"]
    losses = record.training["loss_every_step"]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert len(record.cases) == record.dataset["n_test"]
    saved = json.loads((out / "record.json").read_text())
    assert saved["dataset"]["channels"] == CHANNELS and saved["model"]["in_channels"] == 3
    state = torch.load(out / record.artifacts["best_checkpoint"], weights_only=False)["model"]
    first = next(v for k, v in state.items() if v.ndim == 5)
    assert first.shape[1] == 3  # the first convolution sees three sequences


def test_evaluate_uses_the_recorded_channel_order(three_channel_run):
    from cmbbench.engine.evaluate import evaluate_run

    _, out, record = three_channel_run
    # the run's own dataset: its options (channels included) are reused, in recorded order
    report = evaluate_run(out, "valdo", split="test", device="cpu", n_bootstrap=20)
    mine = {c.case_id: (c.tp, c.fp, c.fn) for c in record.cases}
    assert {c.case_id: (c.tp, c.fp, c.fn) for c in report.cases} == mine
    # the channels given in another order are still fed in the recorded order
    swapped = evaluate_run(
        out, "valdo", split="test", device="cpu", n_bootstrap=20,
        dataset_options={"channels": ["T2S", "T2", "T1"]},
    )  # fmt: skip
    assert {c.case_id: (c.tp, c.fp, c.fn) for c in swapped.cases} == mine
    with pytest.raises(CmbbenchError, match="channel 'T1' is not available"):
        evaluate_run(out, "valdo", split="test", device="cpu", n_bootstrap=20,
                     dataset_options={"channels": ["T2S"]})  # fmt: skip


def test_single_channel_named_or_implicit_gives_the_same_run(tmp_path):
    # channels=T2S (one named channel) is the single-channel path: same losses, counts, pp
    from cmbbench.engine.run import run

    write_valdo_tree(tmp_path / "valdo", SUBJECTS, extras=False)
    recs = []
    for name, opts in (("implicit", None), ("named", {"channels": ["T2S"]})):
        torch.set_num_threads(1)
        recs.append(
            run("unet3d", "valdo", root=tmp_path / "valdo", preset="tiny", device="cpu",
                out=tmp_path / name, dataset_options=opts, model_kwargs={"filters": (4, 8)},
                overrides=TINY_RUN, n_bootstrap=20)
        )  # fmt: skip
    a, b = recs
    assert a.training["loss_every_step"] == b.training["loss_every_step"]
    assert [(c.case_id, c.tp, c.fp, c.fn) for c in a.cases] == [
        (c.case_id, c.tp, c.fp, c.fn) for c in b.cases
    ]
    assert {k: v for k, v in a.postprocess.items()} == {k: v for k, v in b.postprocess.items()}
    assert a.model["in_channels"] == b.model["in_channels"] == 1
    assert a.dataset["channels"] is None and b.dataset["channels"] == ["T2S"]


def _write_channel_folder(valdo: Path, folder: Path, sids, template="_{i:04d}") -> dict:
    """Copy VALDO subjects' T2S, T1, T2 into one folder, nnU-Net named; an oblique affine."""
    from cmbbench.io import load_nifti, save_nifti

    theta = 0.3
    aff = np.array(
        [
            [0.9 * np.cos(theta), -0.9 * np.sin(theta), 0, -40.5],
            [0.9 * np.sin(theta), 0.9 * np.cos(theta), 0, 12.25],
            [0, 0, 3.0, -7.0],
            [0, 0, 0, 1],
        ]
    )
    affines = {}
    for sid in sids:
        for i, ch in enumerate(CHANNELS):
            arr = load_nifti(valdo / sid / f"{sid}_space-T2S_desc-masked_{ch}.nii.gz")[0]
            name = template.format(i=i, ch=ch)
            save_nifti(folder / f"{sid}{name}.nii.gz", np.asarray(arr, np.float32), aff)
        affines[sid] = load_nifti(folder / f"{sid}{template.format(i=0, ch='T2S')}.nii.gz")[1]
    return affines


def test_predict_reads_three_channels_and_keeps_the_affine(three_channel_run, tmp_path):
    from cmbbench.engine.predict import predict_folder
    from cmbbench.engine.predictor import run_predictor
    from cmbbench.io import load_nifti

    base, out, _ = three_channel_run
    sids = ["sub-201", "sub-302"]
    affines = _write_channel_folder(base / "valdo", tmp_path / "images", sids)
    written = predict_folder(out, tmp_path / "images", tmp_path / "pred", device="cpu")
    assert [p.name for p in written] == [f"{s}.nii.gz" for s in sids]
    # the same input, channel for channel, as the dataset's own cases
    predict_one = run_predictor(out, device="cpu", postprocessed=False)
    by_id = {
        c.case_id: c for c in load_dataset("valdo", root=str(base / "valdo"), channels=CHANNELS)
    }
    for p, sid in zip(written, sids, strict=True):
        prob, aff, _ = load_nifti(p)
        np.testing.assert_allclose(aff, affines[sid], atol=1e-6)
        assert prob.shape == by_id[sid].shape and prob.dtype == np.float32
        np.testing.assert_array_equal(prob, predict_one(by_id[sid]).array)
    # channel files named by channel: the same maps through the CLI
    from typer.testing import CliRunner

    from cmbbench.cli import app

    _write_channel_folder(base / "valdo", tmp_path / "named", sids, template="_{ch}")
    res = CliRunner().invoke(
        app,
        ["predict", "--model-dir", str(out), "--data-dir", str(tmp_path / "named"),
         "--out", str(tmp_path / "pred2"), "--device", "cpu", "--channel-suffix", "_{name}",
         "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    for sid in sids:
        a = load_nifti(tmp_path / "pred" / f"{sid}.nii.gz")[0]
        np.testing.assert_array_equal(a, load_nifti(tmp_path / "pred2" / f"{sid}.nii.gz")[0])


def test_predict_bad_channel_files_name_the_case(three_channel_run, tmp_path):
    from cmbbench.engine.predict import predict_folder
    from cmbbench.errors import InputError
    from cmbbench.io import load_nifti, save_nifti

    base, out, _ = three_channel_run
    folder = tmp_path / "images"
    _write_channel_folder(base / "valdo", folder, ["sub-201", "sub-302"])
    (folder / "sub-302_0002.nii.gz").unlink()
    with pytest.raises(InputError, match=r"sub-302.*channel 'T2' missing.*sub-302_0002\.nii\.gz"):
        predict_folder(out, folder, tmp_path / "p1", device="cpu")
    # another shape
    img, aff, _ = load_nifti(folder / "sub-302_0000.nii.gz")
    save_nifti(folder / "sub-302_0002.nii.gz", img[:-1], aff)
    with pytest.raises(InputError, match=r"sub-302.*extra channel T2 shape"):
        predict_folder(out, folder, tmp_path / "p2", device="cpu")
    # another affine
    shifted = aff.copy()
    shifted[0, 3] += 5.0
    save_nifti(folder / "sub-302_0002.nii.gz", img, shifted)
    with pytest.raises(InputError, match=r"sub-302.*extra channel T2 affine differs"):
        predict_folder(out, folder, tmp_path / "p3", device="cpu")
    assert not (tmp_path / "p3").exists()  # nothing written before the inputs are checked


def test_cli_three_channel_cross_validation_on_valdo(tmp_path):
    # as a user types it: the option's value is split into the channel list, two folds run,
    # and the pooled record and every fold record carry the channels in order
    from typer.testing import CliRunner

    from cmbbench.cli import app
    from cmbbench.engine.record import load_run_record

    write_valdo_tree(tmp_path / "valdo", SUBJECTS)
    torch.set_num_threads(1)
    out = tmp_path / "cv"
    args = ["run", "--model", "unet3d_small", "--dataset", "valdo", "--root",
            str(tmp_path / "valdo"), "--preset", "tiny", "--device", "cpu", "--out", str(out),
            "--dataset-option", "channels=T2S,T1,T2", "--folds", "2", "--no-progress"]  # fmt: skip
    for key, value in TINY_RUN.items():
        text = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
        args += ["--set", f"{key}={text}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    pooled = load_run_record(out)
    assert pooled.dataset["channels"] == CHANNELS and pooled.model["in_channels"] == 3
    assert sorted(c.case_id for c in pooled.cases) == sorted(SUBJECTS)
    for i in range(2):
        fold = load_run_record(out / f"fold-{i}")
        assert fold.dataset["channels"] == CHANNELS and fold.model["in_channels"] == 3
