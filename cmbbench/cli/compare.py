"""`cmbbench compare A.json B.json`: paired comparison of two result files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cmbbench.cli._app import app, console, fail
from cmbbench.errors import CmbbenchError


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


@app.command("compare")
def compare_command(
    a: Annotated[Path, typer.Argument(help="Result file A (written by `cmbbench score`).")],
    b: Annotated[Path, typer.Argument(help="Result file B, scored on the same cases.")],
    n_bootstrap: Annotated[
        int, typer.Option("--n-bootstrap", min=0, help="Paired bootstrap resamples of cases.")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap draws.")] = 0,
    ci: Annotated[
        float, typer.Option("--ci", min=0.5, max=0.999, help="Confidence level of the interval.")
    ] = 0.95,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the comparison as JSON here.")
    ] = None,
) -> None:
    """Compare two result sets on the same cases: B - A with a paired bootstrap CI and p-value."""
    from cmbbench.io import write_json_atomic
    from cmbbench.scoring.compare import COMPARED, compare
    from cmbbench.scoring.records import load_results

    try:
        ra, rb = load_results(a), load_results(b)
        result = compare(ra, rb, n_bootstrap=n_bootstrap, seed=seed, ci=ci)
        if out is not None:
            write_json_atomic(out, result)
    except CmbbenchError as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write {out}: {err.strerror or err}") from None

    level = round(ci * 100)
    table = Table(
        title=f"{a.name} (A) vs {b.name} (B): {result['n_cases']} cases, rule {result['rule']}"
    )
    table.add_column("metric")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column(f"B - A [{level}% CI]", justify="right")
    table.add_column("p", justify="right")
    for key, label in COMPARED.items():
        row = result["metrics"][key]
        diff = _fmt(row["diff"], signed=True)
        if row["ci"] is not None:
            diff += f" [{_fmt(row['ci'][0], True)}, {_fmt(row['ci'][1], True)}]"
        table.add_row(label, _fmt(row["a"]), _fmt(row["b"]), diff, _fmt_p(row["p"]))
    console.print(table)
    w = result["wilcoxon"]
    note = f" ({w['note']})" if w["note"] else ""
    console.print(
        f"Wilcoxon signed-rank on per-case F1: n={w['n']}, p={_fmt_p(w['p'])}{note}; "
        f"paired bootstrap: {n_bootstrap} resamples of cases, seed {seed}.",
        highlight=False,
    )
    if out is not None:
        console.print(f"Wrote {out}", highlight=False)
