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
from dataclasses import dataclass, field
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
    fp_ci: tuple[float, float] | None = None


@dataclass(frozen=True)
class CrossDatasetMatrix:
    """Rows: source runs (``"<model> (<run>) trained on <dataset> v<version>"``); columns:
    targets (``"<dataset> <split>"``); ``cells[(row, column)]``; ``home[row]``: the column of
    the row's own dataset, if it is a target; ``common_targets`` / ``common_runs``: the
    options every target / every run's training data shares, left
    out of the labels."""

    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], MatrixCell]
    home: dict[str, str]
    common_targets: dict[str, Any] = field(default_factory=dict)
    common_runs: dict[str, Any] = field(default_factory=dict)


def _headline(report: ScoreReport, name: str) -> tuple[float | None, Any]:
    item = report.metrics.get("headline", {}).get(name) or {}
    return item.get("value"), item.get("ci")


def _cohort_text(cohorts: Any) -> str:
    return f" [{', '.join(cohorts)}]" if cohorts and len(cohorts) <= 2 else ""


# Options that draw another sample from the same distribution (how many cases, which seed, which
# preset of sizes, which protocol: the protocol itself is compared through the cohorts, the
# cache and the split file only say where the cases live and which of them are tested). A run
# scored on a target that differs from its training data in these alone is on its own data; any
# other difference (``without=veins``, another lesion model, agreement labels) is a shift.
SAMPLE_OPTIONS = frozenset(
    {"n", "seed", "preset", "protocol", "cache_dir", "root", "workers", "split_file"}
)


def _options_text(options: dict[str, Any]) -> str:
    return " (" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + ")" if options else ""


def _items(options: Any) -> frozenset[tuple[str, str]]:
    return frozenset((k, repr(v)) for k, v in (options or {}).items())


def _drop(options: Any, common: frozenset[tuple[str, str]]) -> dict[str, Any]:
    return {k: v for k, v in (options or {}).items() if (k, repr(v)) not in common}


def row_label(info: dict[str, Any], common: frozenset[tuple[str, str]] = frozenset()) -> str:
    """A source run's row label from an evaluate report's ``info``: model, run, the dataset and
    version it was trained on, the cohort / protocol when the run records one or two, and its
    training options except ``common`` (those every row of the matrix shares)."""
    trained = info.get("trained_on") or {}
    return (
        f"{info.get('model')} ({info.get('run')}) trained on {trained.get('name')} "
        f"v{trained.get('version')}"
        + _cohort_text(trained.get("cohorts"))
        + _options_text(_drop(trained.get("options"), common))
    )


def column_label(info: dict[str, Any], common: frozenset[tuple[str, str]] = frozenset()) -> str:
    """A target's column label from an evaluate report's ``info``: the target alone (never the
    run that was scored on it), with its version, cohort / protocol and options except
    ``common`` (those every column of the matrix shares): one column per protocol of a
    generalisation matrix, one per option set of a dataset."""
    d = info.get("dataset") or {}
    version = f" v{d['version']}" if d.get("version") else ""
    label = f"{d.get('name')}{version} {d.get('split') or 'all'}" + _cohort_text(d.get("cohorts"))
    return label + _options_text(_drop(d.get("options"), common))


def _is_home(info: dict[str, Any]) -> bool:
    """Whether a report scores a run on its own data: the same dataset and, where both sides
    record them, the same version and cohorts, and options that differ only in
    :data:`SAMPLE_OPTIONS` (another draw of the same distribution)."""
    trained, target = info.get("trained_on") or {}, info.get("dataset") or {}
    if trained.get("name") != target.get("name"):
        return False
    if trained.get("version") and target.get("version") and trained["version"] != target["version"]:
        return False
    t_coh, d_coh = trained.get("cohorts"), target.get("cohorts")
    if t_coh and d_coh and sorted(t_coh) != sorted(d_coh):
        return False
    t_opt, d_opt = trained.get("options") or {}, target.get("options") or {}
    keys = (set(t_opt) | set(d_opt)) - SAMPLE_OPTIONS
    return all(repr(t_opt.get(k)) == repr(d_opt.get(k)) for k in keys)


def _common(option_sets: list[Any]) -> frozenset[tuple[str, str]]:
    """The (option, value) pairs every one of ``option_sets`` has (none for fewer than two)."""
    if len(option_sets) < 2:
        return frozenset()
    return frozenset.intersection(*(_items(o) for o in option_sets))


def _shared(option_sets: list[Any], common: frozenset[tuple[str, str]]) -> dict[str, Any]:
    first = option_sets[0] if option_sets else None
    return dict(sorted((k, v) for k, v in (first or {}).items() if (k, repr(v)) in common))


def build_matrix(reports: Sequence[tuple[ScoreReport, str]]) -> CrossDatasetMatrix:
    """The matrix of ``(report, file)`` pairs written by ``cmbbench evaluate``; rows and
    columns sorted by label (the same matrix whatever order the files come in). A column is a
    target alone, whichever runs were scored on it; options shared by every target (every
    run) are left out of the labels and stated once in ``common_targets`` (``common_runs``)."""
    infos = [report.info for report, _ in reports]
    targets = {column_label(i): (i.get("dataset") or {}).get("options") for i in infos}
    sources = {row_label(i): (i.get("trained_on") or {}).get("options") for i in infos}
    common_c, common_r = _common(list(targets.values())), _common(list(sources.values()))
    rows: list[str] = []
    columns: list[str] = []
    cells: dict[tuple[str, str], MatrixCell] = {}
    home: dict[str, str] = {}
    for report, file in reports:
        r, c = row_label(report.info, common_r), column_label(report.info, common_c)
        if r not in rows:
            rows.append(r)
        if c not in columns:
            columns.append(c)
        f1, ci = _headline(report, "f1_micro")
        fp, fp_ci = _headline(report, "fp_per_scan")
        cpm, cpm_ci = _headline(report, "cpm")
        cells[(r, c)] = MatrixCell(
            f1,
            tuple(ci) if ci else None,
            fp,
            len(report.cases),
            file,
            None if cpm is None or cpm != cpm else cpm,
            tuple(cpm_ci) if cpm_ci else None,  # type: ignore[arg-type]
            tuple(fp_ci) if fp_ci else None,  # type: ignore[arg-type]
        )
        if _is_home(report.info):
            home[r] = c
    return CrossDatasetMatrix(
        sorted(rows),
        sorted(columns),
        cells,
        home,
        _shared(list(targets.values()), common_c),
        _shared(list(sources.values()), common_r),
    )


def _cell_text(cell: MatrixCell | None) -> str:
    if cell is None:
        return "–"
    f1 = "n/a" if cell.f1 is None else f"{cell.f1:.3f}"
    ci = f" [{cell.f1_ci[0]:.3f}, {cell.f1_ci[1]:.3f}]" if cell.f1_ci else ""
    fp = "n/a" if cell.fp_per_scan is None else f"{cell.fp_per_scan:.2f}"
    if cell.fp_per_scan is not None and cell.fp_ci:
        fp += f" [{cell.fp_ci[0]:.2f}, {cell.fp_ci[1]:.2f}]"
    cpm = ""
    if cell.cpm is not None:
        cpm_ci = f" [{cell.cpm_ci[0]:.3f}, {cell.cpm_ci[1]:.3f}]" if cell.cpm_ci else ""
        cpm = f", CPM {cell.cpm:.3f}{cpm_ci}"
    return f"{f1}{ci}, {fp} FP/scan{cpm} (n={cell.n_cases})"


def _common_text(m: CrossDatasetMatrix) -> str:
    parts = []
    for what, opts in (("every target", m.common_targets), ("every run", m.common_runs)):
        if opts:
            parts.append(f" Options of {what}: " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    return ".".join(parts) + ("." if parts else "")


def render_matrix_markdown(m: CrossDatasetMatrix) -> str:
    """A Markdown table: one row per run, one column per target; ``*`` marks a run on its
    own dataset."""
    lines = [
        "# Cross-dataset results",
        "",
        "Micro F1 [95 % case-bootstrap CI], FP per scan [95 % CI], CPM [95 % CI] (where the run kept "
        "its candidates) and cases, each target scored with its own evaluator; `*` marks a "
        "run on the data it was trained on (same dataset, version and cohorts, options "
        "differing only in the sample drawn)." + _common_text(m),
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
            "fp_per_scan_lo",
            "fp_per_scan_hi",
        ]
    )
    for r in m.rows:
        for c in m.columns:
            cell = m.cells.get((r, c))
            if cell is None:
                continue
            lo, hi = cell.f1_ci if cell.f1_ci else (None, None)
            c_lo, c_hi = cell.cpm_ci if cell.cpm_ci else (None, None)
            f_lo, f_hi = cell.fp_ci if cell.fp_ci else (None, None)
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
                    "" if f_lo is None else f"{f_lo:.6g}",
                    "" if f_hi is None else f"{f_hi:.6g}",
                ]
            )
    return buf.getvalue()
