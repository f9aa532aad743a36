"""The paired significance column: every row against the top row of its table.

Two rows are compared with :func:`cmbbench.scoring.compare.compare` on the cases they share:
a paired case bootstrap of the difference in pooled F1 (the same resampled cases for both
rows) and a Wilcoxon signed-rank test over per-case F1 (the test of the VALDO 2021 ranking).

With several seeds per row, each row is first reduced to *seed-averaged per-case results*:
for every case id, TP, FP, FN, the number of CMBs and of predictions are averaged over the
row's seeds (stored as sums scaled to a common denominator, which leaves every ratio —
recall, precision, F1, per-case F1 — unchanged). The rows' binarisation thresholds (each
model's own operating point) are not part of the comparison's rule parameters. The test then asks whether the rows differ
on these cases, not whether one seed beats another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cmbbench.leaderboard.store import MODEL_PARAMS
from cmbbench.leaderboard.table import Row, Table
from cmbbench.scoring.compare import compare
from cmbbench.scoring.records import CaseResult

ALPHA = 0.05


def seed_averaged_cases(row: Row, scale: int, case_ids: set[str]) -> list[CaseResult]:
    """Per-case results of ``row`` summed over its seeds and multiplied by
    ``scale / n_seeds`` (an integer), restricted to ``case_ids``."""
    n = len(row.runs)
    if scale % n:
        raise ValueError(f"scale {scale} is not a multiple of the number of seeds {n}")
    factor = scale // n
    sums: dict[str, dict[str, Any]] = {}
    for run in row.runs:
        for c in run.cases:
            if c.case_id not in case_ids:
                continue
            s = sums.setdefault(
                c.case_id,
                {"c": c, "n_gt": 0, "n_pred": 0, "tp": 0, "fp": 0, "fn": 0, "valdo": []},
            )
            for k in ("n_gt", "n_pred", "tp", "fp", "fn"):
                s[k] += getattr(c, k)
            if c.valdo_f1 is not None:
                s["valdo"].append(float(c.valdo_f1))
    out = []
    for cid in sorted(sums):
        s = sums[cid]
        c: CaseResult = s["c"]
        valdo = s["valdo"]
        out.append(
            CaseResult(
                case_id=cid,
                rule=c.rule,
                params={k: v for k, v in c.params.items() if k not in MODEL_PARAMS},
                spacing=c.spacing,
                shape=c.shape,
                n_gt=s["n_gt"] * factor,
                n_pred=s["n_pred"] * factor,
                tp=s["tp"] * factor,
                fp=s["fp"] * factor,
                fn=s["fn"] * factor,
                valdo_f1=sum(valdo) / len(valdo) if len(valdo) == n else None,
            )
        )
    return out


def _common_cases(rows: Sequence[Row]) -> set[str]:
    sets = [set(c.case_id for c in run.cases) for row in rows for run in row.runs]
    return set.intersection(*sets) if sets else set()


def compare_rows(top: Row, other: Row, *, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Paired test of ``other`` against ``top`` on their common cases.

    Returns ``{"n_cases", "diff_f1", "ci", "p_bootstrap", "p_wilcoxon", "significant",
    "note"}`` (``None`` where undefined); ``significant`` is true when both available
    p-values are below :data:`ALPHA`.
    """
    ids = _common_cases([top, other])
    if not ids:
        return {
            "n_cases": 0,
            "diff_f1": None,
            "ci": None,
            "p_bootstrap": None,
            "p_wilcoxon": None,
            "significant": None,
            "note": "no common cases",
        }
    scale = math.lcm(len(top.runs), len(other.runs))
    a = seed_averaged_cases(top, scale, ids)
    b = seed_averaged_cases(other, scale, ids)
    res = compare(a, b, n_bootstrap=n_bootstrap, seed=seed)
    f1 = res["metrics"]["f1_micro"]
    p_boot = f1.get("p")
    p_w = res["wilcoxon"].get("p")
    ps = [p for p in (p_boot, p_w) if p is not None]
    return {
        "n_cases": res["n_cases"],
        "diff_f1": f1.get("diff"),
        "ci": f1.get("ci"),
        "p_bootstrap": p_boot,
        "p_wilcoxon": p_w,
        "significant": (all(p < ALPHA for p in ps) if ps else None),
        "note": res["wilcoxon"].get("note"),
    }


def add_significance(table: Table) -> None:
    """Fill ``row.significance`` for every row of ``table`` (the top row is the reference)."""
    if not table.rows:
        return
    top = table.rows[0]
    top.significance = {"reference": True}
    for row in table.rows[1:]:
        row.significance = compare_rows(
            top, row, n_bootstrap=table.n_bootstrap, seed=table.bootstrap_seed
        )


def significance_text(row: Row) -> str:
    """``"ref"`` for the top row, else ``"ΔF1 -0.120, p=0.002 / 0.004 *"`` (bootstrap /
    Wilcoxon; ``*`` when both are below 0.05)."""
    s = row.significance
    if not s:
        return "n/a"
    if s.get("reference"):
        return "ref"
    if s.get("diff_f1") is None:
        return f"n/a ({s.get('note') or 'undefined'})"
    pb = "n/a" if s["p_bootstrap"] is None else f"{s['p_bootstrap']:.3f}"
    pw = "n/a" if s["p_wilcoxon"] is None else f"{s['p_wilcoxon']:.3f}"
    mark = " *" if s.get("significant") else ""
    return f"ΔF1 {s['diff_f1']:+.3f}, p={pb} / {pw}{mark}"
