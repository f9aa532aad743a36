"""The typer application object, shared by every command module."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer
from rich.console import Console

from cmbbench import __version__
from cmbbench.errors import CmbbenchError

app = typer.Typer(
    name="cmbbench",
    help="Benchmark cerebral microbleed (CMB) detection: data, models, scoring, leaderboards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Written to a file or a pipe (a batch job's log), rich would fall back to 80 columns and
# squeeze the progress bars to "96/… 0:00… ETA 0:0…"; $COLUMNS still wins when set.
_LOG_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120
console = Console(width=_LOG_WIDTH)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cmbbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    """cmbbench: comparable CMB detection results."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line reason on stderr and return an Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 1."""
    try:
        app()
    except CmbbenchError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
