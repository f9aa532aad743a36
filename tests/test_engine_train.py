"""The trainer overfits one tiny case: the loss falls and the CMBs are found."""

from __future__ import annotations

import torch
from _engine_helpers import TinyNet, cube_case, standardize

from cmbbench.engine.evaluate import predict_probability, score_probability
from cmbbench.engine.patches import PatchSampler, prepare_volumes
from cmbbench.engine.recipe import resolve_recipe
from cmbbench.engine.trainer import train


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
        res = score_probability(prob, case, rule="overlap", rule_params={}, threshold=0.5)
        return {"f1": res.f1, "tp": res.tp, "fp": res.fp, "fn": res.fn}

    result = train(net, sampler, recipe, out_dir=tmp_path, device=device, validate=validate)
    first, last = result.losses[:10], result.losses[-10:]
    assert sum(last) / 10 < 0.5 * sum(first) / 10, (first, last)
    final = result.validations[-1]
    # both cubes found, as one component each, and nothing else
    assert (final["tp"], final["fn"], final["fp"]) == (2, 0, 0), final
    assert result.best_metric == 1.0 and result.best_checkpoint.is_file()
