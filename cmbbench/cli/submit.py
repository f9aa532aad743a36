"""`cmbbench submit`: a folder of predictions made outside cmbbench becomes a leaderboard record."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmbbench.cli._app import app, console, err_console, fail
from cmbbench.cli.progress import rich_progress
from cmbbench.errors import CmbbenchError
from cmbbench.options import parse_key_values


@app.command("submit")
def submit_command(
    pred: Annotated[Path, typer.Option("--pred", help="Folder of predicted NIfTI maps/masks.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Registered dataset name.")],
    name: Annotated[str, typer.Option("--name", help="The row's name on the leaderboard.")],
    out: Annotated[Path, typer.Option("--out", help="The submission record (JSON) to write.")],
    root: Annotated[
        Path | None, typer.Option("--root", help="Dataset folder (datasets that need one).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="train | val | test.")] = "test",
    dataset_option: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset-option",
            help="Dataset option KEY=VALUE (repeatable), e.g. preset=quick.",
        ),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="One line about it.")] = "",
    url: Annotated[str, typer.Option("--url", help="Paper, code or model page.")] = "",
    missing: Annotated[
        str, typer.Option("--missing", help="A case without prediction: error | empty.")
    ] = "error",
    threshold: Annotated[
        float, typer.Option("--threshold", help="Operating threshold of probability maps (>=).")
    ] = 0.5,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="Do not draw progress bars.")
    ] = False,
) -> None:
    """Score a folder of predictions with the dataset's evaluator and write a submission record."""
    from cmbbench.cli.score import print_report, warn_pairing
    from cmbbench.scoring.records import ScoreReport
    from cmbbench.submission import submit_folder

    try:
        if split not in ("train", "val", "test"):
            raise fail(f"--split: expected train, val or test; received {split!r}")
        options = parse_key_values(dataset_option, what="--dataset-option")
        with rich_progress(not no_progress, console=err_console, transient=True) as progress:
            record = submit_folder(
                pred,
                dataset,
                name=name,
                root=root,
                split=split,
                dataset_options=options,
                description=description,
                url=url,
                missing=missing,  # type: ignore[arg-type]
                threshold=threshold,
                n_bootstrap=bootstrap,
                progress=progress,
            )
        warn_pairing(
            record.artifacts.get("unmatched_predictions", []),
            record.artifacts.get("missing_predictions_scored_empty", []),
            f"is not a {split} case",
        )
        record.save(out)
    except CmbbenchError as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write {out}: {err.strerror or err}") from None
    report = ScoreReport(
        cases=record.cases, metrics=record.metrics, rule=record.rule, params=record.params
    )
    print_report(
        report,
        f"submission {record.model['name']!r} on {dataset} v{record.dataset['version']}, split "
        f"{split} ({len(record.cases)} cases, rule {record.rule})",
    )
    console.print(f"submission record written to [bold]{out}[/]")
