"""Progress reporting for long phases: library code calls a callback, the CLI renders it.

The one progress callback type of cmbbench is :data:`ProgressFn`: every long loop (dataset
generation and summaries, exports, training, validation, inference, scoring a folder)
reports through a :class:`PhaseTracker`, and the CLI draws every phase with one renderer.
A callback receives :class:`ProgressEvent` objects. ``phase`` names the long phase
(``"data"``, ``"train"``, ``"validate"``, ``"tune"``, ``"infer"``, ``"score"``,
``"export"``), and
``completed``/``total`` map one-to-one onto a ``rich.progress`` task (``progress.update(task,
completed=ev.completed, total=ev.total)``), whose time-remaining column gives the ETA. The
event also carries its own ``eta_s`` estimate (seconds, from the phase's mean rate) for
callers that do not use rich.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    """One progress update of a phase (``completed`` of ``total`` units done)."""

    phase: str
    completed: int
    total: int
    description: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    eta_s: float | None = None


ProgressFn = Callable[[ProgressEvent], None]


def log_progress(logger: Any, what: str) -> ProgressFn:
    """A :data:`ProgressFn` that logs ``"<what>: done/total"`` at INFO (for library callers
    without a progress bar)."""

    def emit(ev: ProgressEvent) -> None:
        logger.info("%s: %d/%d", what, ev.completed, ev.total)

    return emit


class PhaseTracker:
    """Emits events for one phase and estimates its ETA from the mean rate since ``start``.

    ``offset`` units already done before this process started (e.g. a resumed run) are not
    counted in the rate.
    """

    def __init__(
        self,
        callback: ProgressFn | None,
        phase: str,
        total: int,
        description: str = "",
        offset: int = 0,
    ):
        self.callback, self.phase, self.total = callback, phase, int(total)
        self.description, self.offset = description, int(offset)
        self.t0 = time.perf_counter()
        self.emit(self.offset)

    def emit(self, completed: int, **metrics: Any) -> None:
        if self.callback is None:
            return
        done = completed - self.offset
        elapsed = time.perf_counter() - self.t0
        eta = None
        if done > 0 and self.total > 0:
            eta = elapsed / done * max(0, self.total - completed)
        self.callback(
            ProgressEvent(
                self.phase, int(completed), self.total, self.description, dict(metrics), eta
            )
        )
