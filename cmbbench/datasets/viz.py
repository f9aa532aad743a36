"""PNG montages of a case: axial crops through its CMBs with the labels outlined.

Like figure 8 of the seed report: for each CMB, the raw slice around it and the same crop
with the ground truth outlined (green); synthetic mimics (``meta["mimics"]``) are marked
with an orange ``x`` and their type (and a mimic map in ``CaseData.extra["mimics"]``, when
present, is outlined in dotted orange), ``ignore`` regions are outlined in yellow, centre
points (point-annotated sets) are red circles. Axial slices are taken along the array axis
closest to the world S–I axis and shown in radiological convention (patient right on the
viewer's left, anterior up), whatever the file's voxel order (e.g. VALDO's LAS).
Uses matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from nibabel.orientations import aff2axcodes

from cmbbench.cases import Case

_MIMIC_CENTRE_KEYS = (
    "center_mm",
    "centre_mm",
    "center_world_mm",
    "centre_world_mm",
    "world_mm",
    "xyz_mm",
    "center",
    "centre",
)


@dataclass(frozen=True)
class _View:
    """How to cut and orient axial slices of a volume."""

    ax_s: int  # array axis along S-I
    ax_ap: int
    ax_lr: int
    flip_rows: bool  # so that anterior is up
    flip_cols: bool  # so that patient right is on the left
    aspect: float  # pixel height / width

    @classmethod
    def of(cls, affine: np.ndarray, spacing: Sequence[float]) -> _View:
        codes = aff2axcodes(affine)
        ax_s = next(i for i, c in enumerate(codes) if c in "SI")
        ax_ap = next(i for i, c in enumerate(codes) if c in "AP")
        ax_lr = next(i for i, c in enumerate(codes) if c in "LR")
        return cls(
            ax_s,
            ax_ap,
            ax_lr,
            flip_rows=codes[ax_ap] == "A",
            flip_cols=codes[ax_lr] == "R",
            aspect=float(spacing[ax_ap]) / float(spacing[ax_lr]),
        )

    def slice2d(self, vol: np.ndarray, k: int) -> np.ndarray:
        sl = [slice(None)] * 3
        sl[self.ax_s] = k
        img = vol[tuple(sl)]
        rest = [a for a in range(3) if a != self.ax_s]
        if rest.index(self.ax_ap) != 0:
            img = img.T
        if self.flip_rows:
            img = img[::-1, :]
        if self.flip_cols:
            img = img[:, ::-1]
        return img

    def rowcol(self, vox: np.ndarray, shape: Sequence[int]) -> tuple[float, float]:
        r, c = float(vox[self.ax_ap]), float(vox[self.ax_lr])
        if self.flip_rows:
            r = shape[self.ax_ap] - 1 - r
        if self.flip_cols:
            c = shape[self.ax_lr] - 1 - c
        return r, c


def _crop(img: np.ndarray, r: float, c: float, half: tuple[int, int]) -> np.ndarray:
    """A (2h+1)-square crop centred at (r, c), padded with NaN outside the image."""
    hr, hc = half
    r0, c0 = round(r), round(c)
    out = np.full((2 * hr + 1, 2 * hc + 1), np.nan, dtype=np.float32)
    rs, re_ = max(r0 - hr, 0), min(r0 + hr + 1, img.shape[0])
    cs, ce = max(c0 - hc, 0), min(c0 + hc + 1, img.shape[1])
    if rs < re_ and cs < ce:
        out[rs - (r0 - hr) : re_ - (r0 - hr), cs - (c0 - hc) : ce - (c0 - hc)] = img[rs:re_, cs:ce]
    return out


def _outline(ax: Any, mask2d: np.ndarray, *, color: str, style: str) -> None:
    """Outline a 2-D mask along voxel edges (not through voxel centres, which shrinks small CMBs)."""
    up = max(2, min(8, 600 // max(mask2d.shape)))
    big = np.kron(mask2d.astype(np.float32), np.ones((up, up), np.float32))
    big = np.pad(big, 1)
    xs = (np.arange(big.shape[1]) - 1 + 0.5) / up - 0.5
    ys = (np.arange(big.shape[0]) - 1 + 0.5) / up - 0.5
    ax.contour(xs, ys, big, levels=[0.5], colors=color, linewidths=1.0, linestyles=style)


def cmb_sites(case: Case, *, connectivity: int = 26) -> list[tuple[np.ndarray, int]]:
    """(voxel centre (3,), size in voxels) of each CMB of a case, largest first.

    Masks: connected components; instance maps: ids; points: world centres mapped to voxels
    (size 0).
    """
    label = case.label
    if label is None or case.label_kind == "none":
        return []
    if case.label_kind == "points":
        pts = np.asarray(label, dtype=np.float64).reshape(-1, 3)
        inv = np.linalg.inv(case.affine)
        return [((inv @ np.append(p, 1.0))[:3], 0) for p in pts]
    lab = np.asarray(label)
    if case.label_kind == "instance":
        cc = lab.astype(np.int64)
    else:
        from cmbbench.scoring.components import label_volume

        cc = label_volume(lab, connectivity).astype(np.int64)
    idx = np.nonzero(cc)
    ids = cc[idx]
    sites = []
    for v in np.unique(ids):
        sel = ids == v
        centre = np.array([a[sel].mean() for a in idx])
        sites.append((centre, int(sel.sum())))
    sites.sort(key=lambda s: -s[1])
    return sites


def _artefact_note(case: Case) -> str:
    """One line naming the scan-wide artefacts of ``meta['artefacts']`` (synthetic v2), e.g.
    ``"artefacts: motion (ghosts on 12% of lines), noise_texture (g-factor 1.31)"``."""
    parts = []
    for rec in case.meta.get("artefacts") or []:
        if not isinstance(rec, dict):
            continue
        kind = str(rec.get("type", "artefact"))
        if kind == "motion":
            bits = []
            if rec.get("ghost_fraction") is not None:
                bits.append(f"ghosts on {rec['ghost_fraction']:.0%} of lines")
            if rec.get("ringing_keep") is not None:
                bits.append(f"ringing, {rec['ringing_keep']:.0%} of k-space")
            parts.append(f"motion ({', '.join(bits)})")
        elif kind == "noise_texture":
            parts.append(f"noise_texture (g-factor {rec.get('g_max', 1.0):.2f})")
        else:
            parts.append(kind)
    return "artefacts: " + ", ".join(parts) if parts else ""


def _anatomy_note(meta: dict[str, Any]) -> str:
    """One line naming a synthetic v2 subject's anatomy (``meta`` keys ``age``, ``atrophy``
    0-1, ``warp_rms_mm``, ``wmh_burden`` 0-1; what is absent is left out), e.g.
    ``"anatomy: age 74, atrophy 0.42, warp 2.1 mm RMS, WMH burden 0.60"``."""
    parts = []
    if meta.get("age") is not None:
        parts.append(f"age {float(meta['age']):.0f}")
    if meta.get("atrophy") is not None:
        parts.append(f"atrophy {float(meta['atrophy']):.2f}")
    if meta.get("warp_rms_mm") is not None:
        parts.append(f"warp {float(meta['warp_rms_mm']):.1f} mm RMS")
    if meta.get("wmh_burden") is not None:
        parts.append(f"WMH burden {float(meta['wmh_burden']):.2f}")
    return "anatomy: " + ", ".join(parts) if parts else ""


def _cmb_titles(case: Case, shown: list[tuple[np.ndarray, int]]) -> list[str]:
    """Panel titles of the CMBs ``shown`` (the first of :func:`cmb_sites`, same order): size,
    and for an instance label whose ``meta["lesion_attrs"]`` records the simulated raters'
    agreement, ``"1 of 2 raters"`` where only one marked it (agreement 0.5)."""
    attrs = case.meta.get("lesion_attrs") or {}
    agreement: list[float | None] = [None] * len(shown)
    if case.label_kind == "instance" and attrs and case.label is not None:
        lab = np.asarray(case.label)
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        order = sorted(range(len(ids)), key=lambda i: -counts[i])  # cmb_sites' (stable) order
        for j, i in enumerate(order[: len(shown)]):
            rec = attrs.get(str(int(ids[i]))) or attrs.get(int(ids[i]))
            if isinstance(rec, dict) and rec.get("agreement") is not None:
                agreement[j] = float(rec["agreement"])
    titles = []
    for i, ((_, n), a) in enumerate(zip(shown, agreement, strict=True)):
        bits = [f"{n} vox"] if n else []
        if a is not None and a < 1.0:
            bits.append("1 of 2 raters")
        titles.append(f"CMB {i + 1}" + (f" ({', '.join(bits)})" if bits else ""))
    return titles


def _mimics(case: Case) -> list[tuple[np.ndarray, str]]:
    """(voxel centre, kind) of the mimic records in ``meta['mimics']`` that carry a world centre."""
    recs = case.meta.get("mimics") or []
    inv = np.linalg.inv(case.affine)
    out = []
    for rec in recs:
        xyz: Any = None
        kind = "mimic"
        if isinstance(rec, dict):
            xyz = next((rec[k] for k in _MIMIC_CENTRE_KEYS if k in rec), None)
            kind = str(rec.get("type", rec.get("kind", "mimic")))
        elif isinstance(rec, list | tuple) and len(rec) == 3:
            xyz = rec
        if xyz is None:
            continue
        arr = np.asarray(xyz, dtype=np.float64).reshape(-1)
        if arr.size != 3:
            continue
        out.append(((inv @ np.append(arr, 1.0))[:3], kind))
    return out


def render_case(
    case: Case,
    out_path: str | os.PathLike[str],
    *,
    max_cmbs: int = 6,
    crop_mm: float = 40.0,
    dpi: int = 110,
    focus: Literal["cmbs", "mimics"] = "cmbs",
) -> Path:
    """Write a PNG montage of ``case`` to ``out_path`` and return the path.

    Up to ``max_cmbs`` CMBs (largest first), two panels each (image; image with outlines),
    cropped to ``crop_mm`` × ``crop_mm`` around the CMB in its axial slice. A case without
    CMBs shows three full axial slices (25/50/75 % of the way up) with mimics marked.
    ``focus="mimics"``: the panels are centred on one mimic of each kind in
    ``meta["mimics"]`` instead (up to ``max_cmbs`` kinds, in the order they are listed; not
    air-bone drop-out, whose recorded centre is the air pocket outside the brain).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.asarray(case.image, dtype=np.float32)
    label = case.label
    ignore = case.ignore
    extra = case.load().extra
    mimic_map = next((extra[k] for k in ("mimics", "mimic_map") if k in extra), None)
    if mimic_map is not None and np.shape(mimic_map) != np.shape(case.image):
        mimic_map = None
    view = _View.of(case.affine, case.spacing)
    shape = image.shape
    nz = image[image != 0]
    sample = nz[:: max(1, nz.size // 200_000)] if nz.size else image.ravel()
    vmin, vmax = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if vmax <= vmin:
        vmax = vmin + 1.0
    mask = None
    if label is not None and case.label_kind in ("mask", "instance"):
        mask = np.asarray(label) > 0
    sites = cmb_sites(case)
    n_total = len(sites)
    mimics = _mimics(case)
    if focus == "mimics":
        first: dict[str, np.ndarray] = {}
        for mc, kind in mimics:
            if kind != "air_bone":  # its centre is the air pocket, outside the brain
                first.setdefault(kind, mc)
        sites = [(mc, 0) for mc in first.values()]
        kinds = list(first)[:max_cmbs]

    if sites and focus == "mimics":
        half = (
            max(4, round(crop_mm / 2 / case.spacing[view.ax_ap])),
            max(4, round(crop_mm / 2 / case.spacing[view.ax_lr])),
        )
        panels = [(c, half) for c, _ in sites[:max_cmbs]]
        titles = [f"mimic: {k}" for k in kinds]
        per_row = min(2, len(panels))
    elif sites:
        shown = sites[:max_cmbs]
        half = (
            max(4, round(crop_mm / 2 / case.spacing[view.ax_ap])),
            max(4, round(crop_mm / 2 / case.spacing[view.ax_lr])),
        )
        panels = [(c, half) for c, _ in shown]
        titles = _cmb_titles(case, shown)
        per_row = min(2, len(panels))
    else:
        ks = [round(f * (shape[view.ax_s] - 1)) for f in (0.25, 0.5, 0.75)]
        panels = []
        for k in ks:
            centre = np.array(shape, dtype=np.float64) / 2 - 0.5
            centre[view.ax_s] = k
            panels.append((centre, None))
        titles = [f"slice {k}" for k in ks]
        per_row = 3

    n_rows = math.ceil(len(panels) / per_row)
    n_cols = per_row * (2 if sites else 1)
    fig = Figure(figsize=(2.6 * n_cols, 2.8 * n_rows + 0.5), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    what = f"{n_total} CMB(s)" + (f", showing {len(panels)}" if n_total > len(panels) else "")
    if focus == "mimics":
        what = f"{n_total} CMB(s); {len(panels)} mimic kind(s) shown"
    if not sites:
        what = "no CMBs" if label is not None else "unlabelled"
    group = case.meta.get("protocol") or case.meta.get("cohort") or ""
    sp = "×".join(f"{v:.2g}" for v in case.spacing)
    scan_notes = "\n".join(n for n in (_anatomy_note(case.meta), _artefact_note(case)) if n)
    fig.suptitle(
        f"{case.case_id}  {group}  {sp} mm  — {what}" + (f"\n{scan_notes}" if scan_notes else ""),
        fontsize=10,
    )

    for p, ((centre, half), title) in enumerate(zip(panels, titles, strict=True)):
        k = int(np.clip(round(float(centre[view.ax_s])), 0, shape[view.ax_s] - 1))
        img2 = view.slice2d(image, k)
        r, c = view.rowcol(centre, shape)
        if half is not None:
            img2 = _crop(img2, r, c, half)
            r0, c0 = round(r) - half[0], round(c) - half[1]
        else:
            r0, c0 = 0, 0
        row, col0 = divmod(p, per_row)
        ncell = 2 if sites else 1
        axes = [
            fig.add_subplot(n_rows, n_cols, row * n_cols + col0 * ncell + j + 1)
            for j in range(ncell)
        ]
        for j, ax in enumerate(axes):
            ax.imshow(
                np.ma.masked_invalid(img2),
                cmap="gray",
                vmin=vmin,
                vmax=vmax,
                aspect=view.aspect,
                interpolation="nearest",
            )
            ax.set_facecolor("black")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(
                title + (": image" if ncell == 2 and j == 0 else (": GT" if ncell == 2 else "")),
                fontsize=8,
            )
            overlay = j == ncell - 1
            if not overlay:
                continue
            for vol, color, style in (
                (mimic_map, "orange", "dotted"),
                (mask, "lime", "solid"),
                (ignore, "yellow", "dashed"),
            ):
                if vol is None:
                    continue
                m2 = view.slice2d(np.asarray(vol).astype(np.float32), k)
                if half is not None:
                    m2 = np.nan_to_num(_crop(m2, r, c, half))
                if m2.any():
                    _outline(ax, m2 > 0.5, color=color, style=style)
            if case.label_kind == "points":
                for pc, _ in sites:
                    if abs(pc[view.ax_s] - k) <= 0.5:
                        pr, pcol = view.rowcol(pc, shape)
                        ax.plot(pcol - c0, pr - r0, "o", mfc="none", mec="red", ms=9, mew=1.2)
            for mc, kind in mimics:
                if abs(mc[view.ax_s] - k) <= 0.5:
                    mr, mcol = view.rowcol(mc, shape)
                    rr, cc = mr - r0, mcol - c0
                    if 0 <= rr < img2.shape[0] and 0 <= cc < img2.shape[1]:
                        ax.plot(cc, rr, "x", color="orange", ms=7, mew=1.5)
                        ax.annotate(
                            kind,
                            (cc, rr),
                            color="orange",
                            fontsize=6,
                            xytext=(3, 3),
                            textcoords="offset points",
                        )
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", facecolor="white")
    return out
