"""`cmbbench run`, `cmbbench predict` and `cmbbench evaluate` (registered on the shared app).

Thin: options are parsed here, everything else is :func:`cmbbench.engine.run.run`,
:func:`cmbbench.engine.predict.predict_folder` and :func:`cmbbench.engine.evaluate.evaluate_run`.
Long phases get rich progress bars with an ETA. Heavy modules (torch) are imported inside the commands, so ``cmbbench --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cmbbench.cli._app import app, console, fail
from cmbbench.cli.progress import rich_progress
from cmbbench.datasets.registry import DEFAULT_DATASET
from cmbbench.engine.environment import configure_openmp
from cmbbench.errors import CmbbenchError
from cmbbench.options import parse_key_values


def _load_plugins(plugins: list[str] | None) -> None:
    from cmbbench.models.registry import load_plugin

    for p in plugins or []:
        load_plugin(p)


# options shared by run / predict / evaluate
ModelDirOpt = Annotated[
    Path, typer.Option("--model-dir", help="A run directory written by `cmbbench run`.")
]
DatasetOpt = Annotated[str, typer.Option(help="Registered dataset name.")]
RootOpt = Annotated[Path | None, typer.Option(help="Dataset folder (datasets that need one).")]
DatasetOptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--dataset-option",
        help="Dataset option KEY=VALUE (repeatable; VALUE is JSON or text, a,b,c is a list), "
        "e.g. preset=tiny, channels=T2S,T1.",
    ),
]
PluginOpt = Annotated[
    list[str] | None,
    typer.Option("--plugin", help="Module or .py file registering models (repeatable)."),
]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="Do not draw progress bars.")]


@app.command("run")
def run_command(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Registered model name (see `cmbbench models`).")
    ],
    dataset: DatasetOpt = DEFAULT_DATASET,
    root: RootOpt = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Recipe preset: tiny | quick (CPU) | full (seed recipe, GPU). Default: full on CUDA, quick on CPU."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto | cpu | cuda (cuda without a GPU is an error).")
    ] = "auto",
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of initialisation, sampling and bootstrap (default 0)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory (default ./runs/<model>-<dataset>-<preset>-s<seed>)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")
    ] = False,
    steps: Annotated[int | None, typer.Option(help="Override: training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override: patches per step.")] = None,
    patch_size: Annotated[
        str | None, typer.Option(help="Override: patch size in voxels, e.g. 32 or 32,32,16.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Override: learning rate.")] = None,
    plugin: PluginOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Recipe override key=value (repeatable), e.g. --set val_every=50."
        ),
    ] = None,
    dataset_option: DatasetOptionOpt = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
    no_progress: NoProgressOpt = False,
    folds: Annotated[
        int | None,
        typer.Option(
            "--folds",
            help="k-fold cross-validation over every case: OUT/fold-<i>/ per fold, the pooled "
            "out-of-fold result in OUT/record.json (split cv<k>).",
        ),
    ] = None,
    fold: Annotated[
        int | None,
        typer.Option("--fold", help="With --folds: run only this fold (parallel jobs)."),
    ] = None,
    split_file: Annotated[
        Path | None,
        typer.Option("--split-file", help="With --folds: a fold file (fold-0, fold-1, ...)."),
    ] = None,
    cv_splits: Annotated[
        str | None,
        typer.Option(
            "--cv-splits",
            help="With --folds: cross-validate over these splits only, e.g. train,val "
            "(default: every case).",
        ),
    ] = None,
) -> None:
    """Train MODEL on a dataset, tune post-processing on val, score the test split, write a run record."""
    configure_openmp()
    try:
        _load_plugins(plugin)
        overrides: dict[str, Any] = parse_key_values(set_, what="--set")
        for key, value in (
            ("steps", steps),
            ("batch_size", batch_size),
            ("patch_size", patch_size),
            ("lr", lr),
        ):
            if value is not None:
                overrides[key] = value
        options = parse_key_values(dataset_option, what="--dataset-option")
        from cmbbench.engine.run import run

        if folds is None and (fold is not None or split_file is not None or cv_splits):
            raise fail("--fold, --split-file and --cv-splits go with --folds K (cross-validation)")
        # under torchrun only rank 0 draws and prints
        main_rank = os.environ.get("RANK", "0") == "0"
        common: dict[str, Any] = {
            "root": None if root is None else str(root),
            "preset": preset,
            "device": device,
            "seed": seed,
            "resume": resume,
            "overrides": overrides,
            "dataset_options": options or None,
            "n_bootstrap": bootstrap,
        }
        shown = out
        with rich_progress(main_rank and not no_progress) as progress:
            if folds is None:
                record = run(model, dataset, out=out, progress=progress, **common)
            else:
                from cmbbench.engine.cv import run_cv
                from cmbbench.engine.run import default_run_dir

                base = default_run_dir(model, dataset, preset or "auto", seed or 0)
                out = out or Path(f"{base}-cv{folds}")
                shown = out if fold is None else out / f"fold-{fold}"
                record = run_cv(
                    model, dataset, folds=folds, fold=fold, out=out, split_file=split_file,
                    pool=[s.strip() for s in cv_splits.split(",")] if cv_splits else None,
                    progress=progress, **common,
                )  # fmt: skip
    except CmbbenchError as err:
        raise fail(str(err)) from None
    if main_rank:
        _print_record(record, shown)


def _print_record(record, out: Path | None) -> None:
    """The headline metrics with CIs, timings, overrides, and where the record and the
    training logs are."""
    from rich.table import Table

    from cmbbench.engine.run import default_run_dir
    from cmbbench.scoring.summary import summary_rows

    run_dir = (
        Path(out)
        if out is not None
        else default_run_dir(
            record.model["name"], record.dataset["name"], record.recipe_preset or "", record.seed
        )
    )
    title = (
        f"{record.model['name']} on {record.dataset['name']} v{record.dataset['version']} "
        f"(test split, rule {record.rule}, preset {record.recipe_preset}, seed {record.seed})"
    )
    table = Table(title=title, show_lines=False)
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    for label, value in summary_rows(record.metrics):
        table.add_row(label, value)
    console.print(table)
    pp = record.postprocess
    if pp.get("threshold") is not None:
        console.print(
            f"post-processing (tuned on val): threshold {pp.get('threshold')}, "
            f"min size {pp.get('min_size')} voxels"
        )
    t = record.timings
    if t.get("train_seconds") is not None:
        line = f"training {t['train_seconds']:.0f} s"
        if t.get("seconds_per_step"):
            line += f" ({t['seconds_per_step']:.3f} s/step)"
        if t.get("inference_seconds_per_case") is not None:
            line += f", inference {t['inference_seconds_per_case']:.1f} s/case"
        if t.get("total_seconds") is not None:
            line += f", total {t['total_seconds']:.0f} s"
        console.print(line)
    if record.recipe_overridden:
        console.print(
            "recipe overrides: "
            + ", ".join(
                f"{k}={record.recipe[k]!r} ({src})"
                for k, src in sorted(record.recipe_overridden.items())
            )
        )
    art = record.artifacts
    logs = [run_dir / art[k] for k in ("train_log", "validation_log") if art.get(k)]
    if logs:
        console.print(
            "training logs (CSV): " + ", ".join(f"[bold]{p}[/]" for p in logs), soft_wrap=True
        )
    if art.get("training_plot"):
        console.print(f"training curves: [bold]{run_dir / art['training_plot']}[/]", soft_wrap=True)
    if art.get("tensorboard_dir"):
        console.print(
            f"tensorboard --logdir [bold]{run_dir / art['tensorboard_dir']}[/]", soft_wrap=True
        )
    console.print(f"run record written to [bold]{run_dir / 'record.json'}[/]")


@app.command("predict")
def predict_command(
    model_dir: ModelDirOpt,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Folder of NIfTI images to predict.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the probability maps (NIfTI).")],
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    postprocessed: Annotated[
        bool,
        typer.Option(
            "--postprocessed",
            help="Zero voxels outside the components kept by the run's tuned post-processing.",
        ),
    ] = False,
    channel_suffix: Annotated[
        str,
        typer.Option(
            "--channel-suffix",
            help="Multi-channel runs: file-name suffix of channel {index} (0 = main) named "
            "{name}, in the run's recorded channel order; default nnU-Net's <case>_0000.nii.gz, "
            "<case>_0001.nii.gz, ... ('_{name}' reads <case>_T2S.nii.gz, <case>_T1.nii.gz).",
        ),
    ] = "_{index:04d}",
    plugin: PluginOpt = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Write CMB probability maps (NIfTI, each input's own affine) for a folder of images."""
    configure_openmp()
    try:
        _load_plugins(plugin)
        from cmbbench.engine.predict import predict_folder

        with rich_progress(not no_progress) as progress:
            written = predict_folder(
                model_dir,
                data_dir,
                out,
                device=device,
                output="postprocessed" if postprocessed else "prob",
                progress=progress,
                channel_suffix=channel_suffix,
            )
    except CmbbenchError as err:
        raise fail(str(err)) from None
    console.print(f"wrote {len(written)} probability maps to [bold]{out}[/]")


@app.command("evaluate")
def evaluate_command(
    model_dir: Annotated[
        list[Path],
        typer.Option("--model-dir", help="A run directory written by `cmbbench run` (repeatable)."),
    ],
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            help="Registered dataset name, optionally with its own options NAME:K=V,K=V "
            "(repeatable: one result per target, e.g. synthetic:protocol=swi_3t_094x094x175).",
        ),
    ] = None,
    root: Annotated[
        list[str] | None,
        typer.Option(
            "--root",
            help="Dataset folder; with several datasets NAME=DIR (repeatable), e.g. valdo=/data/V.",
        ),
    ] = None,
    split: Annotated[
        str, typer.Option(help="train | val | test | all (every case of the dataset).")
    ] = "test",
    dataset_option: DatasetOptionOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write cases + metrics as JSON here (one pair).")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            help="Several runs or datasets: one JSON per (run, dataset) and the cross-dataset "
            "matrix (matrix.md, matrix.csv) here.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    plugin: PluginOpt = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
    no_progress: NoProgressOpt = False,
) -> None:
    """Score finished runs' models (weights and tuned post-processing) on other datasets or splits."""
    configure_openmp()
    try:
        targets = [_target(d) for d in (dataset or [DEFAULT_DATASET])]
    except CmbbenchError as err:
        raise fail(str(err)) from None
    datasets = sorted({name for name, _, _ in targets})
    pairs = [(m, t) for m in model_dir for t in targets]
    try:
        _load_plugins(plugin)
        from cmbbench.engine.evaluate import evaluate_run
        from cmbbench.scoring.records import save_results

        if split not in ("train", "val", "test", "all"):
            raise fail(f"--split: expected train, val, test or all; received {split!r}")
        if len(pairs) > 1 and out_dir is None:
            raise fail(
                f"{len(model_dir)} run(s) x {len(targets)} dataset(s): pass --out-dir for one "
                "result per pair and the matrix (--out holds one result)"
            )
        if out is not None and len(pairs) > 1:
            raise fail("--out holds one result; with several runs or datasets use --out-dir")
        roots = _roots(root, datasets)
        options = parse_key_values(dataset_option, what="--dataset-option")
        done = []
        for run_dir, (name, target_options, slug) in pairs:
            with rich_progress(not no_progress) as progress:
                report = evaluate_run(
                    run_dir,
                    name,
                    root=roots.get(name),
                    split=None if split == "all" else split,
                    dataset_options={**options, **target_options} or None,
                    device=device,
                    n_bootstrap=bootstrap,
                    progress=progress,
                )
            path = out
            if out_dir is not None:
                path = out_dir / f"{run_dir.name}__{slug}-{split}.json"
            if path is not None:
                save_results(report, path)
            done.append((report, path, run_dir, slug))
        matrix_files = _write_matrix(done, out_dir) if out_dir is not None else []
    except CmbbenchError as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write {out or out_dir}: {err.strerror or err}") from None
    from cmbbench.cli.score import print_report

    for report, path, run_dir, name in done:
        print_report(
            report,
            f"{report.info['model']} ({run_dir.name}) on {name}, split {split} "
            f"({len(report.cases)} cases, rule {report.rule})",
        )
        if path is not None:
            console.print(f"results written to [bold]{path}[/]")
    for f in matrix_files:
        console.print(f"cross-dataset matrix written to [bold]{f}[/]")


def _target(spec: str) -> tuple[str, dict, str]:
    """``NAME[:K=V,K=V]`` -> (dataset name, its own options, a file-name slug)."""
    name, _, rest = spec.partition(":")
    if not name:
        raise fail(f"--dataset {spec!r}: expected NAME or NAME:K=V,K=V")
    items: list[str] = []
    for token in (t for t in rest.split(",") if t):  # a token without "=" continues a list value
        if "=" in token or not items:
            items.append(token)
        else:
            items[-1] += "," + token
    opts = parse_key_values(items, what=f"--dataset {name}")
    raw = sorted(item.partition("=")[::2] for item in items)
    slug = name + "".join(f"-{k.strip()}-{v.replace(',', '_')}" for k, v in raw)
    return name, opts, "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in slug)


def _roots(items: list[str] | None, datasets: list[str]) -> dict[str, str]:
    """``--root`` values per dataset: a plain path for the only dataset, else NAME=DIR."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if sep and name in datasets:
            out[name] = path
        elif len(datasets) == 1 and not sep:
            out[datasets[0]] = item
        else:
            raise fail(
                f"--root {item!r}: with several datasets give NAME=DIR for one of "
                f"{', '.join(datasets)}"
            )
    return out


def _write_matrix(done: list, out_dir: Path) -> list[Path]:
    from cmbbench.leaderboard.build import write_cross_dataset

    return write_cross_dataset([path for _, path, _, _ in done], out_dir, name="matrix")
