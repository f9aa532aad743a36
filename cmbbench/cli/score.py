"""`cmbbench score`: score a folder of NIfTI predictions against a folder of ground truths."""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cmbbench.cli._app import app, console, err_console, fail
from cmbbench.errors import CmbbenchError

_RULES = ("overlap", "distance", "valdo", "point")
_DEFAULTS: dict[str, Any] = {
    "threshold": 0.5,
    "connectivity": 26,
    "min_overlap_voxels": 1,
    "max_distance_mm": None,
}
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, path)
    return path


def _resolve(dataset: str | None, given: dict[str, Any], rule: str | None) -> tuple[str, dict]:
    """Rule and parameters: explicit flags, else the dataset's defaults, else global ones."""
    params = dict(_DEFAULTS)
    chosen_rule = "overlap"
    gt_kind = "auto"
    if dataset is not None:
        from cmbbench.datasets.registry import dataset_info

        info = dataset_info(dataset)
        chosen_rule = info.default_rule
        for k, v in info.rule_params.items():
            if k in params:
                params[k] = v
        if info.label_kind in ("instance", "points"):
            gt_kind = info.label_kind
    if rule is not None:
        chosen_rule = rule
    for k, v in given.items():
        if v is not None:
            params[k] = v
    params["gt_kind"] = gt_kind
    return chosen_rule, params


def _case_meta(dataset: str | None):
    """The dataset's per-case metadata from case ids (e.g. VALDO cohorts), if it has any."""
    if dataset is None:
        return None
    from cmbbench.datasets.registry import dataset_info

    return dataset_info(dataset).case_meta


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
        typer.Option("--dataset", help="Take the default rule and parameters of this dataset."),
    ] = None,
    gt_instance: Annotated[
        bool,
        typer.Option("--gt-instance", help="Ground-truth labels are instance ids (one per CMB)."),
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
        if rule is not None and rule not in _RULES:
            raise fail(f"unknown rule {rule!r}; known rules: {', '.join(_RULES)}")
        if missing not in ("error", "empty"):
            raise fail(f"--missing must be 'error' or 'empty'; received {missing!r}")
        if workers is not None and workers < 1:
            raise fail(f"--workers must be >= 1; received {workers}")
        chosen_rule, params = _resolve(
            dataset,
            {
                "threshold": threshold,
                "connectivity": connectivity,
                "min_overlap_voxels": min_overlap_voxels,
                "max_distance_mm": max_distance_mm,
            },
            rule,
        )
        if gt_instance:
            params["gt_kind"] = "instance"
        if chosen_rule == "valdo" and params["max_distance_mm"] is None:
            raise fail(
                "the valdo rule needs --max-distance-mm (its threshold was not published with "
                "the challenge code)"
            )
        from cmbbench.scoring.folder import score_folder
        from cmbbench.scoring.records import save_results

        with Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("", total=None)

            def progress(done: int, total: int, case_id: str) -> None:
                bar.update(task, completed=done, total=total, description=case_id)

            report = score_folder(
                pred,
                gt,
                rule=chosen_rule,
                missing=missing,  # type: ignore[arg-type]
                workers=workers,
                progress=progress,
                n_bootstrap=n_bootstrap,
                seed=seed,
                case_meta=_case_meta(dataset),
                **params,
            )
        if dataset is not None:
            report.info["dataset"] = dataset
        for cid in report.info.get("unmatched_predictions", []):
            err_console.print(
                f"[yellow]warning:[/] prediction {cid!r} has no ground truth; not scored",
                highlight=False,
            )
        for cid in report.info.get("missing_predictions_scored_empty", []):
            err_console.print(
                f"[yellow]warning:[/] case {cid!r} has no prediction; scored as empty",
                highlight=False,
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
