"""Paired comparison of two result sets scored on the same cases.

:func:`compare` pairs the cases of ``a`` and ``b`` by case id and reports, for each compared
metric, ``a``, ``b`` and the difference ``b - a`` with a *paired* case-bootstrap interval
(the same resampled cases for both sets) and a two-sided bootstrap p-value, plus a Wilcoxon
signed-rank test over per-case F1 (the test the VALDO 2021 ranking used).

Returned dict (JSON-able; ``None`` = undefined)::

    {
      "schema": "cmbbench.compare/1",
      "rule": str, "params": {...},  # the rule's parameters but the operating threshold
      "thresholds": {"a": float, "b": float},  # each side's own operating threshold
      "n_cases": int,
      "bootstrap": {"n_bootstrap", "seed", "ci", "unit": "case", "method": "paired percentile"},
      "metrics": {name: {"a", "b", "diff", "ci": [lo, hi]|None, "p": float|None}, ...},
      "wilcoxon": {"metric", "n", "n_zero", "statistic", "p", "median_diff", "note"},
    }

``metrics`` holds ``f1_micro``, ``recall_micro``, ``precision_micro``, ``fp_per_scan`` and
``f1_macro``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cmbbench.errors import InputError
from cmbbench.io import dumps
from cmbbench.scoring.bootstrap import percentile_ci, resample_counts, two_sided_p, validate
from cmbbench.scoring.records import CaseResult, ScoreReport
from cmbbench.scoring.rules import rule_key
from cmbbench.scoring.table import CaseTable, headline_stats, prepare_cases

SCHEMA = "cmbbench.compare/1"

COMPARED: dict[str, str] = {
    "f1_micro": "F1 (micro)",
    "recall_micro": "Recall (micro)",
    "precision_micro": "Precision (micro)",
    "fp_per_scan": "FP per scan",
    "f1_macro": "F1 (macro)",
}


def _cases(x: ScoreReport | Sequence[CaseResult], name: str) -> list[CaseResult]:
    cases = x.cases if isinstance(x, ScoreReport) else list(x)
    if not cases:
        raise InputError(f"result set {name} has no cases")
    return prepare_cases(cases)


def _id_list(ids: set[str], limit: int = 5) -> str:
    shown = sorted(ids)[:limit]
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(repr(i) for i in shown) + more


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def _per_case_f1(cases: list[CaseResult]) -> np.ndarray:
    """Per-case F1: the official valdo F1 under the valdo rule, else 2TP/(2TP+FP+FN)."""
    if cases[0].rule == "valdo":
        return np.array(
            [math.nan if c.valdo_f1 is None else float(c.valdo_f1) for c in cases], dtype=float
        )
    return np.array([c.f1 for c in cases], dtype=float)


def _wilcoxon(f1_a: np.ndarray, f1_b: np.ndarray) -> dict[str, Any]:
    from scipy.stats import wilcoxon

    ok = np.isfinite(f1_a) & np.isfinite(f1_b)
    d = f1_b[ok] - f1_a[ok]
    out: dict[str, Any] = {
        "metric": "per-case F1 (b - a)",
        "n": int(ok.sum()),
        "n_zero": int(np.sum(d == 0)),
        "statistic": None,
        "p": None,
        "median_diff": _num(np.median(d)) if d.size else None,
        "note": None,
    }
    if d.size == 0:
        out["note"] = "no case has a defined F1 in both sets"
    elif not np.any(d != 0):
        out["p"] = 1.0
        out["note"] = "every per-case difference is zero"
    else:
        res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out["statistic"] = _num(res.statistic)
        out["p"] = _num(res.pvalue)
    return out


def compare(
    a: ScoreReport | Sequence[CaseResult],
    b: ScoreReport | Sequence[CaseResult],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Paired comparison ``b - a`` of two result sets on the same cases.

    Both sets must hold the same case ids and share rule and parameters (an
    :class:`InputError` names the missing/extra ids or both rules otherwise). The cases are
    resampled ``n_bootstrap`` times (``numpy.random.default_rng(seed)``; the same draws for
    ``a`` and ``b``) for a percentile interval of level ``ci`` and a two-sided p-value of each
    difference. Returns the dict described in the module docstring.
    """
    validate(n_bootstrap, ci)
    ca, cb = _cases(a, "A"), _cases(b, "B")
    ids_a, ids_b = {c.case_id for c in ca}, {c.case_id for c in cb}
    if ids_a != ids_b:
        parts = []
        if ids_a - ids_b:
            parts.append(f"missing from B: {_id_list(ids_a - ids_b)}")
        if ids_b - ids_a:
            parts.append(f"missing from A: {_id_list(ids_b - ids_a)}")
        raise InputError("the two result sets hold different cases; " + "; ".join(parts))
    # each side's own operating threshold is its model's choice; the rule and the rest of
    # its parameters must agree (rules.rule_key, as for aggregating cases)
    if ca[0].rule != cb[0].rule or dumps(rule_key(ca[0].params)) != dumps(rule_key(cb[0].params)):
        raise InputError(
            "the two result sets were scored differently: "
            f"A used rule {ca[0].rule!r} with {ca[0].params!r}, "
            f"B used rule {cb[0].rule!r} with {cb[0].params!r}"
        )
    ta, tb = CaseTable(ca), CaseTable(cb)
    ones = np.ones((1, ta.n))
    pa = {k: v[0] for k, v in headline_stats(ta, ones).items()}
    pb = {k: v[0] for k, v in headline_stats(tb, ones).items()}
    sa: dict[str, np.ndarray] = {}
    sb: dict[str, np.ndarray] = {}
    if n_bootstrap > 0:
        w = resample_counts(ta.n, n_bootstrap, seed)
        sa, sb = headline_stats(ta, w), headline_stats(tb, w)
    metrics: dict[str, Any] = {}
    for key in COMPARED:
        va, vb = _num(pa[key]), _num(pb[key])
        diff = vb - va if va is not None and vb is not None else None
        row: dict[str, Any] = {"a": va, "b": vb, "diff": diff, "ci": None, "p": None}
        if diff is not None and n_bootstrap > 0:
            d = sb[key] - sa[key]
            row["ci"] = percentile_ci(d, ci)
            row["p"] = two_sided_p(d)
        metrics[key] = row
    return {
        "schema": SCHEMA,
        "rule": ca[0].rule,
        "params": rule_key(dict(ca[0].params)),
        "thresholds": {"a": ca[0].params.get("threshold"), "b": cb[0].params.get("threshold")},
        "n_cases": ta.n,
        "bootstrap": {
            "n_bootstrap": int(n_bootstrap),
            "seed": int(seed),
            "ci": float(ci),
            "unit": "case",
            "method": "paired percentile",
        },
        "metrics": metrics,
        "wilcoxon": _wilcoxon(_per_case_f1(ca), _per_case_f1(cb)),
    }
