"""The CLI's one progress renderer: a :data:`cmbbench.progress.ProgressFn` drawing rich bars.

Every command that runs a long library call passes it this callback; each phase (and
description) of the events gets one bar with its count, elapsed time, ETA and the event's
metrics (e.g. the training loss, or the case being scored).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from cmbbench.cli._app import console as stdout_console
from cmbbench.progress import ProgressEvent, ProgressFn

_PHASE_LABEL = {
    "data": "data",
    "train": "training",
    "validate": "validation",
    "tune": "val predictions (tuning)",
    "infer": "test inference + scoring",
    "score": "scoring",
    "export": "exporting",
}


@contextmanager
def rich_progress(
    enabled: bool = True, *, console: Console | None = None, transient: bool = False
) -> Iterator[ProgressFn | None]:
    """A ``progress(event)`` callback drawing one rich bar (with ETA) per phase, or ``None``
    when not ``enabled``. ``console``: where to draw (default stdout); ``transient``: remove
    the bars when done (commands whose output is a table)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not enabled:
        yield None
        return
    bars = Progress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console or stdout_console,
        transient=transient,
    )
    tasks: dict[tuple[str, str], Any] = {}

    def callback(ev: ProgressEvent) -> None:
        key = (ev.phase, ev.description)
        label = ev.description or _PHASE_LABEL.get(ev.phase, ev.phase)
        info = "  ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in ev.metrics.items()
            if v is not None
        )
        if key not in tasks:
            tasks[key] = bars.add_task(label[:28], total=ev.total or None, info=info)
        bars.update(tasks[key], completed=ev.completed, total=ev.total or None, info=info)

    with bars:
        yield callback
