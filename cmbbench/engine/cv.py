"""k-fold cross-validation: every case predicted once by a model that never saw it.

:func:`run_cv` is ``cmbbench run --folds K``: the dataset's cases are split into ``K``
stratified folds (cohort × CMB-count bin; :func:`cmbbench.datasets.folds.make_folds`), saved
as ``OUT/folds.json`` (reusable with ``--split-file``; a split file with ``fold-*`` splits is
used as it is). Fold ``i`` trains on the other folds minus a validation cut, tunes its
post-processing on that cut, predicts fold ``i`` and writes ``OUT/fold-<i>/record.json``
(an ordinary run record whose test split is the fold). The pooled out-of-fold results are
scored as one result: ``OUT/record.json``, split ``cv<K>``, which the leaderboard ranks like
any row (never in the same table as held-out-test rows: the split differs).

Folds run in sequence, or in parallel as separate ``--fold I`` processes sharing ``OUT``;
rerunning ``--folds K`` then reuses the finished folds (a fold record whose cases are the
fold's and whose model and seed match), trains the missing ones and writes the pooled
record.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cmbbench import __version__
from cmbbench.datasets.folds import fold_name, fold_splits, folds_of, make_folds
from cmbbench.engine.record import RECORD_NAME, RunRecord, load_run_record
from cmbbench.errors import CmbbenchError, InputError
from cmbbench.progress import ProgressFn

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.json"


def cv_split_name(k: int) -> str:
    """The split name of a pooled k-fold record: ``cv<k>``."""
    return f"cv{int(k)}"


def fold_split_name(k: int, i: int) -> str:
    """The split name of fold ``i``'s own record: ``cv<k>-fold-<i>``."""
    return f"{cv_split_name(k)}-{fold_name(i)}"


def is_fold_split(split: str) -> bool:
    """Whether a record's split is one fold of a cross-validation (not a table's rows)."""
    return split.startswith("cv") and "-fold-" in split


def run_cv(
    model: str,
    dataset: str,
    *,
    folds: int,
    fold: int | None = None,
    out: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    split_file: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    device: str = "auto",
    seed: int | None = None,
    resume: bool = False,
    overrides: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    pool: Sequence[str] | None = None,
) -> RunRecord:
    """Cross-validate ``model`` on every case of ``dataset`` with ``folds`` folds (see the
    module docstring). ``fold``: run only that fold (returns its record; the pooled record is
    written by a later call without ``fold`` once every fold is done). ``pool``: cross-
    validate over the cases of these splits only (e.g. ``("train", "val")``, keeping the
    dataset's test split out of every fold); default every case. Other arguments as
    :func:`cmbbench.engine.run.run`. Returns the pooled record (``OUT/record.json``)."""
    from cmbbench.datasets.registry import options_for_recipe, prepare_dataset
    from cmbbench.engine.channels import channel_names
    from cmbbench.engine.distributed import shutdown
    from cmbbench.engine.environment import configure_openmp
    from cmbbench.engine.run import build_for_run, check_writable, fit_and_score, setup_run

    configure_openmp()
    t_start = time.perf_counter()
    out_dir = Path(out)
    setup = setup_run(model, dataset, preset, device, seed, overrides, model_kwargs, n_bootstrap)
    if setup.ctx.is_main:
        check_writable(out_dir)
    root_s = None if root is None else str(root)
    options = options_for_recipe(dataset, setup.preset, dataset_options)
    options.pop("split_file", None)
    channels = channel_names(options)
    if channels is not None:  # a model that cannot take them fails before any fold starts
        from cmbbench.models.registry import check_in_channels

        check_in_channels(model, len(channels), channels)
    t0 = time.perf_counter()
    if setup.ctx.is_main:
        prepare_dataset(dataset, root=root_s, progress=progress, **options)
    everything = _pooled_cases(dataset, root_s, options, pool)
    if len(everything) == 0:
        raise CmbbenchError(f"dataset {dataset!r} holds no case")
    load_s = time.perf_counter() - t0
    strata = _strata(everything)
    if split_file is None and everything.info.official_folds is not None:
        official = everything.info.official_folds(root_s, folds)
        if official is not None:  # the dataset's own folds win over made ones
            split_file = _save_official(out_dir, official)
    fold_lists = _folds(out_dir, everything, strata, folds, split_file, setup.seed)
    k = len(fold_lists)
    wanted = range(k) if fold is None else [int(fold)]
    if fold is not None and not 0 <= int(fold) < k:
        raise InputError(f"--fold {fold}: there are {k} folds (0-{k - 1})")
    records: dict[int, RunRecord] = {}
    for i in wanted:
        fold_dir = out_dir / fold_name(i)
        splits = fold_splits(fold_lists, i, strata, seed=setup.seed)
        done = _finished_fold(fold_dir, model, setup.seed, splits["test"])
        if done is not None:
            log.info("fold %d: finished record in %s reused", i, fold_dir)
            records[i] = done
            continue
        data = _fold_data(everything, splits, options, root_s, i, k, load_s)
        built, recipe, sources = build_for_run(setup, channels)
        t_fold = time.perf_counter()
        resume_fold = resume or (fold_dir / "checkpoints" / "last.pt").exists()
        rec = fit_and_score(
            setup, built, recipe, sources, data, fold_dir, resume_fold, progress, t_fold
        )
        if rec is not None:
            records[i] = load_run_record(fold_dir)
    shutdown(setup.ctx)
    if fold is not None:
        return load_run_record(out_dir / fold_name(int(fold)))
    pooled = pool_folds(
        [records[i] for i in range(k)],
        k=k,
        out_dir=out_dir,
        pool=pool,
        n_bootstrap=setup.n_bootstrap,
        t_start=t_start,
    )
    return load_run_record(pooled)


def _pooled_cases(
    dataset: str, root: str | None, options: dict[str, Any], pool: Sequence[str] | None
) -> Any:
    """Every case of ``dataset``, or those of the ``pool`` splits (in split order)."""
    from cmbbench.datasets.registry import Dataset, load_dataset

    if not pool:
        return load_dataset(dataset, root=root, split=None, progress=False, **options)
    parts = [load_dataset(dataset, root=root, split=s, progress=False, **options) for s in pool]
    cases, seen = [], set()
    for part in parts:
        for c in part:
            if c.case_id not in seen:
                seen.add(c.case_id)
                cases.append(c)
    return Dataset(parts[0].info, cases, split="+".join(pool), options=parts[0].options)


def _strata(cases: Any) -> dict[str, str]:
    """``{case id: "<cohort|protocol>|<CMB-count bin>"}``, the folds' stratification."""
    from cmbbench.datasets.common import count_strata

    labels = count_strata(list(cases))
    return {c.case_id: str(s) for c, s in zip(cases, labels, strict=True)}


def _folds(
    out_dir: Path,
    cases: Any,
    strata: dict[str, str],
    k: int,
    split_file: str | os.PathLike[str] | None,
    seed: int,
) -> list[list[str]]:
    """The folds: from ``split_file`` when given, else made; saved as ``OUT/folds.json``
    (an existing one must hold the same folds: a rerun never silently refolds)."""
    from cmbbench.datasets.splits import load_split_file, save_split_file

    ids = [c.case_id for c in cases]
    if split_file is not None:
        fold_lists = folds_of(load_split_file(split_file))
        if len(fold_lists) != k:
            raise InputError(
                f"--folds {k}, but the fold file defines {len(fold_lists)} folds",
                path=str(split_file),
            )
        listed = [c for f in fold_lists for c in f]
        missing = sorted(set(ids) - set(listed))
        unknown = sorted(set(listed) - set(ids))
        if missing or unknown:
            raise InputError(
                f"the fold file must hold every case exactly once: {len(missing)} case(s) "
                f"missing ({', '.join(missing[:5])}), {len(unknown)} not in the dataset "
                f"({', '.join(unknown[:5])})",
                path=str(split_file),
            )
    else:
        split_def = make_folds(ids, [strata[c] for c in ids], k=k, seed=seed)
        fold_lists = folds_of(split_def)
    path = out_dir / FOLDS_FILE
    split_def = {fold_name(i): f for i, f in enumerate(fold_lists)}
    if path.exists():
        stored = folds_of(load_split_file(path))
        if [sorted(f) for f in stored] != [sorted(f) for f in fold_lists]:
            raise InputError(
                "this folder already holds other folds; pass them with --split-file or use "
                "another --out",
                path=str(path),
            )
    else:
        save_split_file(split_def, path, meta={"k": k, "seed": seed, "strata": "cohort|count bin"})
    return fold_lists


def _save_official(out_dir: Path, split_def: dict[str, list[str]]) -> Path:
    """The dataset's official folds as a fold file beside the run (checked like any)."""
    from cmbbench.datasets.splits import save_split_file

    return save_split_file(split_def, out_dir / "official-folds.json", meta={"source": "dataset"})


def _finished_fold(fold_dir: Path, model: str, seed: int, test_ids: list[str]) -> RunRecord | None:
    """The fold's finished record when it is this model's, this seed's and holds exactly
    the fold's cases; ``None`` when the fold is still to run."""
    if not (fold_dir / RECORD_NAME).exists():
        return None
    rec = load_run_record(fold_dir)
    same = (
        rec.model.get("name") == model
        and rec.seed == seed
        and sorted(c.case_id for c in rec.cases) == sorted(test_ids)
    )
    if not same:
        raise InputError(
            f"holds a record of another run (model {rec.model.get('name')!r}, seed {rec.seed}, "
            f"{len(rec.cases)} cases) than this fold's; remove it or use another --out",
            path=str(fold_dir / RECORD_NAME),
        )
    return rec


def _fold_data(
    everything: Any,
    splits: dict[str, list[str]],
    options: dict[str, Any],
    root: str | None,
    i: int,
    k: int,
    load_s: float,
) -> Any:
    """The :class:`~cmbbench.engine.stages.RunData` of fold ``i`` (subsets of every case)."""
    from cmbbench.datasets.registry import Dataset
    from cmbbench.engine.stages import RunData

    by_id = {c.case_id: c for c in everything}
    parts = {
        name: Dataset(
            everything.info,
            [by_id[c] for c in ids],
            split=f"{fold_name(i)}-{name}",
            options=everything.options,
        )
        for name, ids in splits.items()
    }
    return RunData(
        everything.info,
        root,
        dict(options),
        parts["train"],
        parts["val"],
        parts["test"],
        seconds=load_s,
        split=fold_split_name(k, i),
    )


def pool_folds(
    records: list[RunRecord],
    *,
    k: int,
    out_dir: Path,
    n_bootstrap: int = 1000,
    t_start: float | None = None,
    pool: Sequence[str] | None = None,
) -> Path:
    """Score the folds' out-of-fold test cases as one result and write ``OUT/record.json``
    (split ``cv<k>``; the per-fold training, post-processing and timings kept per fold)."""
    from cmbbench.engine.run import save_record
    from cmbbench.scoring.metrics import aggregate

    if len(records) != k:
        raise CmbbenchError(f"pooling needs all {k} folds; {len(records)} are done")
    first = records[0]
    cases = [c for r in records for c in r.cases]
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise CmbbenchError("a case was predicted by more than one fold")
    metrics = aggregate(cases, n_bootstrap=n_bootstrap, seed=first.seed)
    dataset = dict(first.dataset)
    dataset.update(
        split=cv_split_name(k),
        n_cases=len(cases),
        folds=k,
        fold_sizes=[len(r.cases) for r in records],
        cv_over=list(pool) if pool else "all cases",
    )
    for key in ("n_train", "n_val", "n_test"):
        dataset.pop(key, None)
    total = sum(float(r.timings.get("total_seconds") or 0.0) for r in records)
    pooled = RunRecord(
        run_id=out_dir.name,
        model=dict(first.model),
        recipe=dict(first.recipe),
        recipe_preset=first.recipe_preset,
        recipe_sources=dict(first.recipe_sources),
        dataset=dataset,
        seed=first.seed,
        rule=first.rule,
        params=dict(metrics["params"]),  # a threshold that differs between folds: None
        postprocess={
            "per_fold": [r.postprocess for r in records],
            "tuned_on": "each fold's val cut",
        },
        training={"per_fold": [_training_summary(r) for r in records]},
        cases=sorted(cases, key=lambda c: c.case_id),
        metrics=metrics,
        environment=dict(first.environment),
        timings={
            "folds_total_seconds": total,
            "inference_seconds_per_case": _mean(
                r.timings.get("inference_seconds_per_case") for r in records
            ),
            "seconds_per_step": _mean(r.timings.get("seconds_per_step") for r in records),
            "train_seconds": sum(float(r.timings.get("train_seconds") or 0.0) for r in records),
            # every fold's whole run, plus this call's loading and pooling: the same total
            # whether the folds ran in this call, as parallel jobs or in an earlier one
            "total_seconds": total
            + (time.perf_counter() - t_start if t_start is not None else 0.0),
        },
        artifacts={
            "folds": FOLDS_FILE,
            "fold_records": [f"{fold_name(i)}/{RECORD_NAME}" for i in range(k)],
        },
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        cmbbench_version=__version__,
    )
    return save_record(pooled, out_dir / RECORD_NAME)


def _training_summary(r: RunRecord) -> dict[str, Any]:
    t = r.training
    keep = (
        "steps",
        "best_step",
        "best_val_f1",
        "fit_seconds",
        "skipped_steps",
        "fp32_retried_steps",
        "fitted",
    )
    return {
        "fold_record": f"{r.run_id}/{RECORD_NAME}",
        "n_train": r.dataset.get("n_train"),
        "n_val": r.dataset.get("n_val"),
        **{key: t[key] for key in keep if key in t},
    }


def _mean(values: Any) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None
