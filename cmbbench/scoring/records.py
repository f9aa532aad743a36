"""Per-case scoring records and their JSON form.

A :class:`CaseResult` is everything the aggregate metrics, the leaderboards and the paired
comparisons need: nothing downstream ever re-reads an image. The JSON layout is part of the
scoring contract (``docs/scoring.md``, "The per-case record").
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cmbbench.errors import InputError
from cmbbench.io import jsonable, write_json_atomic
from cmbbench.scoring.candidates import Candidates
from cmbbench.scoring.rates import DetectionRates, detection_rates

RULES: tuple[str, ...] = ("overlap", "distance", "valdo", "point")

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Lesion:
    """One connected component (ground-truth CMB or predicted lesion).

    ``id`` is the component's 1-based index in a deterministic order (ascending first
    foreground voxel in C order), or the instance label value when instance labels were
    given. Sizes are 0 for point inputs. Centres are in world millimetres (through the
    affine; for the ``valdo`` rule additionally stored as index × spacing in ``centre_vox_mm``).
    """

    id: int
    voxels: int = 0
    volume_mm3: float = 0.0
    diameter_mm: float = 0.0  # equivalent-sphere diameter, (6 V / pi) ** (1/3)
    centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    score: float | None = None  # predictions: max probability (or the point's score)
    matched: bool = False  # TP for predictions, detected for ground truth
    attrs: dict[str, Any] = field(default_factory=dict)  # e.g. region, cohort, "ignore"
    # valdo rule only: centre of mass as voxel index x spacing (mm, no affine)
    centre_vox_mm: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Pair:
    """A matched (prediction, CMB) pair."""

    pred_id: int
    gt_id: int
    overlap_voxels: int
    distance_mm: float
    dice: float


@dataclass
class CaseResult:
    """The scored outcome of one case under one rule.

    Invariants (checked by :meth:`check`): ``tp + fn == n_gt`` and ``tp + fp == n_pred``,
    except for the ``valdo`` rule's documented tie behaviour.
    """

    case_id: str
    rule: str
    params: dict[str, Any]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int] | None
    n_gt: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    pairs: list[Pair] = field(default_factory=list)
    gt: list[Lesion] = field(default_factory=list)
    pred: list[Lesion] = field(default_factory=list)
    # voxel-level counts for voxel-wise Dice and volume difference (0 for point inputs)
    gt_voxels: int = 0
    pred_voxels: int = 0
    intersection_voxels: int = 0
    # predictions not counted because they only touch "ignore" regions/CMBs
    n_ignored: int = 0
    # the official per-case F1 of the valdo rule (NaN when the ground truth is empty)
    valdo_f1: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # cohort, protocol, ...
    # every candidate the model emitted, for the full sweep (None: the operating point only)
    candidates: Candidates | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def recall(self) -> float:
        """Per-case recall ``TP / n_gt``; NaN when there is no CMB.

        Deliberately not :func:`~cmbbench.scoring.rates.detection_rates`' ``TP / (TP + FN)``:
        the two agree whenever ``TP + FN == n_gt``, but a ``valdo`` exact tie (two TPs on one
        CMB) breaks that, and the per-case CSV has always reported ``TP / n_gt``.
        """
        return self.tp / self.n_gt if self.n_gt else math.nan

    @property
    def precision(self) -> float:
        """Per-case precision ``TP / (TP + FP)`` (= ``TP / n_pred`` under every rule); NaN
        when there is no prediction."""
        return self._rates().precision

    @property
    def f1(self) -> float:
        """Per-case F1 = 2TP / (2TP + FP + FN); NaN when both sides are empty."""
        return self._rates().f1

    def _rates(self) -> DetectionRates[float]:
        return detection_rates(self.tp, self.fp, self.fn)

    def check(self) -> None:
        """Raise ``AssertionError`` when the count invariants do not hold."""
        if self.rule == "valdo":
            return
        if self.tp + self.fn != self.n_gt or self.tp + self.fp != self.n_pred:
            raise AssertionError(
                f"case {self.case_id!r}: inconsistent counts tp={self.tp} fp={self.fp} "
                f"fn={self.fn} n_gt={self.n_gt} n_pred={self.n_pred}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``candidates`` appears only when the case has them."""
        d = asdict(self)
        d["spacing"] = list(self.spacing)
        d["shape"] = list(self.shape) if self.shape is not None else None
        if self.candidates is None:
            del d["candidates"]
        else:
            d["candidates"] = self.candidates.to_dict()
        return jsonable(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CaseResult:
        d = dict(d)
        d["spacing"] = tuple(float(v) for v in d["spacing"])
        d["shape"] = tuple(int(v) for v in d["shape"]) if d.get("shape") is not None else None
        d["pairs"] = [Pair(**p) for p in d.get("pairs", [])]
        d["gt"] = [_lesion(x) for x in d.get("gt", [])]
        d["pred"] = [_lesion(x) for x in d.get("pred", [])]
        cand = d.get("candidates")
        d["candidates"] = None if cand is None else Candidates.from_dict(cand)
        if d.get("valdo_f1") is None and "valdo_f1" in d:
            d["valdo_f1"] = None
        return cls(**d)


def _lesion(x: Mapping[str, Any]) -> Lesion:
    x = dict(x)
    x["centre_mm"] = tuple(float(v) for v in x.get("centre_mm", (0.0, 0.0, 0.0)))
    if x.get("centre_vox_mm") is not None:
        x["centre_vox_mm"] = tuple(float(v) for v in x["centre_vox_mm"])
    return Lesion(**x)


@dataclass
class ScoreReport:
    """A scored set of cases: the per-case records plus aggregate metrics (JSON file)."""

    cases: list[CaseResult]
    metrics: dict[str, Any] = field(default_factory=dict)
    rule: str = "overlap"
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # dataset, model, environment, ...
    cmbbench_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "schema_version": self.schema_version,
                "cmbbench_version": self.cmbbench_version,
                "rule": self.rule,
                "params": self.params,
                "info": self.info,
                "metrics": self.metrics,
                "cases": [c.to_dict() for c in self.cases],
            }
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreReport:
        return cls(
            cases=[CaseResult.from_dict(c) for c in d.get("cases", [])],
            metrics=dict(d.get("metrics", {})),
            rule=d.get("rule", "overlap"),
            params=dict(d.get("params", {})),
            info=dict(d.get("info", {})),
            cmbbench_version=d.get("cmbbench_version", ""),
            schema_version=int(d.get("schema_version", SCHEMA_VERSION)),
        )


def save_results(results: ScoreReport | Sequence[CaseResult], path: str | os.PathLike[str]) -> Path:
    """Save a :class:`ScoreReport` (or a list of case results) as JSON; returns the path."""
    if not isinstance(results, ScoreReport):
        from cmbbench import __version__

        cases = list(results)
        rule = cases[0].rule if cases else "overlap"
        params = dict(cases[0].params) if cases else {}
        results = ScoreReport(cases=cases, rule=rule, params=params, cmbbench_version=__version__)
    return write_json_atomic(path, results.to_dict())


def load_results(path: str | os.PathLike[str]) -> ScoreReport:
    """Load a JSON file written by :func:`save_results` (or a run record with ``cases``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise InputError("no such result file", path=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"not a valid JSON result file ({err})", path=str(path)) from None
    if not isinstance(data, dict) or "cases" not in data:
        raise InputError("not a cmbbench result file (no 'cases' list)", path=str(path))
    try:
        return ScoreReport.from_dict(data)
    except (TypeError, KeyError, ValueError) as err:
        raise InputError(f"malformed cmbbench result file ({err})", path=str(path)) from None
