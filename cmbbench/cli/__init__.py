"""The ``cmbbench`` command line: a thin typer app whose commands call library functions.

Each command group lives in its own module and registers itself on :data:`app`.
"""

from __future__ import annotations

from cmbbench.cli import compare, data, leaderboard, models, run, score, submit, sweep  # noqa: F401  (register commands)
from cmbbench.cli._app import app, main

__all__ = ["app", "main"]
