"""One KEY=VALUE parser for run, evaluate and data; the run's seed is set once."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cmbbench.cli import app
from cmbbench.errors import CmbbenchError


def test_run_parses_dataset_options_and_recipe_overrides_like_data_info(monkeypatch):
    import cmbbench.engine.run as engine_run

    seen: dict = {}

    def fake_run(model, dataset, **kwargs):
        seen.update(kwargs, model=model, dataset=dataset)
        raise CmbbenchError("stop here")  # the command reports it and exits 1

    monkeypatch.setattr(engine_run, "run", fake_run)
    r = CliRunner().invoke(
        app,
        [
            "run", "--model", "unet3d", "--dataset", "valdo",
            "--dataset-option", "channels=T2S,T1", "--dataset-option", "n=40",
            "--set", "lr=1e-3", "--set", "patch_size=32,32,16", "--set", "val-every=50",
        ],
    )  # fmt: skip
    assert r.exit_code == 1 and "stop here" in r.output
    # `data info -o channels=T2S,T1` reads the same: a list of names, JSON numbers as numbers
    assert seen["dataset_options"] == {"channels": ["T2S", "T1"], "n": 40}
    assert seen["overrides"] == {"lr": 0.001, "patch_size": ["32", "32", "16"], "val_every": 50}
    assert seen["seed"] is None  # not given: run() decides (0, or --set seed)
    r = CliRunner().invoke(app, ["run", "--model", "unet3d", "--set", "lr"])
    assert r.exit_code == 1 and "--set expects KEY=VALUE" in r.output


def test_set_seed_is_the_runs_seed_and_two_different_seeds_are_an_error():
    from cmbbench.engine.run import _run_seed, run

    overrides = {"seed": "3", "lr": 1e-3}
    assert _run_seed(None, overrides) == 3 and overrides == {"lr": 1e-3}
    assert _run_seed(3, {"seed": 3}) == 3
    assert _run_seed(None, {}) == 0 and _run_seed(5, {}) == 5
    with pytest.raises(CmbbenchError, match="two seeds given"):
        run("unet3d", seed=2, overrides={"seed": 3})
    with pytest.raises(CmbbenchError, match="integer"):
        _run_seed(None, {"seed": "one"})
