"""The ``strata`` section of :func:`cmbbench.scoring.metrics.aggregate`: recall and precision
by lesion size (equivalent-diameter bins, mm), by case cohort/protocol (``CaseResult.meta``)
and by anatomical region (``Lesion.attrs["region"]``). Ignored lesions are left out."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cmbbench.scoring.rates import detection_rates, ratio
from cmbbench.scoring.records import CaseResult, Lesion
from cmbbench.scoring.table import is_ignored
from cmbbench.scoring.table import optional_float as _f


def _size_known(lesion: Lesion) -> bool:
    return lesion.voxels > 0 or lesion.diameter_mm > 0


def _bin_labels(edges: Sequence[float]) -> list[tuple[str, float | None, float | None]]:
    out: list[tuple[str, float | None, float | None]] = [(f"<{edges[0]:g}", None, edges[0])]
    for a, b in itertools.pairwise(edges):
        out.append((f"{a:g}-{b:g}", a, b))
    out.append((f">={edges[-1]:g}", edges[-1], None))
    return out


def _size_strata(
    lesions: list[Lesion], edges: Sequence[float], rate_name: str
) -> tuple[list[dict[str, Any]], int]:
    known = [x for x in lesions if _size_known(x)]
    diam = np.array([x.diameter_mm for x in known], dtype=np.float64)
    hit = np.array([x.matched for x in known], dtype=bool)
    which = np.searchsorted(np.asarray(edges, dtype=np.float64), diam, side="right")
    rows = []
    for j, (label, lo, hi) in enumerate(_bin_labels(edges)):
        sel = which == j
        n, tp = int(sel.sum()), int(hit[sel].sum())
        rows.append(
            {"bin": label, "lo_mm": lo, "hi_mm": hi, "n": n, "tp": tp, rate_name: _f(ratio(tp, n))}
        )
    return rows, len(lesions) - len(known)


def _group_detection(cases: list[CaseResult], key: Callable[[CaseResult], str]) -> dict[str, Any]:
    groups: dict[str, list[CaseResult]] = {}
    for c in cases:
        groups.setdefault(key(c), []).append(c)
    out = {}
    for name in sorted(groups):
        g = groups[name]
        tp = sum(c.tp for c in g)
        fp = sum(c.fp for c in g)
        fn = sum(c.fn for c in g)
        rates = detection_rates(tp, fp, fn)
        out[name] = {
            "n_cases": len(g),
            "n_gt": sum(c.n_gt for c in g),
            "n_pred": sum(c.n_pred for c in g),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "recall": _f(rates.recall),
            "precision": _f(rates.precision),
            "f1": _f(rates.f1),
            "fp_per_scan": _f(fp / len(g)),
        }
    return out


def _region_rates(lesions: list[Lesion], rate_name: str) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for x in lesions:
        region = x.attrs.get("region")
        if region is None:
            continue
        row = out.setdefault(str(region), {"n": 0, "tp": 0})
        row["n"] += 1
        row["tp"] += int(bool(x.matched))
    for row in out.values():
        row[rate_name] = _f(ratio(row["tp"], row["n"]))
    return dict(sorted(out.items()))


def strata_section(cases: list[CaseResult], edges: Sequence[float]) -> dict[str, Any]:
    """Size strata over the inner bin ``edges`` (equivalent diameter, mm; lesions of unknown
    size counted apart), cohort/protocol groups when any case has them, region rates when
    any lesion has a region."""
    gts = [g for c in cases for g in c.gt if not is_ignored(g)]
    preds = [p for c in cases for p in c.pred if not is_ignored(p)]
    gt_rows, gt_unknown = _size_strata(gts, edges, "recall")
    pred_rows, pred_unknown = _size_strata(preds, edges, "precision")
    out: dict[str, Any] = {
        "size_bins_mm": [float(e) for e in edges],
        "gt_size": gt_rows,
        "n_gt_size_unknown": gt_unknown,
        "pred_size": pred_rows,
        "n_pred_size_unknown": pred_unknown,
    }
    for meta_key in ("cohort", "protocol"):
        if any(c.meta.get(meta_key) is not None for c in cases):
            out[meta_key] = _group_detection(
                cases,
                lambda c, k=meta_key: "unknown" if c.meta.get(k) is None else str(c.meta[k]),
            )
    region_gt = _region_rates(gts, "recall")
    if region_gt:
        out["region_gt"] = region_gt
    region_pred = _region_rates(preds, "precision")
    if region_pred:
        out["region_pred"] = region_pred
    return out
