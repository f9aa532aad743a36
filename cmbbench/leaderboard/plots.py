"""Leaderboard plots (matplotlib, Agg canvas, no pyplot state): FROC curves of every row on
one figure, recall by CMB size, and the distribution of FP per scan. PNGs are written without
metadata (no software version, no timestamp), so regenerating them gives identical bytes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmbbench.leaderboard.table import Row, Table
from cmbbench.scoring.froc import FP_RATES, froc_curve

SIZE_EDGES_MM: tuple[float, ...] = (2.0, 3.0, 5.0)
_DPI = 100


def plotting_version() -> str:
    """``"matplotlib X.Y.Z"``: PNG bytes are stable for one matplotlib version (it bundles its
    font renderer), so the pages name it."""
    import matplotlib

    return f"matplotlib {matplotlib.__version__}"


def row_labels(table: Table) -> list[str]:
    """Legend labels: the model name, plus recipe and hardware where a model has several rows."""
    names = [r.model for r in table.rows]
    return [
        r.model if names.count(r.model) == 1 else f"{r.model} [{r.recipe}, {r.hardware}]"
        for r in table.rows
    ]


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, metadata={"Software": None})
    return path


def froc_points(row: Row) -> tuple[np.ndarray, np.ndarray] | None:
    """(FP per scan, sensitivity) of the row's seeds pooled (lesions of all seeds, scans and
    CMBs counted once per seed), swept exactly as the metrics sweep each run (every candidate
    when the run recorded them, else its operating point: :class:`cmbbench.scoring.sweep.Sweep`),
    or ``None`` when predictions carry no scores."""
    from cmbbench.scoring.sweep import Sweep

    scores, is_tp = [], []
    n_gt = n_scans = 0
    for run in row.runs:
        n_scans += len(run.cases)
        n_gt += sum(c.n_gt for c in run.cases)
        sw = Sweep(sorted(run.cases, key=lambda c: c.case_id))
        if not sw.available and sw.scores.size == 0 and sw.reason != "no predicted lesions":
            return None
        scores.extend(sw.scores.tolist())
        is_tp.extend(sw.is_tp.tolist())
    if n_gt == 0 or n_scans == 0:
        return None
    curve = froc_curve(
        np.asarray(scores, dtype=float), np.asarray(is_tp, dtype=bool), n_gt, n_scans
    )
    return curve["fp_per_scan"], curve["sensitivity"]


def plot_froc(table: Table, path: Path) -> Path:
    """FROC curves (sensitivity vs FP per scan, log axis) of every row on one figure."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for row, label in zip(table.rows, row_labels(table), strict=True):
        pts = froc_points(row)
        if pts is None:
            continue
        fp, sens = pts
        fp = np.maximum(fp, FP_RATES[0] / 2)  # the origin sits at the left edge of the log axis
        ax.step(fp, sens, where="post", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlim(FP_RATES[0] / 2, max(FP_RATES) * 2)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(list(FP_RATES), [f"{r:g}" for r in FP_RATES])
    ax.set_xlabel("FP per scan (all scans)")
    ax.set_ylabel("Sensitivity")
    ax.set_title("FROC (seeds pooled)")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def size_recall(row: Row, edges: Sequence[float] = SIZE_EDGES_MM) -> tuple[np.ndarray, np.ndarray]:
    """Recall and number of CMBs per equivalent-diameter bin (seeds pooled), shape (bins,)."""
    diam, hit = [], []
    for run in row.runs:
        for c in run.cases:
            for g in c.gt:
                if g.attrs.get("ignore", False) or g.diameter_mm <= 0:
                    continue
                diam.append(g.diameter_mm)
                hit.append(g.matched)
    b = np.digitize(np.asarray(diam, dtype=float), np.asarray(edges, dtype=float))
    n = np.bincount(b, minlength=len(edges) + 1).astype(float)
    tp = np.bincount(b, weights=np.asarray(hit, dtype=float), minlength=len(edges) + 1)
    rec = np.divide(tp, n, out=np.full_like(n, np.nan), where=n > 0)
    return rec, n


def size_bin_labels(edges: Sequence[float] = SIZE_EDGES_MM) -> list[str]:
    labels = [f"<{edges[0]:g}"]
    labels += [f"{a:g}–{b:g}" for a, b in itertools.pairwise(edges)]
    return [*labels, f"≥{edges[-1]:g}"]


def plot_size_recall(table: Table, path: Path) -> Path:
    """Grouped bars: recall per CMB size bin (equivalent diameter, mm) for every row."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    labels = size_bin_labels()
    x = np.arange(len(labels), dtype=float)
    width = 0.8 / max(len(table.rows), 1)
    counts = None
    for i, (row, label) in enumerate(zip(table.rows, row_labels(table), strict=True)):
        rec, n = size_recall(row)
        counts = n / max(len(row.runs), 1)
        ax.bar(x + (i - (len(table.rows) - 1) / 2) * width, np.nan_to_num(rec), width, label=label)
    if counts is not None:
        labels = [f"{lab}\n(n={c:g})" for lab, c in zip(labels, counts, strict=True)]
    ax.set_xticks(x, labels)
    ax.set_xlabel("CMB equivalent diameter (mm)")
    ax.set_ylabel("Recall")
    ax.set_ylim(0, 1.05)
    ax.set_title("Recall by CMB size (seeds pooled)")
    ax.grid(True, axis="y", alpha=0.3)
    if table.rows:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def fp_per_case(row: Row) -> np.ndarray:
    """FP per scan of each case, averaged over the row's seeds (sorted by case id)."""
    sums: dict[str, list[float]] = {}
    for run in row.runs:
        for c in run.cases:
            sums.setdefault(c.case_id, []).append(float(c.fp))
    return np.array([np.mean(sums[k]) for k in sorted(sums)], dtype=float)


def plot_fp_distribution(table: Table, path: Path) -> Path:
    """Box plot plus points (deterministic jitter) of per-scan FP for every row."""
    fig = _figure(7.0, 0.6 * max(len(table.rows), 1) + 2.0)
    ax = fig.add_subplot(1, 1, 1)
    data = [fp_per_case(r) for r in table.rows]
    labels = row_labels(table)
    if data:
        ax.boxplot(data, orientation="horizontal", showfliers=False)
        rng = np.random.default_rng(0)
        for i, d in enumerate(data, start=1):
            ax.plot(d, i + rng.uniform(-0.15, 0.15, d.size), "o", ms=3, alpha=0.5, color="C0")
        ax.set_yticks(np.arange(1, len(data) + 1), labels)
        ax.invert_yaxis()
    ax.set_xlabel("FP per scan (per case, mean over seeds)")
    ax.set_title("False positives per scan")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
