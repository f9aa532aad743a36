"""`cmbbench models`: list every registered model (built-in, entry points, plug-ins)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cmbbench.cli._app import app, console


@app.command("models")
def models_command(
    plugin: Annotated[
        list[str] | None,
        typer.Option(
            "--plugin",
            help="Import a plug-in module or .py file that registers models (repeatable).",
        ),
    ] = None,
    board: Annotated[
        bool,
        typer.Option(
            "--board",
            help="Print only the names of the models on the default leaderboard tracks, "
            "one per line (for scripts that run a track).",
        ),
    ] = False,
) -> None:
    """List registered models: name, kind, description and where each came from; a model
    left off the default leaderboard tracks says why."""
    from cmbbench.models.registry import list_models, load_plugin, model_info

    for item in plugin or []:
        load_plugin(item)
    if board:
        for name in list_models(on_board=True):
            typer.echo(name)
        return
    table = Table(title="cmbbench models", show_lines=False)
    for col in ("name", "kind", "description", "source"):
        table.add_column(col, overflow="fold")
    for name in list_models():
        info = model_info(name)
        text = info.description
        if info.off_board:
            text += f" (off the default board: {info.off_board})"
        table.add_row(name, info.kind, text, info.source)
    console.print(table)
