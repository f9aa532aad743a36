"""Leaderboard plots (matplotlib, Agg canvas, no pyplot state): FROC curves of every row on
one figure, recall by CMB size, and the distribution of FP per scan. PNGs are written without
metadata (no software version, no timestamp), so regenerating them gives identical bytes.

The HTML page's forest plot of F1 and CPM (:func:`forest_svg`) is inline SVG written here as
text, with every coordinate at a fixed number of decimals: it does not depend on the
matplotlib version, so the page's bytes do not either."""

from __future__ import annotations

import html
import itertools
import re
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


_TRADEMARKS = re.compile(r"\((?:R|TM)\)|\bProcessor\b|\bCPU\b")


def short_hardware(hardware: str) -> str:
    """``"cpu (Intel(R) Xeon(R) Processor, 2 cores)"`` -> ``"cpu (Intel Xeon, 2 cores)"``:
    the hardware label without trademark signs and filler words, for legends."""
    return " ".join(_TRADEMARKS.sub("", hardware).split()).replace(" ,", ",")


def row_labels(table: Table) -> list[str]:
    """Legend labels: the model name, plus what tells apart the rows of a model that has
    several (its recipe where the recipes differ, its hardware where that differs)."""
    out = []
    for r in table.rows:
        same = [o for o in table.rows if o.model == r.model]
        if len(same) == 1:
            out.append(r.model)
            continue
        parts = []
        if len({o.recipe for o in same}) > 1:
            parts.append(r.recipe)
        if len({o.hardware for o in same}) > 1 or not parts:
            parts.append(short_hardware(r.hardware))
        out.append(f"{r.model} [{', '.join(parts)}]")
    return out


_LINES = ("-", "--", ":")
_HATCHES = (None, "//", "..")


def _color(i: int) -> str:
    """The i-th row's colour: the ten of matplotlib's default cycle; rows past the tenth
    repeat them with a dashed line or hatched bar (``_LINES``, ``_HATCHES``)."""
    return f"C{i % 10}"


def _legend_outside(fig, ax, n_entries: int) -> None:
    """A legend to the right of the axes (it never covers a curve or a bar), the figure
    widened so that the axes keep their width."""
    if n_entries == 0:
        return
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    w, h = fig.get_size_inches()
    fig.set_size_inches(w + 3.2, h)


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
    for i, (row, label) in enumerate(zip(table.rows, row_labels(table), strict=True)):
        pts = froc_points(row)
        if pts is None:
            continue
        fp, sens = pts
        fp = np.maximum(fp, FP_RATES[0] / 2)  # the origin sits at the left edge of the log axis
        ax.step(fp, sens, where="post", label=label, color=_color(i), linestyle=_LINES[i // 10 % 3])
    ax.set_xscale("log", base=2)
    ax.set_xlim(FP_RATES[0] / 2, max(FP_RATES) * 2)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(list(FP_RATES), [f"{r:g}" for r in FP_RATES])
    ax.set_xlabel("FP per scan (all scans)")
    ax.set_ylabel("Sensitivity")
    ax.set_title("FROC (seeds pooled)")
    ax.grid(True, alpha=0.3)
    _legend_outside(fig, ax, len(ax.lines))
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
        ax.bar(
            x + (i - (len(table.rows) - 1) / 2) * width,
            np.nan_to_num(rec),
            width,
            label=label,
            color=_color(i),
            hatch=_HATCHES[i // 10 % 3],
            edgecolor="white" if i >= 10 else None,
        )
    if counts is not None:
        labels = [f"{lab}\n(n={c:g})" for lab, c in zip(labels, counts, strict=True)]
    ax.set_xticks(x, labels)
    ax.set_xlabel("CMB equivalent diameter (mm)")
    ax.set_ylabel("Recall")
    ax.set_ylim(0, 1.05)
    ax.set_title("Recall by CMB size (seeds pooled)")
    ax.grid(True, axis="y", alpha=0.3)
    _legend_outside(fig, ax, len(table.rows))
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


# ---------------------------------------------------------------------------- forest plot
def cpm_missing(row: Row) -> str | None:
    """Why the row has no CPM (``None`` when it has one): ``"not reached: FROC ends at 0.79
    FP/scan"`` when the seeds' curves stop before the CPM's last rate (the seeds' range of
    curve ends), else ``"n/a: <the sweep's reason>"``."""
    if row.metrics["cpm"].mean is not None:
        return None
    ends, reasons = [], []
    for m in row.per_run:
        sw = m.get("sweep") or {}
        if sw.get("available"):
            end = (sw.get("curve_end") or {}).get("fp_per_scan")
            if end is not None:
                ends.append(float(end))
        else:
            reasons.append(str(sw.get("reason") or "no FROC"))
    if ends and not reasons:
        lo, hi = min(ends), max(ends)
        where = f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}"
        return f"not reached: FROC ends at {where} FP/scan"
    if reasons:
        return "n/a: " + "; ".join(sorted(set(reasons)))
    return "n/a"


def _seed_values(row: Row, name: str) -> list[float]:
    """The row's per-seed values of headline metric ``name`` (defined ones, seed order)."""
    out = []
    for m in row.per_run:
        v = (m.get("headline", {}).get(name) or {}).get("value")
        if v is not None and np.isfinite(float(v)):
            out.append(float(v))
    return out


def forest_f1(row: Row) -> tuple[float | None, list[float] | None]:
    """The F1 point and 95% interval the forest plot draws: the rankings' F1 pooled over the
    row's seeds with its seeds + cases interval, or, for a table without rankings, the mean
    F1 with the mean of the seeds' case-bootstrap intervals."""
    r = row.rank
    if r is not None and r.f1 is not None:
        return r.f1, r.seed_case_ci
    s = row.metrics["f1_micro"]
    ci = None if s.ci_lo is None or s.ci_hi is None else [s.ci_lo, s.ci_hi]
    return s.mean, ci


def forest_cpm(row: Row) -> tuple[float | None, list[float] | None]:
    """The CPM point and interval: the mean over seeds and the mean of the seeds'
    case-bootstrap intervals (``None`` when not reached)."""
    s = row.metrics["cpm"]
    ci = None if s.ci_lo is None or s.ci_hi is None else [s.ci_lo, s.ci_hi]
    return s.mean, ci


_ROW_H = 22
_TOP = 38
_BOTTOM = 28
_PANEL_W = 300
_GAP = 36
_CHAR_W = 6.5  # an estimate of a 12 px sans-serif character, to size the label column
_MAX_LABEL = 44


def _n(x: float) -> str:
    """An SVG coordinate: one decimal, no "-0.0" (fixed text, so the bytes are stable)."""
    t = f"{x:.1f}"
    return "0.0" if t == "-0.0" else t


def _clip01(x: float) -> float:
    return min(max(float(x), 0.0), 1.0)


def forest_svg(table: Table) -> str:
    """An inline SVG forest plot of the table's rows, in the table's order: F1 (point and 95%
    interval of :func:`forest_f1`, each seed's F1 as a tick, a dashed line at the top row's
    F1) and FROC CPM (:func:`forest_cpm`; a row without CPM says why, in place of a mark,
    :func:`cpm_missing`), on a shared 0–1 axis per panel. Every mark has a hover title.
    Empty string for a table without rows."""
    rows = table.rows
    if not rows:
        return ""
    labels = [f"{k} {lab}" for k, lab in enumerate(row_labels(table), start=1)]
    shown = [lab if len(lab) <= _MAX_LABEL else lab[: _MAX_LABEL - 1] + "…" for lab in labels]
    label_w = round(max(len(s) for s in shown) * _CHAR_W) + 16
    x0 = (label_w, label_w + _PANEL_W + _GAP)
    width = label_w + 2 * _PANEL_W + _GAP + 16
    height = _TOP + _ROW_H * len(rows) + _BOTTOM
    bottom = _TOP + _ROW_H * len(rows)

    def x(panel: int, v: float) -> str:
        return _n(x0[panel] + _clip01(v) * _PANEL_W)

    out = [
        f'<svg class="forest" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-size="12">',
        f"<title>{html.escape(table.key.title)}: F1 and FROC CPM per row, 95% intervals</title>",
    ]
    for k in range(len(rows)):
        if k % 2:
            out.append(
                f'<rect x="0" y="{_TOP + k * _ROW_H}" width="{width}" height="{_ROW_H}" '
                'fill="#f4f4f4"/>'
            )
    panels = (
        ("F1", "pooled over seeds · 95% seeds + cases interval"),
        ("FROC CPM", "mean over seeds · mean 95% case-bootstrap interval"),
    )
    for panel, (name, what) in enumerate(panels):
        left = x0[panel]
        out.append(
            f'<text x="{left}" y="14" font-weight="bold">{name}</text>'
            f'<text x="{left}" y="27" font-size="10" fill="#666">{html.escape(what)}</text>'
        )
        for t in (0.0, 0.25, 0.5, 0.75, 1.0):
            xt = x(panel, t)
            out.append(
                f'<line x1="{xt}" y1="{_TOP - 6}" x2="{xt}" y2="{bottom}" stroke="#ddd"/>'
                f'<text x="{xt}" y="{bottom + 16}" text-anchor="middle" fill="#555">{t:g}</text>'
            )
        out.append(
            f'<line x1="{left}" y1="{bottom}" x2="{left + _PANEL_W}" y2="{bottom}" stroke="#888"/>'
        )
    top_f1 = forest_f1(rows[0])[0]
    if top_f1 is not None:
        xt = x(0, top_f1)
        out.append(
            f'<line class="top" x1="{xt}" y1="{_TOP - 6}" x2="{xt}" y2="{bottom}" '
            'stroke="#c44" stroke-dasharray="4 3"/>'
        )
    for k, (row, label, short) in enumerate(zip(rows, labels, shown, strict=True)):
        yc = _TOP + k * _ROW_H + _ROW_H / 2
        out.append(f'<g class="row" data-row="{k + 1}">')
        out.append(
            f'<text x="6" y="{_n(yc + 4)}"><title>{html.escape(label)}</title>'
            f"{html.escape(short)}</text>"
        )
        for panel, (metric, point) in enumerate(
            (("f1_micro", forest_f1(row)), ("cpm", forest_cpm(row)))
        ):
            value, ci = point
            cls = ("f1", "cpm")[panel]
            if value is None:
                why = "n/a" if panel == 0 else (cpm_missing(row) or "n/a")
                out.append(
                    f'<text class="{cls} na" x="{_n(x0[panel] + 4)}" y="{_n(yc + 4)}" '
                    f'fill="#777" font-style="italic" font-size="11">{html.escape(why)}</text>'
                )
                continue
            what = (
                ("F1 pooled over seeds", "seeds + cases 95% interval")
                if panel == 0 and row.rank is not None and row.rank.f1 is not None
                else (
                    "mean " + ("F1" if panel == 0 else "CPM") + " over seeds",
                    "mean of the seeds' case-bootstrap 95% intervals",
                )
            )
            seeds = _seed_values(row, metric)
            tip = f"{label}: {what[0]} {value:.3f}"
            if ci is not None:
                tip += f", {what[1]} [{ci[0]:.3f}, {ci[1]:.3f}]"
            if len(row.runs) > 1:
                tip += "; seeds " + ", ".join(f"{v:.3f}" for v in seeds)
                if len(seeds) < len(row.runs):
                    tip += f" ({len(seeds)} of {len(row.runs)} seeds reach it)"
            out.append(f'<g class="{cls}"><title>{html.escape(tip)}</title>')
            if ci is not None:
                out.append(
                    f'<line class="ci" x1="{x(panel, ci[0])}" y1="{_n(yc)}" '
                    f'x2="{x(panel, ci[1])}" y2="{_n(yc)}" stroke="#4a78b0" stroke-width="3"/>'
                )
            if len(row.runs) > 1:
                for v in seeds:
                    xs = x(panel, v)
                    out.append(
                        f'<line class="seed" x1="{xs}" y1="{_n(yc - 6)}" x2="{xs}" '
                        f'y2="{_n(yc + 6)}" stroke="#333" stroke-opacity="0.55"/>'
                    )
            out.append(
                f'<circle class="pt" cx="{x(panel, value)}" cy="{_n(yc)}" r="4" fill="#1f4e89"/>'
            )
            if panel == 1 and len(seeds) < len(row.runs):
                end = x(panel, ci[1] if ci is not None else value)
                out.append(
                    f'<text x="{_n(float(end) + 8)}" y="{_n(yc + 4)}" fill="#777" '
                    f'font-size="11">{len(seeds)} of {len(row.runs)} seeds</text>'
                )
            out.append("</g>")
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)
