"""The run record: one JSON file per ``cmbbench run``, the unit every leaderboard is built from.

The schema is documented field by field in ``docs/run-record.md``. Files are written with
:func:`cmbbench.io.write_json_atomic` (sorted keys, 2-space indent, NaN/Inf as
``null``), so the same record always gives the same bytes. A run record is also a valid
input of :func:`cmbbench.scoring.records.load_results` (it has ``cases``, ``rule``,
``params``, ``metrics``, ``info``).

This module is the one place a record is read (:func:`read_record_json`, used by
:func:`load_run_record` and by the leaderboard) and the one place the two things a
leaderboard groups by are derived from a record: the recipe fingerprint
(:func:`recipe_fingerprint`) and the hardware (:func:`hardware_of`). New records store both;
records written before they existed get them derived on reading, by the same functions. This
module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cmbbench.errors import InputError
from cmbbench.io import write_json_atomic
from cmbbench.scoring.records import CaseResult

RECORD_TYPE = "cmbbench-run"
RUN_SCHEMA_VERSION = 1
RECORD_NAME = "record.json"
# recipe keys that cannot change a run's numbers (the seed makes the seeds of one row; loader
# processes draw the same batches as in-process sampling; checkpoint cadence is bookkeeping),
# left out of the recipe fingerprint
FINGERPRINT_NEUTRAL: tuple[str, ...] = ("seed", "num_workers", "checkpoint_every")
# recipe keys added after records were published, with the value that reproduces the runs
# made before they existed: at that value they are left out of the fingerprint, so a new
# run of an unchanged recipe still joins the older records' row
FINGERPRINT_ADDED: dict[str, Any] = {"optimizer_impl": "auto"}


def recipe_fingerprint(recipe: Mapping[str, Any], model_kwargs: Mapping[str, Any]) -> str:
    """A short hash (8 hex digits) of everything that defines how a run was trained: the full
    resolved recipe, minus :data:`FINGERPRINT_NEUTRAL` keys and :data:`FINGERPRINT_ADDED` keys
    at their old behaviour's value, and the model's arguments."""
    kept = {
        k: v
        for k, v in recipe.items()
        if k not in FINGERPRINT_NEUTRAL
        and not (k in FINGERPRINT_ADDED and v == FINGERPRINT_ADDED[k])
    }
    text = json.dumps({"recipe": kept, "model_kwargs": dict(model_kwargs)}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def hardware_of(env: Mapping[str, Any]) -> dict[str, str]:
    """``{"label", "class"}`` of a record's ``environment``: e.g. ``{"label": "cuda:0 NVIDIA
    H100 80GB HBM3", "class": "gpu"}`` or ``{"label": "cpu (AMD EPYC, 2 cores)", "class":
    "cpu"}``; the class names a leaderboard track."""
    device = str(env.get("device") or "unknown")
    cls = "gpu" if device.startswith("cuda") else device.split(":")[0]
    name = env.get("device_name")
    if cls == "gpu":
        return {"label": f"{device} {name}" if name else device, "class": cls}
    details = [str(name)] if name else []
    if isinstance(env.get("cpu_count"), int):
        details.append(f"{env['cpu_count']} cores")
    return {"label": f"{device} ({', '.join(details)})" if details else device, "class": cls}


def read_record_json(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """``(file, JSON object)`` of a run record (a file, or a run directory holding
    ``record.json``), after checking its type and schema version; every problem is an
    :class:`InputError` naming the file."""
    p = Path(path)
    if p.is_dir():
        p = p / RECORD_NAME
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such run record", path=str(p)) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"not a valid JSON run record ({err})", path=str(p)) from None
    if not isinstance(data, dict):
        raise InputError("not a run record (expected a JSON object)", path=str(p))
    if data.get("record_type") != RECORD_TYPE:
        raise InputError(
            f"not a cmbbench run record (record_type {data.get('record_type')!r}, "
            f"expected {RECORD_TYPE!r})",
            path=str(p),
        )
    try:
        version = int(data.get("schema_version", 0))
    except (TypeError, ValueError):
        raise InputError(
            f"malformed run record: schema_version {data.get('schema_version')!r}", path=str(p)
        ) from None
    if version > RUN_SCHEMA_VERSION:
        raise InputError(
            f"run record schema version {version} is newer than this cmbbench "
            f"understands ({RUN_SCHEMA_VERSION}); upgrade cmbbench",
            path=str(p),
        )
    return p, data


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
    #: :func:`recipe_fingerprint` of ``recipe`` + the model's kwargs (derived when absent)
    recipe_fingerprint: str = ""
    #: :func:`hardware_of` ``environment`` (derived when absent)
    hardware: dict[str, str] = field(default_factory=dict)
    created_utc: str = ""
    cmbbench_version: str = ""
    record_type: str = RECORD_TYPE
    schema_version: int = RUN_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.recipe_fingerprint:
            kwargs = self.model.get("kwargs") if isinstance(self.model.get("kwargs"), dict) else {}
            self.recipe_fingerprint = recipe_fingerprint(self.recipe or {}, kwargs)
        if not self.hardware:
            self.hardware = hardware_of(self.environment or {})

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
        """A record from its JSON object (as checked by :func:`read_record_json`)."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["cases"] = [CaseResult.from_dict(c) for c in data.get("cases", [])]
        return cls(**kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the record atomically as deterministic JSON; returns the path."""
        return write_json_atomic(path, self.to_dict())


def load_run_record(path: str | os.PathLike[str]) -> RunRecord:
    """Read a run record JSON (a file, or a run directory holding ``record.json``)."""
    p, data = read_record_json(path)
    try:
        return RunRecord.from_dict(data)
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        raise InputError(f"malformed run record ({err})", path=str(p)) from None
