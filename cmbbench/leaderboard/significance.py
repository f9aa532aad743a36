"""Rank a table and fill its significance column: the named ranking, the shared-resample
rankings, and every row against the top row.

:func:`add_significance` is what :func:`cmbbench.leaderboard.build_tables` calls per table:

* ``ranking="bootstrap"`` (the default): rows stay in the order of their mean F1;
* ``ranking="valdo"``: rows are reordered by VALDO 2021's significance-count ranking
  (:mod:`cmbbench.leaderboard.valdo_ranking`);

then :func:`cmbbench.leaderboard.rankings.rank_table` computes the all-pairs comparisons,
rank intervals and seed + case intervals from one shared case resample, and each row's
``significance`` is its pair with the top row (ΔF1 = row - top, the Holm-adjusted p).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from cmbbench.errors import InputError
from cmbbench.leaderboard.rankings import ALPHA, rank_table
from cmbbench.leaderboard.table import Row, Table
from cmbbench.leaderboard.valdo_ranking import order_by_valdo

Ranking = Literal["bootstrap", "valdo"]
RANKINGS: tuple[str, ...] = get_args(Ranking)

__all__ = ["ALPHA", "RANKINGS", "Ranking", "add_significance", "check_ranking"]


def check_ranking(ranking: str) -> Ranking:
    """``ranking`` itself when it names a ranking, else an :class:`InputError` listing them."""
    if ranking not in RANKINGS:
        valid = ", ".join(repr(r) for r in RANKINGS)
        raise InputError(f"unknown ranking {ranking!r}; valid rankings: {valid}")
    return ranking  # type: ignore[return-value]


def add_significance(table: Table, ranking: Ranking = "bootstrap") -> None:
    """Order ``table``'s rows by ``ranking``, fill ``table.rankings`` (and ``table.valdo``
    for the VALDO ranking), each row's ``rank`` and its ``significance`` against the top row."""
    table.ranking = check_ranking(ranking)
    if ranking == "valdo":
        table.valdo = order_by_valdo(table)
    res = rank_table(table)
    table.rankings = res
    if not table.rows:
        return
    table.rows[0].significance = {"reference": True}
    for k, row in enumerate(table.rows):
        row.rank = res.rows[k] if res is not None else None
        if k == 0:
            continue
        pair = res.pair(0, k) if res is not None else None
        if pair is None or pair.diff is None:
            note = "no case common to all rows" if res is None else "F1 undefined"
            row.significance = {"diff_f1": None, "note": note}
            continue
        ci = [-pair.ci[1], -pair.ci[0]] if pair.ci is not None else None
        row.significance = {
            "diff_f1": -pair.diff,  # row - top
            "ci": ci,
            "p_bootstrap": pair.p,
            "p_holm": pair.p_holm,
            "significant": None if pair.p_holm is None else pair.p_holm < ALPHA,
        }


def significance_text(row: Row) -> str:
    """``"ref"`` for the top row, else ``"ΔF1 -0.120, p=0.012 *"``: the difference in pooled
    F1 to the top row and its Holm-adjusted paired bootstrap p (``*`` below 0.05)."""
    s: dict[str, Any] = row.significance or {}
    if not s:
        return "n/a"
    if s.get("reference"):
        return "ref"
    if s.get("diff_f1") is None:
        return f"n/a ({s.get('note') or 'undefined'})"
    p = s.get("p_holm")
    mark = " *" if s.get("significant") else ""
    return f"ΔF1 {s['diff_f1']:+.3f}, p={'n/a' if p is None else f'{p:.3f}'}{mark}"
