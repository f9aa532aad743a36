"""`cmbbench sweep` (registered on the shared app): every (model, seed), each one `cmbbench run`.

Thin: the grid is checked and run by :mod:`cmbbench.sweep` (a local pool of subprocesses,
or Slurm through submitit); this module parses the options, draws the progress and prints
the table of jobs and the `cmbbench leaderboard` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cmbbench.cli._app import app, console, fail
from cmbbench.cli.progress import rich_progress
from cmbbench.cli.run import DatasetOptionOpt, NoProgressOpt, PluginOpt, RootOpt
from cmbbench.datasets.registry import DEFAULT_DATASET
from cmbbench.errors import CmbbenchError


def _names(text: str, what: str) -> tuple[str, ...]:
    """``"a, b" -> ("a", "b")``; an empty list is an error naming the option."""
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise fail(f"{what}: the list is empty (expected e.g. {what} a,b)")
    return items


def _seeds(text: str) -> tuple[int, ...]:
    out = []
    for item in _names(text, "--seeds"):
        try:
            out.append(int(item))
        except ValueError:
            raise fail(
                f"--seeds: {escape(repr(item))} is not an integer (expected e.g. --seeds 0,1,2)"
            ) from None
    return tuple(out)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (the error, usually); empty when unreadable."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "")


def _print_outcome(result, out: Path) -> None:
    """The table of jobs, the failed ones with their logs, and the leaderboard command."""
    from rich.table import Table

    table = Table(title=f"sweep {out}", show_lines=False)
    for col, justify in (("model", "left"), ("seed", "right"), ("status", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("seconds", justify="right")
    table.add_column("test F1", justify="right")
    style = {"kept": "cyan", "ran": "green", "failed": "bold red"}
    for r in result.results:
        status = r.status + (" (resumed)" if r.resumed else "")
        table.add_row(
            r.job.model,
            str(r.job.seed),
            f"[{style[r.status]}]{status}[/]",
            "" if r.seconds is None else f"{r.seconds:.0f}",
            "" if r.test_f1 is None else f"{r.test_f1:.3f}",
        )
    console.print(table)
    for r in result.failed:
        console.print(
            f"[bold red]failed[/] {escape(r.job.name)} ({escape(r.reason)}): "
            f"log [bold]{escape(str(r.job.log_path))}[/]",
            soft_wrap=True,
            highlight=False,
        )
        last = _last_line(r.job.log_path)
        if last:
            console.print(f"    {last}", soft_wrap=True, highlight=False, markup=False)
    n_records = sum(r.status != "failed" for r in result.results)
    if n_records:
        console.print("build the leaderboard with:")
        console.print(f"  cmbbench leaderboard {out} --out {out / 'leaderboard'}", highlight=False)
    if result.failed:
        console.print(
            f"{len(result.failed)} of {len(result.results)} runs failed; the finished ones are "
            "kept: rerun the same command to retry only the failed ones",
            highlight=False,
        )


@app.command("sweep")
def sweep_command(
    models: Annotated[
        str, typer.Option("--models", help="Comma-separated model names, e.g. unet3d,smp_unet_r18.")
    ],
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds, e.g. 0,1,2.")],
    out: Annotated[
        Path, typer.Option("--out", help="Sweep folder: one run directory <model>-s<seed> per job.")
    ],
    preset: Annotated[
        str | None,
        typer.Option(help="Recipe preset of every run: tiny | quick | full (default: run's)."),
    ] = None,
    dataset: Annotated[str, typer.Option(help="Registered dataset name.")] = DEFAULT_DATASET,
    root: RootOpt = None,
    dataset_option: DatasetOptionOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Recipe override key=value for every run (repeatable)."),
    ] = None,
    plugin: PluginOpt = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda, for every run.")] = "auto",
    bootstrap: Annotated[
        int | None, typer.Option(help="Bootstrap resamples for the CIs (default: run's).")
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            "--folds", help="Every job a k-fold cross-validation (cmbbench run --folds K)."
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", help="Runs at once on this machine (default 1)."),
    ] = None,
    slurm: Annotated[
        str | None,
        typer.Option(
            "--slurm",
            metavar="PARTITION",
            help='Submit each run as a Slurm job to PARTITION (needs pip install "cmbbench[slurm]").',
        ),
    ] = None,
    slurm_time: Annotated[
        int | None, typer.Option("--slurm-time", help="Slurm time limit per run, minutes (120).")
    ] = None,
    slurm_gpus: Annotated[
        int | None, typer.Option("--slurm-gpus", help="GPUs per Slurm job (1).")
    ] = None,
    slurm_cpus: Annotated[
        int | None, typer.Option("--slurm-cpus", help="CPUs per Slurm job (6).")
    ] = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Run every (model, seed) as its own `cmbbench run`: a local pool or Slurm jobs.

    Resumable: a run whose record.json is already there is kept, an interrupted one resumes
    from its last checkpoint, a failed one is listed with its log and retried on rerun.
    """
    from cmbbench.sweep import (
        SlurmOptions,
        SweepConfig,
        plan_sweep,
        require_submitit,
        run_local,
        run_slurm,
    )

    if jobs is not None and slurm is not None:
        raise fail("--jobs and --slurm exclude each other: a sweep runs locally or on Slurm")
    if jobs is not None and jobs < 1:
        raise fail(f"--jobs must be at least 1, got {jobs}")
    slurm_extras = {
        "--slurm-time": slurm_time,
        "--slurm-gpus": slurm_gpus,
        "--slurm-cpus": slurm_cpus,
    }
    if slurm is None and any(v is not None for v in slurm_extras.values()):
        given = ", ".join(k for k, v in slurm_extras.items() if v is not None)
        raise fail(f"{given} only apply with --slurm PARTITION")
    for flag, value, least in (("--slurm-time", slurm_time, 1), ("--slurm-gpus", slurm_gpus, 0),
                               ("--slurm-cpus", slurm_cpus, 1)):  # fmt: skip
        if value is not None and value < least:
            raise fail(f"{flag} must be at least {least}, got {value}")
    config = SweepConfig(
        models=_names(models, "--models"),
        seeds=_seeds(seeds),
        out=out,
        dataset=dataset,
        root=root,
        preset=preset,
        device=device,
        dataset_options=tuple(dataset_option or ()),
        overrides=tuple(set_ or ()),
        plugins=tuple(plugin or ()),
        bootstrap=bootstrap,
        folds=folds,
    )
    try:
        if slurm is not None:
            require_submitit()  # before anything else: the extra missing is the first thing to say
        planned = plan_sweep(config)
        n_kept = sum(j.kept is not None for j in planned)
        where = f"Slurm partition {slurm}" if slurm else f"{jobs or 1} local worker(s)"
        console.print(
            f"sweep: {len(planned)} runs ({len(config.models)} models x {len(config.seeds)} "
            f"seeds) in {out}: {n_kept} kept, {len(planned) - n_kept} to run on {where}",
            highlight=False,
        )
        for job in planned:
            if job.kept is not None:
                console.print(
                    f"  kept {job.name}: {job.run_dir / 'record.json'} is a finished run",
                    highlight=False,
                )
            elif job.resume:
                console.print(f"  resuming {job.name} from its last checkpoint", highlight=False)

        def finished(r) -> None:
            if r.status == "kept":
                return
            f1 = "" if r.test_f1 is None else f", test F1 {r.test_f1:.3f}"
            secs = "" if r.seconds is None else f" in {r.seconds:.0f} s"
            colour = "green" if r.status == "ran" else "bold red"
            console.print(f"  [{colour}]{r.status}[/] {r.job.name}{secs}{f1}", highlight=False)

        with rich_progress(not no_progress, transient=True) as progress:
            if slurm is None:
                result = run_local(
                    config, jobs or 1, planned=planned, on_result=finished, progress=progress
                )
            else:
                options = SlurmOptions(
                    partition=slurm,
                    time_min=120 if slurm_time is None else slurm_time,
                    gpus=1 if slurm_gpus is None else slurm_gpus,
                    cpus=6 if slurm_cpus is None else slurm_cpus,
                )

                def submitted(job, job_id: str) -> None:
                    console.print(f"  submitted {job.name} as Slurm job {job_id}", highlight=False)

                result = run_slurm(
                    config,
                    options,
                    planned=planned,
                    on_result=finished,
                    on_submitted=submitted,
                    progress=progress,
                )
    except CmbbenchError as err:
        raise fail(escape(str(err))) from None  # e.g. "cmbbench[slurm]" is not rich markup
    except KeyboardInterrupt:
        raise fail(
            "interrupted: finished runs are kept; rerun the same command to continue the others",
            code=130,
        ) from None
    _print_outcome(result, out)
    if not result.ok:
        raise typer.Exit(1)
