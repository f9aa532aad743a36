"""Every candidate a model emits for one case, for the full confidence sweep (FROC, CPM, AP).

Counting metrics (TP, FP, FN, F1, FP per scan) use a model's *operating point*: its tuned
threshold and post-processing. A FROC curve needs more than that: all the lesions the model
would report at any threshold. For a probability map these are the connected components of
``prob >= floor`` at a low, recorded candidate floor, each scored by its maximum probability
(as picai_eval's lesion candidates and LUNA16's candidate lists); lowering the threshold from
1 to the floor keeps more and more whole candidates, never re-matching them.

:class:`Candidates` is stored in the case's :class:`~cmbbench.scoring.records.CaseResult`
(``candidates``): one score per candidate, the indices of the candidates that count as true
positives in the sweep (per CMB the highest-scoring matched candidate, as in the operating
point's sweep), and the indices of the candidates that hold a component kept at the operating
point. A cap per case bounds the list (the lowest scores are dropped first, and the cap and
the number found are recorded), so a record stays small. This module imports neither torch
nor nibabel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmbbench.errors import InputError

#: candidates kept per case at most (highest scores first); 500 is far beyond the ~10 per
#: scan a trained network emits at the default floor, and keeps a 300-scan record at a few MB
DEFAULT_CANDIDATE_CAP = 500
#: the default candidate floor: components of ``prob >= 0.01``. Measured on the quick unet3d
#: (seed 0, 5 test scans): 1.4 components per scan at 0.5, 6.2 at 0.05, 13.6 at 0.01, i.e.
#: the sweep reaches ~12 FP per scan, past the CPM's 8
DEFAULT_CANDIDATE_FLOOR = 0.01


@dataclass(frozen=True)
class Candidates:
    """A case's candidates: ``scores`` (one per candidate, finite), the indices of the
    sweep's true positives (``tp``) and of the candidates kept at the operating point
    (``operating``); ``floor``: the probability they were extracted at; ``n_found`` and
    ``cap``: how many there were before the cap, and the cap (``None`` when not hit)."""

    floor: float
    scores: tuple[float, ...]
    tp: tuple[int, ...] = ()
    operating: tuple[int, ...] = ()
    n_found: int = 0
    cap: int | None = None

    def __post_init__(self) -> None:
        n = len(self.scores)
        for name in ("tp", "operating"):
            idx = getattr(self, name)
            if any(not (0 <= int(i) < n) for i in idx) or len(set(idx)) != len(idx):
                raise InputError(f"candidates: {name} indices must be distinct and in [0, {n})")
        if not np.all(np.isfinite(np.asarray(self.scores, dtype=np.float64))):
            raise InputError("candidate scores must be finite; received NaN or Inf")

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def is_tp(self) -> NDArray[np.bool_]:
        """Bool ``(N,)``: the sweep's true positives."""
        out = np.zeros(len(self.scores), dtype=bool)
        out[list(self.tp)] = True
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "floor": float(self.floor),
            "scores": [float(s) for s in self.scores],
            "tp": [int(i) for i in self.tp],
            "operating": [int(i) for i in self.operating],
            "n_found": int(self.n_found),
            "cap": None if self.cap is None else int(self.cap),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidates:
        return cls(
            floor=float(d["floor"]),
            scores=tuple(float(s) for s in d.get("scores", [])),
            tp=tuple(int(i) for i in d.get("tp", [])),
            operating=tuple(int(i) for i in d.get("operating", [])),
            n_found=int(d.get("n_found", len(d.get("scores", [])))),
            cap=None if d.get("cap") is None else int(d["cap"]),
        )


def one_tp_per_cmb(
    pred_ids: Sequence[int],
    scores: Sequence[float],
    matched: set[int],
    pairs: Sequence[tuple[int, int]],
) -> set[int]:
    """The matched predictions counted as true positives by a sweep: per CMB the
    highest-scoring matched prediction (ties: the lower id); a matched prediction absent from
    ``pairs`` (``(pred_id, gt_id)``) counts as it is. The others matched to an already-found
    CMB are neither TP nor FP (``valdo`` ties)."""
    score = dict(zip(pred_ids, scores, strict=True))
    best: dict[int, int] = {}
    paired: set[int] = set()
    for pred_id, gt_id in pairs:
        if pred_id not in matched:
            continue
        paired.add(pred_id)
        cur = best.get(gt_id)
        if cur is None or (score[pred_id], -pred_id) > (score[cur], -cur):
            best[gt_id] = pred_id
    return set(best.values()) | (matched - paired)


def build_candidates(
    floor_result: Any,
    operating_hit: NDArray[np.bool_] | None,
    *,
    floor: float,
    cap: int = DEFAULT_CANDIDATE_CAP,
) -> Candidates:
    """:class:`Candidates` from the case scored at ``floor`` (a
    :class:`~cmbbench.scoring.records.CaseResult` whose predicted lesions are the candidates,
    in component order) and ``operating_hit`` (bool per predicted lesion of that result: it
    holds a component kept at the operating point). Lesions in ignore regions are left out
    (as they are from the counts); the ``cap`` highest scores are kept."""
    if cap < 1:
        raise InputError(f"candidate cap must be >= 1; received {cap}")
    keep = [k for k, p in enumerate(floor_result.pred) if not p.attrs.get("ignore", False)]
    preds = [floor_result.pred[k] for k in keep]
    if any(p.score is None for p in preds):
        raise InputError("candidates need scored predictions (a probability map)")
    matched = {p.id for p in preds if p.matched}
    tp_ids = one_tp_per_cmb(
        [p.id for p in preds],
        [float(p.score) for p in preds],  # type: ignore[arg-type]
        matched,
        [(q.pred_id, q.gt_id) for q in floor_result.pairs],
    )
    # matched predictions that are not the CMB's best are neither TP nor FP: left out
    rows = [
        (
            float(p.score),
            p.id in tp_ids,
            bool(operating_hit[k]) if operating_hit is not None else False,
        )  # type: ignore[arg-type]
        for k, p in zip(keep, preds, strict=True)
        if not (p.id in matched and p.id not in tp_ids)
    ]
    n_found = len(rows)
    order = sorted(range(n_found), key=lambda i: -rows[i][0])  # stable: ties keep their order
    capped = n_found > cap
    order = order[:cap]
    return Candidates(
        floor=float(floor),
        scores=tuple(rows[i][0] for i in order),
        tp=tuple(j for j, i in enumerate(order) if rows[i][1]),
        operating=tuple(j for j, i in enumerate(order) if rows[i][2]),
        n_found=n_found,
        cap=cap if capped else None,
    )
