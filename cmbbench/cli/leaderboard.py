"""`cmbbench leaderboard` (registered on the shared app): run records in, tables and plots out.

Thin: everything is :func:`cmbbench.leaderboard.build_leaderboard`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from cmbbench.cli._app import app, console, fail
from cmbbench.errors import CmbbenchError


@app.command("leaderboard")
def leaderboard(
    records: Annotated[
        list[Path],
        typer.Argument(help="Run record files (record.json) or folders searched recursively."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("leaderboard"),
    n_bootstrap: Annotated[
        int,
        typer.Option("--n-bootstrap", min=0, help="Case-bootstrap resamples for CIs and p-values."),
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    ranking: Annotated[
        Literal["bootstrap", "valdo"],
        typer.Option(
            "--ranking",
            help="Row order: mean F1 with bootstrap rank intervals (bootstrap), or VALDO 2021's "
            "significance-count ranking (valdo).",
        ),
    ] = "bootstrap",
) -> None:
    """Build Markdown, CSV, a self-contained HTML page and PNG plots from run records.

    One table per dataset version, scoring rule and track (preset + hardware); several seeds
    of a model form one row. Regenerating from the same records gives identical files.
    """
    from cmbbench.leaderboard import build_leaderboard

    try:
        files = build_leaderboard(records, out, n_bootstrap=n_bootstrap, seed=seed, ranking=ranking)
    except CmbbenchError as err:
        raise fail(str(err)) from None
    console.print(f"wrote {len(files)} files to {out}:")
    for f in files:
        console.print(f"  {f.relative_to(out).as_posix()}", highlight=False)
