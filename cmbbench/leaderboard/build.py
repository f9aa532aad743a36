"""``build_leaderboard``: run records in, Markdown + CSV + HTML + PNG plots out, byte-stable.

Output layout under ``out_dir``::

    leaderboard.md     README-ready tables (one per dataset version, rule and track), each
                       followed by the board notes on its rows (``notes.toml``)
    leaderboard.csv    every row with mean / sd / min / max / CI bounds, fixed formatting
    leaderboard.html   one self-contained page, sortable tables, plots embedded
    plots/<table>-froc.png, plots/<table>-size-recall.png, plots/<table>-fp-per-scan.png

Regeneration is byte-stable: inputs are sorted, every number is formatted with a fixed
number of digits, the bootstrap has a fixed seed, PNGs carry no metadata and nothing records
a time or a path of the machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cmbbench.errors import InputError
from cmbbench.io import write_atomic
from cmbbench.leaderboard.notes import find_and_load_notes, notes_for
from cmbbench.leaderboard.plots import plot_fp_distribution, plot_froc, plot_size_recall
from cmbbench.leaderboard.render_csv import render_csv
from cmbbench.leaderboard.render_html import render_html
from cmbbench.leaderboard.render_md import render_markdown
from cmbbench.leaderboard.significance import Ranking, add_significance, check_ranking
from cmbbench.leaderboard.store import find_cross_dataset_files, group_runs, load_records
from cmbbench.leaderboard.table import Table, build_table

N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0

PLOTS = {
    "FROC curves": ("froc", plot_froc),
    "Recall by CMB size": ("size-recall", plot_size_recall),
    "FP per scan": ("fp-per-scan", plot_fp_distribution),
}


def build_tables(
    record_paths: Sequence[str | os.PathLike[str]],
    *,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    ranking: Ranking = "bootstrap",
) -> list[Table]:
    """Load the run records under ``record_paths`` and build every table, ranked: rows in
    mean-F1 order (``ranking="bootstrap"``) or VALDO's (``"valdo"``), and in both cases the
    shared-resample rankings, pairwise tests and detectable difference; each table carries
    the board notes (``notes.toml`` under ``record_paths``) on its rows."""
    check_ranking(ranking)
    notes = find_and_load_notes(record_paths)
    tables = []
    for key, runs in group_runs(load_records(record_paths)).items():
        table = build_table(key, runs, n_bootstrap=n_bootstrap, seed=seed)
        add_significance(table, ranking)
        table.notes = notes_for(key, [r.model for r in table.rows], notes)
        tables.append(table)
    return tables


def write_cross_dataset(
    files: Sequence[Path], out: Path, name: str = "cross-dataset"
) -> list[Path]:
    """``<name>.md`` / ``<name>.csv`` in ``out``: the matrix (runs × target datasets) of the
    ``cmbbench evaluate`` result files ``files``."""
    from cmbbench.leaderboard.matrix import (
        build_matrix,
        render_matrix_csv,
        render_matrix_markdown,
    )
    from cmbbench.scoring.records import load_results

    m = build_matrix([(load_results(f), f.name) for f in files])
    return [
        write_atomic(out / f"{name}.md", render_matrix_markdown(m)),
        write_atomic(out / f"{name}.csv", render_matrix_csv(m)),
    ]


def build_leaderboard(
    record_paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    ranking: Ranking = "bootstrap",
) -> list[Path]:
    """Build the leaderboard from run records (files or folders) into ``out_dir``.

    Returns the written files, sorted. ``n_bootstrap`` case resamples with ``seed`` give every
    confidence interval and paired p-value (the rankings raise the count where Holm needs
    more; see :func:`cmbbench.leaderboard.rankings.resamples_for`). ``ranking`` orders the rows:
    ``"bootstrap"`` (mean F1) or ``"valdo"``. Raises :class:`~cmbbench.errors.InputError`
    naming the file when no record is found or a record is malformed, or naming the valid
    rankings for an unknown one.
    """
    out = Path(out_dir)
    cross = find_cross_dataset_files(record_paths)
    try:
        tables = build_tables(record_paths, n_bootstrap=n_bootstrap, seed=seed, ranking=ranking)
    except InputError:
        if not cross:  # neither run records nor cross-dataset results: say so
            raise
        tables = []
    written: list[Path] = []
    if cross:
        written += write_cross_dataset(cross, out)
    if not tables:
        return sorted(set(written), key=lambda p: p.as_posix())
    md_plots: dict[str, dict[str, str]] = {}
    html_images: dict[str, dict[str, Path]] = {}
    for t in tables:
        slug = t.key.slug
        for caption, (suffix, plot) in PLOTS.items():
            path = plot(t, out / "plots" / f"{slug}-{suffix}.png")
            written.append(path)
            md_plots.setdefault(slug, {})[caption] = f"plots/{path.name}"
            html_images.setdefault(slug, {})[caption] = path
    written.append(write_atomic(out / "leaderboard.md", render_markdown(tables, md_plots)))
    written.append(write_atomic(out / "leaderboard.csv", render_csv(tables)))
    written.append(write_atomic(out / "leaderboard.html", render_html(tables, html_images)))
    return sorted(set(written), key=lambda p: p.as_posix())
