"""``cmbbench evaluate``: score a finished run's model on any split of any dataset.

:func:`evaluate_run` predicts each case exactly as the run predicted its own test split (the
same weights, recipe and tuned post-processing, or the detector's fitted settings:
:func:`cmbbench.engine.predictor.run_predictor`) and scores it with the target dataset's
evaluator: how a model trained on one set does on another (more subjects of the synthetic
set, or real data such as VALDO). Validation during training is
:mod:`cmbbench.engine.validation`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cmbbench import __version__
from cmbbench.engine.record import load_run_record
from cmbbench.errors import CmbbenchError
from cmbbench.progress import ProgressFn
from cmbbench.scoring.records import ScoreReport


def evaluate_run(
    model_dir: str | os.PathLike[str],
    dataset: str,
    *,
    root: str | os.PathLike[str] | None = None,
    split: str | None = "test",
    dataset_options: dict[str, Any] | None = None,
    device: str = "auto",
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> ScoreReport:
    """Score the model of a finished run on ``split`` of ``dataset`` (``None``: every case).

    Each case is predicted exactly as the run predicted its own test split (same weights,
    recipe, tuned post-processing, or the detector's fitted settings) and scored with the
    dataset's default rule, ignore regions and label kind; the report (per-case results and
    aggregate metrics with ``n_bootstrap`` case-bootstrap CIs, seed ``seed``) can be saved
    with :func:`cmbbench.scoring.records.save_results` and compared with ``cmbbench compare``.
    ``dataset_options`` go to ``load_dataset``; on the run's own dataset they start from the
    options (and root) the run was trained with, so ``{"seed": 1, "n": 40}`` gives 40
    synthetic subjects of the run's preset that it never saw.
    """
    from cmbbench.datasets.registry import dataset_info, load_dataset
    from cmbbench.engine.distributed import DistContext
    from cmbbench.engine.environment import configure_openmp, resolve_device
    from cmbbench.engine.predictor import predict_and_score, run_predictor
    from cmbbench.scoring.metrics import aggregate

    configure_openmp()
    run_dir = Path(model_dir)
    record = load_run_record(run_dir)
    info = dataset_info(dataset)
    predict_one = run_predictor(run_dir, device=device, postprocessed=True, record=record)
    root_s = None if root is None else str(root)
    options = dict(dataset_options or {})
    trained_on = record.dataset or {}
    if trained_on.get("name") == dataset:  # the run's own dataset: its options, then the user's
        options = {**dict(trained_on.get("options") or {}), **options}
        # a run made on an older version of a versioned dataset (synthetic v1.1) is evaluated
        # on that version unless the user asks for another one
        if trained_on.get("version") not in (None, info.version) and "version" not in options:
            options["version"] = trained_on["version"]
        if root_s is None and trained_on.get("root"):
            root_s = str(trained_on["root"])
    # cases not generated or cached yet are prepared on load: show it
    target = load_dataset(dataset, root=root_s, split=split, progress=progress or False, **options)
    cases = list(target)
    if not cases:
        raise CmbbenchError(f"dataset {dataset!r}: split {split!r} holds no case")
    evaluator = info.evaluator
    scored = predict_and_score(
        predict_one, cases, evaluator, ctx=DistContext(device=resolve_device(device)),
        progress=progress,
    )  # fmt: skip
    results = scored.results
    infer_s = scored.inference_seconds
    return ScoreReport(
        cases=results,
        metrics=aggregate(results, n_bootstrap=n_bootstrap, seed=seed),
        rule=evaluator.rule,
        params=dict(results[0].params),
        info={
            "run": run_dir.name,
            "model": record.model.get("name"),
            "trained_on": record.dataset,
            "dataset": {
                "name": info.name,
                "version": target.version,
                "split": split,
                "options": options,
                "cohorts": sorted({str(c.meta.get("cohort", "")) for c in cases} - {""}),
                "root": root_s,
                "n_cases": len(cases),
            },
            "postprocess": record.postprocess,
            "inference_seconds_per_case": infer_s / len(cases),
        },
        cmbbench_version=__version__,
    )
