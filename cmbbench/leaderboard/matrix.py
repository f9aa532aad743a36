"""Cross-dataset results: finished runs (rows) scored on target datasets (columns).

A model trained on one set and tested on another is the problem every deployment has (VALDO's
test set spans three cohorts and scanners). ``cmbbench evaluate --model-dir RUN ... --dataset
A --dataset B`` scores every run on every target with the target's own evaluator
(:func:`cmbbench.engine.evaluate.evaluate_run`) and writes one result file per pair plus the
matrix, built and rendered here from those result files alone: each cell is the target's
micro F1 with its 95 % case-bootstrap interval and the FP per scan; the diagonal (a run on
the dataset it was trained on) is marked. Pure Python over score reports: no torch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cmbbench.scoring.records import ScoreReport


@dataclass(frozen=True)
class MatrixCell:
    """One (run, target) result: headline values, the case count and the result file."""

    f1: float | None
    f1_ci: tuple[float, float] | None
    fp_per_scan: float | None
    n_cases: int
    file: str
    cpm: float | None = None
    cpm_ci: tuple[float, float] | None = None


@dataclass(frozen=True)
class CrossDatasetMatrix:
    """Rows: source runs (``"<model> (<run>) trained on <dataset> v<version>"``); columns:
    targets (``"<dataset> <split>"``); ``cells[(row, column)]``; ``home[row]``: the column of
    the row's own dataset, if it is a target."""

    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], MatrixCell]
    home: dict[str, str]


def _headline(report: ScoreReport, name: str) -> tuple[float | None, Any]:
    item = report.metrics.get("headline", {}).get(name) or {}
    return item.get("value"), item.get("ci")


def _cohort_text(cohorts: Any) -> str:
    return f" [{', '.join(cohorts)}]" if cohorts and len(cohorts) <= 2 else ""


def row_label(info: dict[str, Any]) -> str:
    """A source run's row label from an evaluate report's ``info`` (with the cohort / protocol
    it was trained on, when the run records one or two)."""
    trained = info.get("trained_on") or {}
    return (
        f"{info.get('model')} ({info.get('run')}) trained on {trained.get('name')} "
        f"v{trained.get('version')}" + _cohort_text(trained.get("cohorts"))
    )


def column_label(info: dict[str, Any]) -> str:
    """A target's column label from an evaluate report's ``info`` (its version and cohort /
    protocol when the report has them: one column per protocol of a generalisation matrix)."""
    d = info.get("dataset") or {}
    version = f" v{d['version']}" if d.get("version") else ""
    label = f"{d.get('name')}{version} {d.get('split') or 'all'}" + _cohort_text(d.get("cohorts"))
    trained = info.get("trained_on") or {}
    own = trained.get("options") or {} if trained.get("name") == d.get("name") else {}
    extra = {k: v for k, v in (d.get("options") or {}).items() if own.get(k) != v}
    if extra:  # options of this target beyond the run's own (a target of its own)
        label += " (" + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())) + ")"
    return label


def _is_home(info: dict[str, Any]) -> bool:
    """Whether a report scores a run on its own data: the same dataset and, where both sides
    record them, the same version and cohorts."""
    trained, target = info.get("trained_on") or {}, info.get("dataset") or {}
    if trained.get("name") != target.get("name"):
        return False
    if trained.get("version") and target.get("version") and trained["version"] != target["version"]:
        return False
    t_coh, d_coh = trained.get("cohorts"), target.get("cohorts")
    return not (t_coh and d_coh and sorted(t_coh) != sorted(d_coh))


def build_matrix(reports: Sequence[tuple[ScoreReport, str]]) -> CrossDatasetMatrix:
    """The matrix of ``(report, file)`` pairs written by ``cmbbench evaluate``; rows and
    columns sorted by label (the same matrix whatever order the files come in)."""
    rows: list[str] = []
    columns: list[str] = []
    cells: dict[tuple[str, str], MatrixCell] = {}
    home: dict[str, str] = {}
    for report, file in reports:
        r, c = row_label(report.info), column_label(report.info)
        if r not in rows:
            rows.append(r)
        if c not in columns:
            columns.append(c)
        f1, ci = _headline(report, "f1_micro")
        fp, _ = _headline(report, "fp_per_scan")
        cpm, cpm_ci = _headline(report, "cpm")
        cells[(r, c)] = MatrixCell(
            f1,
            tuple(ci) if ci else None,
            fp,
            len(report.cases),
            file,
            None if cpm is None or cpm != cpm else cpm,
            tuple(cpm_ci) if cpm_ci else None,  # type: ignore[arg-type]
        )
        if _is_home(report.info):
            home[r] = c
    return CrossDatasetMatrix(sorted(rows), sorted(columns), cells, home)


def _cell_text(cell: MatrixCell | None) -> str:
    if cell is None:
        return "–"
    f1 = "n/a" if cell.f1 is None else f"{cell.f1:.3f}"
    ci = f" [{cell.f1_ci[0]:.3f}, {cell.f1_ci[1]:.3f}]" if cell.f1_ci else ""
    fp = "n/a" if cell.fp_per_scan is None else f"{cell.fp_per_scan:.2f}"
    cpm = ""
    if cell.cpm is not None:
        cpm_ci = f" [{cell.cpm_ci[0]:.3f}, {cell.cpm_ci[1]:.3f}]" if cell.cpm_ci else ""
        cpm = f", CPM {cell.cpm:.3f}{cpm_ci}"
    return f"{f1}{ci}, {fp} FP/scan{cpm} (n={cell.n_cases})"


def render_matrix_markdown(m: CrossDatasetMatrix) -> str:
    """A Markdown table: one row per run, one column per target; ``*`` marks a run on its
    own dataset."""
    lines = [
        "# Cross-dataset results",
        "",
        "Micro F1 [95 % case-bootstrap CI], FP per scan, CPM [95 % CI] (where the run kept "
        "its candidates) and cases, each target scored with its own evaluator; `*` marks a "
        "run on the data it was trained on (same dataset, version and cohorts).",
        "",
        "| run | " + " | ".join(m.columns) + " |",
        "|---|" + "---|" * len(m.columns),
    ]
    for r in m.rows:
        cells = []
        for c in m.columns:
            text = _cell_text(m.cells.get((r, c)))
            cells.append(text + (" *" if m.home.get(r) == c else ""))
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_matrix_csv(m: CrossDatasetMatrix) -> str:
    """One line per (run, target): the values of a cell, machine-readable."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "run",
            "target",
            "own_dataset",
            "f1",
            "f1_lo",
            "f1_hi",
            "fp_per_scan",
            "n_cases",
            "file",
            "cpm",
            "cpm_lo",
            "cpm_hi",
        ]
    )
    for r in m.rows:
        for c in m.columns:
            cell = m.cells.get((r, c))
            if cell is None:
                continue
            lo, hi = cell.f1_ci if cell.f1_ci else (None, None)
            c_lo, c_hi = cell.cpm_ci if cell.cpm_ci else (None, None)
            w.writerow(
                [
                    r,
                    c,
                    int(m.home.get(r) == c),
                    "" if cell.f1 is None else f"{cell.f1:.6g}",
                    "" if lo is None else f"{lo:.6g}",
                    "" if hi is None else f"{hi:.6g}",
                    "" if cell.fp_per_scan is None else f"{cell.fp_per_scan:.6g}",
                    cell.n_cases,
                    cell.file,
                    "" if cell.cpm is None else f"{cell.cpm:.6g}",
                    "" if c_lo is None else f"{c_lo:.6g}",
                    "" if c_hi is None else f"{c_hi:.6g}",
                ]
            )
    return buf.getvalue()
