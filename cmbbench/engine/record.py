"""The run record: one JSON file per ``cmbbench run``, the unit every leaderboard is built from.

The schema is documented field by field in ``docs/run-record.md``. Files are written with
:func:`cmbbench.scoring.records.write_json_atomic` (sorted keys, 2-space indent, NaN/Inf as
``null``), so the same record always gives the same bytes. A run record is also a valid
input of :func:`cmbbench.scoring.records.load_results` (it has ``cases``, ``rule``,
``params``, ``metrics``, ``info``). This module does not import torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cmbbench.errors import InputError
from cmbbench.scoring.records import CaseResult, write_json_atomic

RECORD_TYPE = "cmbbench-run"
RUN_SCHEMA_VERSION = 1
RECORD_NAME = "record.json"


@dataclass
class RunRecord:
    """Everything about one run. See ``docs/run-record.md`` for every field.

    ``cases`` are the per-case scoring records of the test split (:class:`CaseResult`);
    ``metrics`` the output of :func:`cmbbench.scoring.metrics.aggregate` on them.
    """

    run_id: str
    model: dict[str, Any]
    recipe: dict[str, Any]
    recipe_preset: str | None
    recipe_sources: dict[str, str]
    dataset: dict[str, Any]
    seed: int
    rule: str
    params: dict[str, Any]
    postprocess: dict[str, Any]
    training: dict[str, Any]
    cases: list[CaseResult]
    metrics: dict[str, Any]
    environment: dict[str, Any]
    timings: dict[str, Any]
    artifacts: dict[str, Any] = field(default_factory=dict)
    created_utc: str = ""
    cmbbench_version: str = ""
    record_type: str = RECORD_TYPE
    schema_version: int = RUN_SCHEMA_VERSION

    @property
    def recipe_overridden(self) -> dict[str, str]:
        """Recipe keys that did not come from the preset, with their layer (``model``/``user``)."""
        return {k: v for k, v in self.recipe_sources.items() if not v.startswith("preset:")}

    @property
    def headline(self) -> dict[str, Any]:
        """``metrics["headline"]`` (each entry ``{"value": ..., "ci": [lo, hi]}``)."""
        return dict(self.metrics.get("headline", {}))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            d[f.name] = [c.to_dict() for c in value] if f.name == "cases" else value
        d["recipe_overridden"] = self.recipe_overridden
        # the keys load_results() reads (a run record is also a score report)
        d["info"] = {
            "run_id": self.run_id,
            "model": self.model.get("name"),
            "dataset": self.dataset.get("name"),
            "dataset_version": self.dataset.get("version"),
            "split": self.dataset.get("split"),
            "seed": self.seed,
        }
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        if data.get("record_type") != RECORD_TYPE:
            raise InputError(
                f"not a cmbbench run record (record_type {data.get('record_type')!r}, "
                f"expected {RECORD_TYPE!r})"
            )
        version = int(data.get("schema_version", 0))
        if version > RUN_SCHEMA_VERSION:
            raise InputError(
                f"run record schema version {version} is newer than this cmbbench "
                f"understands ({RUN_SCHEMA_VERSION}); upgrade cmbbench"
            )
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["cases"] = [CaseResult.from_dict(c) for c in data.get("cases", [])]
        return cls(**kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the record atomically as deterministic JSON; returns the path."""
        return write_json_atomic(path, self.to_dict())


def load_run_record(path: str | os.PathLike[str]) -> RunRecord:
    """Read a run record JSON (a file, or a run directory holding ``record.json``)."""
    p = Path(path)
    if p.is_dir():
        p = p / RECORD_NAME
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no run record here", path=str(p)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"run record is not valid JSON ({err})", path=str(p)) from None
    if not isinstance(data, dict):
        raise InputError("run record is not a JSON object", path=str(p))
    try:
        return RunRecord.from_dict(data)
    except InputError as err:
        raise InputError(err.problem, path=str(p)) from None
    except (TypeError, KeyError, ValueError) as err:
        raise InputError(f"malformed run record ({err})", path=str(p)) from None
