"""Training logs of a network run: CSV files to watch while it trains, optional TensorBoard
event files, and a PNG of the curves when it ends.

Layout under the run directory (only rank 0 writes; see ``docs/training.md``):

- ``logs/steps.csv``: one row per optimisation step, appended and flushed as training goes
  (``tail -f`` shows progress): ``step`` (0-based, the index into ``TrainResult.losses``),
  ``loss``, ``lr``, ``step_seconds`` (batch wait + forward + backward + update), ``skipped``
  (1 when the update was skipped for a non-finite loss or gradient);
- ``logs/validations.csv``: one row per validation: ``step`` (steps completed), ``f1``,
  ``recall``, ``precision``, ``tp``, ``fp``, ``fn``, ``seconds``;
- ``logs/tensorboard/``: the same scalars as TensorBoard event files, only when
  ``torch.utils.tensorboard`` imports (the ``tensorboard`` extra);
- ``training.png`` (next to ``record.json``): loss, smoothed loss, validation F1 and learning
  rate against the step.

The logs only read values the training loop already has (the loss it already converted to a
float, the learning rate it set), so they change neither the numbers nor the synchronisation
of a run. A resumed run rewrites both CSV files from its checkpoint's history (rows past the
resume step, written after that checkpoint, are dropped; step times are kept) and appends
from there, so a finished run has exactly one row per step. Floats are written with
``repr``: reading a CSV back gives the loop's values bit for bit. matplotlib and TensorBoard
are imported only when used.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from cmbbench.io import write_atomic

logger = logging.getLogger(__name__)

LOG_DIR = "logs"
STEPS_CSV = "steps.csv"
VALIDATIONS_CSV = "validations.csv"
TENSORBOARD_DIR = "tensorboard"
PLOT_PNG = "training.png"

STEP_COLUMNS = ("step", "loss", "lr", "step_seconds", "skipped")
VALIDATION_COLUMNS = ("step", "f1", "recall", "precision", "tp", "fp", "fn", "seconds")

#: the smoothed loss of the plot: the mean of the last this-many finite losses (the progress
#: bar's window)
SMOOTH_WINDOW = 20
_DPI = 100


def _cell(value: Any) -> str:
    """A CSV cell: ``repr`` of a float (round-trips exactly), ``""`` for ``None``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _old_step_seconds(path: Path, start: int) -> dict[int, str]:
    """``step -> step_seconds`` cell of the rows before ``start`` in an earlier ``steps.csv``."""
    if not path.is_file():
        return {}
    kept: dict[int, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != STEP_COLUMNS:
            logger.warning("%s has another layout; its step times are not kept", path)
            return {}
        for row in reader:
            try:
                step = int(row["step"])
            except (TypeError, ValueError):
                continue  # a row cut short by a kill
            if 0 <= step < start and row.get("step_seconds") is not None:
                kept[step] = row["step_seconds"]
    return kept


def _open_summary_writer(log_dir: Path, start: int) -> Any | None:
    """A TensorBoard ``SummaryWriter`` on ``log_dir`` (events from ``start`` on replace those of
    an interrupted run), or ``None`` when ``torch.utils.tensorboard`` does not import."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        logger.debug(
            "no TensorBoard event files: torch.utils.tensorboard does not import (%s); "
            "pip install 'cmbbench[tensorboard]' to get them",
            err,
        )
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=start or None, flush_secs=30)


class TrainingLog:
    """The training logs of one run directory; :meth:`open` it, then :meth:`step` every step,
    :meth:`validation` every validation, :meth:`write_plot` at the end and :meth:`close`."""

    def __init__(self, run_dir: Path, steps_fh: TextIO, val_fh: TextIO, writer: Any | None):
        self.run_dir = run_dir
        self.steps_path = run_dir / LOG_DIR / STEPS_CSV
        self.validations_path = run_dir / LOG_DIR / VALIDATIONS_CSV
        self.tensorboard_dir = run_dir / LOG_DIR / TENSORBOARD_DIR if writer is not None else None
        self.plot_path: Path | None = None
        self._steps_fh, self._val_fh, self._writer = steps_fh, val_fh, writer
        self._steps = csv.writer(steps_fh, lineterminator="\n")
        self._vals = csv.writer(val_fh, lineterminator="\n")

    @classmethod
    def open(
        cls,
        run_dir: str | Path,
        *,
        start: int = 0,
        losses: Sequence[float] = (),
        lrs: Sequence[float] = (),
        skipped: Sequence[int] = (),
        validations: Sequence[Mapping[str, Any]] = (),
        tensorboard: bool = True,
    ) -> TrainingLog:
        """Start the logs of ``run_dir`` at step ``start``: the CSV files are rewritten from the
        history up to ``start`` (``losses``/``lrs`` of steps ``0..start-1``, ``validations`` so
        far; nothing for a fresh run), keeping the step times an earlier file has for those
        steps, then opened for appending."""
        run_dir = Path(run_dir)
        log_dir = run_dir / LOG_DIR
        log_dir.mkdir(parents=True, exist_ok=True)
        steps_path, val_path = log_dir / STEPS_CSV, log_dir / VALIDATIONS_CSV
        seconds = _old_step_seconds(steps_path, start)
        skipped_set = {int(s) for s in skipped}
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(STEP_COLUMNS)
        for s in range(start):
            loss = float(losses[s]) if s < len(losses) else None
            lr = float(lrs[s]) if s < len(lrs) else None
            out.writerow([s, _cell(loss), _cell(lr), seconds.get(s, ""), int(s in skipped_set)])
        write_atomic(steps_path, buf.getvalue())
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(VALIDATION_COLUMNS)
        for v in validations:
            out.writerow([_cell(v.get(c)) for c in VALIDATION_COLUMNS])
        write_atomic(val_path, buf.getvalue())
        writer = _open_summary_writer(log_dir / TENSORBOARD_DIR, start) if tensorboard else None
        steps_fh = open(steps_path, "a", newline="", encoding="utf-8")
        val_fh = open(val_path, "a", newline="", encoding="utf-8")
        return cls(run_dir, steps_fh, val_fh, writer)

    def step(self, step: int, loss: float, lr: float, seconds: float, skipped: bool) -> None:
        """Append (and flush) the row of optimisation step ``step``."""
        self._steps.writerow([step, _cell(loss), _cell(lr), f"{seconds:.6f}", int(skipped)])
        self._steps_fh.flush()
        if self._writer is not None:
            self._writer.add_scalar("train/loss", loss, step)
            self._writer.add_scalar("train/lr", lr, step)
            self._writer.add_scalar("train/step_seconds", seconds, step)

    def validation(self, metrics: Mapping[str, Any]) -> None:
        """Append (and flush) the row of one validation (``metrics["step"]``: steps done)."""
        self._vals.writerow([_cell(metrics.get(c)) for c in VALIDATION_COLUMNS])
        self._val_fh.flush()
        if self._writer is not None:
            for key in VALIDATION_COLUMNS[1:]:
                value = metrics.get(key)
                if isinstance(value, (int, float)):
                    self._writer.add_scalar(f"val/{key}", value, int(metrics["step"]))

    def write_plot(
        self,
        losses: Sequence[float],
        lrs: Sequence[float],
        validations: Sequence[Mapping[str, Any]],
        skipped: Sequence[int] = (),
    ) -> Path:
        """Write ``training.png`` in the run directory (:func:`plot_training`); returns it."""
        self.plot_path = plot_training(
            self.run_dir / PLOT_PNG, losses, lrs, validations, skipped=skipped
        )
        return self.plot_path

    def files(self) -> dict[str, Path | None]:
        """The log files, by their run-record ``artifacts`` key."""
        return {
            "train_log": self.steps_path,
            "validation_log": self.validations_path,
            "tensorboard_dir": self.tensorboard_dir,
            "training_plot": self.plot_path,
        }

    def close(self) -> None:
        """Close the CSV files and the TensorBoard writer (its pending events are written)."""
        self._steps_fh.close()
        self._val_fh.close()
        if self._writer is not None:
            self._writer.close()


def smoothed(values: Sequence[float], window: int = SMOOTH_WINDOW) -> list[float]:
    """Trailing mean of the last ``window`` finite values at each index (NaN before any)."""
    out: list[float] = []
    recent: list[float] = []
    for v in values:
        if v is not None and math.isfinite(v):
            recent.append(float(v))
            if len(recent) > window:
                recent.pop(0)
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return out


def plot_training(
    path: str | Path,
    losses: Sequence[float],
    lrs: Sequence[float],
    validations: Sequence[Mapping[str, Any]],
    *,
    skipped: Sequence[int] = (),
) -> Path:
    """A PNG of the training curves (matplotlib, Agg canvas, no pyplot state, no metadata):
    loss per step and its :func:`smoothed` mean (skipped steps marked), validation F1 (with
    recall and precision) and the learning rate, against the step; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 7.5), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax_loss, ax_val, ax_lr = fig.subplots(3, 1, sharex=True)
    steps = list(range(len(losses)))
    loss = [math.nan if v is None else float(v) for v in losses]
    ax_loss.plot(steps, loss, color="tab:blue", alpha=0.35, linewidth=0.8, label="loss")
    ax_loss.plot(
        steps, smoothed(loss), color="tab:blue", linewidth=1.6, label=f"mean of {SMOOTH_WINDOW}"
    )
    if skipped:
        ax_loss.plot(
            list(skipped), [0.0] * len(skipped), "x", color="tab:red", label="skipped step"
        )
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(loc="upper right", fontsize=8)
    if validations:
        v_steps = [int(v["step"]) for v in validations]
        for key, style in (("f1", "-o"), ("recall", "--"), ("precision", ":")):
            values = [v.get(key) for v in validations]
            if all(x is None for x in values):
                continue
            ys = [math.nan if x is None else float(x) for x in values]
            ax_val.plot(v_steps, ys, style, markersize=3, label=key)
        ax_val.legend(loc="lower right", fontsize=8)
    else:
        ax_val.text(0.5, 0.5, "no validation", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_ylim(-0.02, 1.02)
    ax_val.set_ylabel("validation")
    ax_lr.plot(list(range(len(lrs))), [float(x) for x in lrs], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    for ax in (ax_loss, ax_val, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return write_atomic(path, buf.getvalue())
