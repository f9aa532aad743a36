"""`cmbbench score`: score a folder of NIfTI predictions against a folder of ground truths."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cmbbench.cli._app import app, console, err_console, fail
from cmbbench.cli.progress import rich_progress
from cmbbench.errors import CmbbenchError
from cmbbench.io import write_atomic

CSV_COLUMNS = (
    "case_id",
    "n_gt",
    "n_pred",
    "tp",
    "fp",
    "fn",
    "n_ignored",
    "recall",
    "precision",
    "f1",
    "valdo_f1",
    "gt_voxels",
    "pred_voxels",
    "intersection_voxels",
)


def write_cases_csv(cases: list[Any], path: Path) -> Path:
    """Per-case table (one row per case, :data:`CSV_COLUMNS`; undefined values empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in cases:
        row = []
        for col in CSV_COLUMNS:
            v = getattr(c, col)
            if isinstance(v, float):
                v = "" if not math.isfinite(v) else f"{v:.6g}"
            row.append("" if v is None else v)
        writer.writerow(row)
    return write_atomic(path, buf.getvalue())


@app.command("score")
def score(
    pred: Annotated[Path, typer.Option("--pred", help="Folder of predicted NIfTI masks/maps.")],
    gt: Annotated[Path, typer.Option("--gt", help="Folder of ground-truth NIfTI labels.")],
    rule: Annotated[
        str | None,
        typer.Option("--rule", help="Matching rule: overlap | distance | valdo | point."),
    ] = None,
    max_distance_mm: Annotated[
        float | None,
        typer.Option(
            "--max-distance-mm",
            help="Distance threshold in mm (distance/point; required by valdo).",
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Probability threshold (>=), default 0.5.")
    ] = None,
    connectivity: Annotated[
        int | None, typer.Option("--connectivity", help="6, 18 or 26 (default 26).")
    ] = None,
    min_overlap_voxels: Annotated[
        int | None, typer.Option("--min-overlap-voxels", help="Overlap rule (default 1).")
    ] = None,
    missing: Annotated[
        str,
        typer.Option("--missing", help="A ground-truth case without prediction: error | empty."),
    ] = "error",
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", help="Score with this dataset's evaluator (its rule and parameters)."
        ),
    ] = None,
    gt_instance: Annotated[
        bool,
        typer.Option("--gt-instance", help="Ground-truth labels are instance ids (one per CMB)."),
    ] = False,
    gt_agreement: Annotated[
        bool,
        typer.Option(
            "--gt-agreement",
            help="Ground-truth values in (0, 1] are rater agreement (the valdo rule weights its F1).",
        ),
    ] = False,
    n_bootstrap: Annotated[
        int, typer.Option("--n-bootstrap", help="Bootstrap resamples of cases for CIs.")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Parallel processes (default: all cores).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write cases + metrics as JSON here.")
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write the per-case table as CSV here.")
    ] = None,
) -> None:
    """Score predictions against ground truth: per-case counts, aggregate metrics with CIs."""
    try:
        if missing not in ("error", "empty"):
            raise fail(f"--missing must be 'error' or 'empty'; received {missing!r}")
        if workers is not None and workers < 1:
            raise fail(f"--workers must be >= 1; received {workers}")
        from cmbbench.datasets.registry import dataset_info
        from cmbbench.scoring.evaluator import Evaluator

        info = dataset_info(dataset) if dataset is not None else None
        evaluator = (info.evaluator if info is not None else Evaluator()).replace(
            rule=rule,
            connectivity=connectivity,
            min_overlap_voxels=min_overlap_voxels,
            max_distance_mm=max_distance_mm,
            label_kind="instance" if gt_instance else ("agreement" if gt_agreement else None),
        )
        from cmbbench.scoring.folder import score_folder
        from cmbbench.scoring.records import save_results

        with rich_progress(console=err_console, transient=True) as progress:
            report = score_folder(
                pred,
                gt,
                evaluator=evaluator,
                threshold=0.5 if threshold is None else threshold,
                missing=missing,  # type: ignore[arg-type]
                workers=workers,
                progress=progress,
                n_bootstrap=n_bootstrap,
                seed=seed,
                case_meta=info.case_meta if info is not None else None,
            )
        if dataset is not None:
            report.info["dataset"] = dataset
        warn_pairing(
            report.info.get("unmatched_predictions", []),
            report.info.get("missing_predictions_scored_empty", []),
            "has no ground truth",
        )
        print_report(report)
        if out is not None:
            save_results(report, out)
            console.print(f"results written to {out}")
        if csv_path is not None:
            write_cases_csv(report.cases, csv_path)
            console.print(f"per-case table written to {csv_path}")
    except CmbbenchError as err:
        raise fail(str(err)) from None


def warn_pairing(unmatched: list[str], scored_empty: list[str], why: str) -> None:
    """Warnings on stderr: predictions that were not scored (``why``), cases without a
    prediction that were scored as empty."""
    for cid in unmatched:
        err_console.print(
            f"[yellow]warning:[/] prediction {cid!r} {why}; not scored", highlight=False
        )
    for cid in scored_empty:
        err_console.print(
            f"[yellow]warning:[/] case {cid!r} has no prediction; scored as empty",
            highlight=False,
        )


def print_report(report: Any, title: str | None = None) -> None:
    """A scored set's pooled counts and headline metrics with CIs, as one table."""
    from cmbbench.scoring.summary import summary_rows

    params = ", ".join(f"{k}={v}" for k, v in sorted(report.params.items()))
    table = Table(title=title or f"cmbbench score - rule {report.rule} ({params})")
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    c = report.cases
    table.add_row(
        "TP / FP / FN",
        f"{sum(x.tp for x in c)} / {sum(x.fp for x in c)} / {sum(x.fn for x in c)}",
    )
    for label, value in summary_rows(report.metrics):
        table.add_row(label, value)
    console.print(table)
