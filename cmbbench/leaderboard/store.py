"""Find, load and validate run records, and group them into leaderboard tables.

A run record is one JSON file per run (``docs/run-record.md``). The leaderboard reads only
what it needs from it into a :class:`RunEntry`: the model, the recipe (preset and overridden
keys), the hardware, the dataset (name, version, split), the seed, the scoring rule and its
parameters, the per-case records and the timings. Tables are then grouped by dataset name +
version + split, scoring rule + parameters, and *track* (preset and hardware class), so a row
is only ever compared with rows scored on the same cases under the same rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmbbench.engine.record import RECORD_TYPE, hardware_of, read_record_json, recipe_fingerprint
from cmbbench.errors import InputError
from cmbbench.io import dumps
from cmbbench.scoring.records import CaseResult
from cmbbench.scoring.rules import rule_key
from cmbbench.submission import SUBMISSION_KIND

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupKey:
    """What a leaderboard table holds: one dataset version, one rule, one track."""

    dataset: str
    version: str
    split: str
    rule: str
    params: str  # the rule parameters as deterministic JSON
    track: str  # "<preset> / <hardware class>", e.g. "quick / cpu"

    def scored_like(self, other: GroupKey) -> bool:
        """Same dataset version, split, rule and rule parameters (the track aside)."""
        return (self.dataset, self.version, self.split, self.rule, self.params) == (
            other.dataset,
            other.version,
            other.split,
            other.rule,
            other.params,
        )

    @property
    def title(self) -> str:
        return (
            f"{self.dataset} v{self.version} ({self.split}) · rule {self.rule} · track {self.track}"
        )

    @property
    def slug(self) -> str:
        """A file-name-safe identifier (lowercase ASCII, digits, '-' and '_')."""
        raw = f"{self.dataset}-v{self.version}-{self.split}-{self.rule}-{self.track}"
        keep = [ch.lower() if ch.isascii() and (ch.isalnum() or ch in "-_.") else "-" for ch in raw]
        text = "".join(keep)
        while "--" in text:
            text = text.replace("--", "-")
        digest = hashlib.sha256(self.params.encode("utf-8")).hexdigest()[:6]
        return f"{text.strip('-').replace('.', '_')}-{digest}"


@dataclass
class RunEntry:
    """The parts of one run record a leaderboard uses.

    ``timings`` keys (seconds; absent when not recorded): ``train_s``, ``step_s``,
    ``infer_case_s``; ``peak_memory_mb`` in MiB.
    """

    path: Path
    model: str
    preset: str
    overrides: dict[str, Any]
    hardware: str  # e.g. "cpu" or "cuda: NVIDIA H100 80GB HBM3"
    hardware_class: str  # "cpu" or "gpu"
    dataset: str
    version: str
    split: str
    seed: int
    rule: str
    params: dict[str, Any]
    cases: list[CaseResult]
    timings: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""  # recipe_fingerprint(): the full recipe + model arguments
    kind: str = "network"  # the record's model.kind: network | detector | submission

    @property
    def is_submission(self) -> bool:
        """An external submission (``cmbbench submit``): predictions made outside cmbbench."""
        return self.kind == SUBMISSION_KIND

    @property
    def track(self) -> str:
        return f"{self.preset} / {self.hardware_class}"

    @property
    def recipe_label(self) -> str:
        """The preset plus overridden recipe keys, e.g. ``quick (lr=0.001, steps=200)``."""
        if not self.overrides:
            return self.preset
        items = ", ".join(f"{k}={_short(v)}" for k, v in sorted(self.overrides.items()))
        return f"{self.preset} ({items})"

    @property
    def group_key(self) -> GroupKey:
        return GroupKey(
            self.dataset,
            self.version,
            self.split,
            self.rule,
            rule_params_key(self.params),
            self.track,
        )

    @property
    def row_key(self) -> tuple[str, str, str, str]:
        """Runs with the same model, recipe and hardware are seeds of one row.

        "Same recipe" means the same full recipe (:func:`recipe_fingerprint`), not only the
        same preset name and overrides: runs of a preset whose contents changed between
        versions land in separate rows.
        """
        return (self.model, self.recipe_label, self.hardware, self.fingerprint)


def rule_params_key(params: Mapping[str, Any]) -> str:
    """The scoring-rule parameters that define a table, as compact sorted JSON.

    The binarisation ``threshold`` is left out: it is each model's own operating point (tuned on
    its validation split), not part of the rule, so models with different thresholds are still
    compared in one table.
    """
    return json.dumps(json.loads(dumps(rule_key(dict(params)))), sort_keys=True)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "x".join(_short(x) for x in v)
    return str(v)


# ---------------------------------------------------------------------------- discovery
def find_records(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run-record files named by ``paths``: files as given, folders searched recursively for
    ``*.json`` files that are run records (``"record_type": "cmbbench-run"``).

    Returns sorted, de-duplicated paths. A path that does not exist is an :class:`InputError`;
    finding no record at all is an :class:`InputError` naming the paths searched.
    """
    found: set[Path] = set()
    given = [Path(p) for p in paths]
    for p in given:
        if p.is_dir():
            for f in sorted(p.rglob("*.json")):
                if f.is_file() and _looks_like_record(f):
                    found.add(f)
        elif p.is_file():
            if not is_cross_dataset_file(p):  # those go to the cross-dataset matrix
                found.add(p)
        else:
            raise InputError("no such file or folder", path=str(p))
    if not found:
        where = ", ".join(str(p) for p in given) or "(no paths given)"
        raise InputError(f"no run records found in {where}")
    return sorted(found, key=lambda f: f.as_posix())


def is_cross_dataset_file(path: Path) -> bool:
    """A ``cmbbench evaluate`` result (a score report whose ``info`` names the run it came
    from and what it was trained on), read by the cross-dataset matrix, not as a run record."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    info = data.get("info") if isinstance(data, dict) else None
    return (
        isinstance(info, dict)
        and data.get("record_type") != RECORD_TYPE
        and "cases" in data
        and isinstance(info.get("trained_on"), dict)
        and "run" in info
    )


def find_cross_dataset_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """``cmbbench evaluate`` results named by ``paths`` (files, or folders searched
    recursively), sorted."""
    found: set[Path] = set()
    for p in (Path(x) for x in paths):
        candidates = sorted(p.rglob("*.json")) if p.is_dir() else [p] if p.is_file() else []
        found.update(f for f in candidates if f.is_file() and is_cross_dataset_file(f))
    return sorted(found, key=lambda f: f.as_posix())


def _looks_like_record(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        # a corrupt file inside a records folder is an error, not something to skip
        return True
    return isinstance(data, dict) and data.get("record_type") == RECORD_TYPE


# ---------------------------------------------------------------------------- loading
def _timings(t: Mapping[str, Any]) -> dict[str, float]:
    keys = {
        "train_s": "train_seconds",
        "step_s": "seconds_per_step",
        "infer_case_s": "inference_seconds_per_case",
    }
    out: dict[str, float] = {}
    for name, key in keys.items():
        v = t.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            out[name] = float(v)
    mem = t.get("peak_memory_bytes")
    if isinstance(mem, (int, float)) and not isinstance(mem, bool):
        out["peak_memory_mb"] = float(mem) / 2**20
    return out


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise InputError(f"malformed run record: missing {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(
            f"malformed run record: {key!r} should be {names}, got {type(value).__name__}"
        )
    return value


def _parse(data: dict[str, Any]) -> dict[str, Any]:
    model = _require(data, "model", dict)
    if not isinstance(model.get("name"), str) or not model["name"]:
        raise InputError("malformed run record: 'model' has no 'name'")
    dataset = _require(data, "dataset", dict)
    if not isinstance(dataset.get("name"), str):
        raise InputError("malformed run record: 'dataset' has no 'name'")
    raw_cases = _require(data, "cases", list)
    if not raw_cases:
        raise InputError("run record has no per-case results ('cases' is empty)")
    try:
        cases = [CaseResult.from_dict(c) for c in raw_cases]
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        raise InputError(
            f"malformed per-case result in 'cases' ({type(err).__name__}: {err})"
        ) from None
    rule = _require(data, "rule", str)
    params = _require(data, "params", dict)
    seed = _require(data, "seed", int)
    recipe = data.get("recipe") if isinstance(data.get("recipe"), dict) else {}
    model_kwargs = model.get("kwargs") if isinstance(model.get("kwargs"), dict) else {}
    overridden = data.get("recipe_overridden") or {}
    if not isinstance(overridden, Mapping):
        raise InputError("malformed run record: 'recipe_overridden' should be an object")
    for c in cases:
        if c.rule != rule:
            raise InputError(
                f"case {c.case_id!r} was scored with rule {c.rule!r} but the record says {rule!r}"
            )
    env = data.get("environment") if isinstance(data.get("environment"), dict) else {}
    timings = data.get("timings") if isinstance(data.get("timings"), dict) else {}
    hardware = data.get("hardware") if isinstance(data.get("hardware"), dict) else None
    hardware = hardware or hardware_of(env)
    fingerprint = data.get("recipe_fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        fingerprint = recipe_fingerprint(recipe, model_kwargs)
    return {
        "model": model["name"],
        "kind": str(model.get("kind") or "network"),
        "preset": str(data.get("recipe_preset") or "custom"),
        "overrides": {k: recipe.get(k) for k in sorted(overridden) if k != "seed"},
        "hardware": str(hardware["label"]),
        "hardware_class": str(hardware["class"]),
        "dataset": dataset["name"],
        "version": str(dataset.get("version", "?")),
        "split": str(dataset.get("split", "test")),
        "seed": seed,
        "rule": rule,
        "params": params,
        "cases": cases,
        "timings": _timings(timings),
        "fingerprint": fingerprint,
    }


def load_record(path: str | os.PathLike[str]) -> RunEntry:
    """Read one run record (``docs/run-record.md``) into a :class:`RunEntry`; a missing or
    malformed file raises :class:`InputError` naming the file and what is wrong."""
    path, data = read_record_json(path)
    try:
        fields = _parse(data)
    except InputError as err:
        raise InputError(err.problem, path=str(path)) from None
    return RunEntry(path=path, **fields)


def load_records(paths: Sequence[str | os.PathLike[str]]) -> list[RunEntry]:
    """Load every run record found under ``paths`` (see :func:`find_records`)."""
    from cmbbench.engine.cv import is_fold_split

    entries = [load_record(p) for p in find_records(paths)]
    folds = [e for e in entries if is_fold_split(e.split)]
    if folds:
        log.info("%d cross-validation fold record(s) left to their pooled cv record", len(folds))
    return [e for e in entries if not is_fold_split(e.split)]


def _newest_first(version: str) -> tuple[tuple[int, Any], ...]:
    """Sort key putting later dataset versions first ("1.10" > "1.9" > "1.1"; text parts last)."""
    return tuple((0, -int(p)) if p.isdigit() else (1, p) for p in str(version).split("."))


def group_runs(entries: Iterable[RunEntry]) -> dict[GroupKey, list[RunEntry]]:
    """Runs grouped by table (dataset + version + split, rule + parameters, track), tables
    and runs inside them in a deterministic order: by dataset, its newest version first, then
    split, rule and track. Two records of the same model, recipe (fingerprint included),
    hardware and seed in one table are an :class:`InputError` (a run counted twice)."""
    groups: dict[GroupKey, list[RunEntry]] = {}
    submissions: list[RunEntry] = []
    for e in entries:
        if e.is_submission:
            submissions.append(e)
        else:
            groups.setdefault(e.group_key, []).append(e)
    # a submission joins every table of runs scored on the same cases under the same rule
    # (dataset, version, split, rule parameters), whatever their track; with none, the
    # submissions form a table of their own
    for e in submissions:
        same = [k for k in groups if k.scored_like(e.group_key) and k.track != e.track]
        for k in same or [e.group_key]:
            groups.setdefault(k, []).append(e)
    out: dict[GroupKey, list[RunEntry]] = {}
    for key in sorted(
        groups,
        key=lambda k: (k.dataset, _newest_first(k.version), k.split, k.rule, k.params, k.track),
    ):
        runs = sorted(groups[key], key=lambda e: (e.row_key, e.seed, e.path.as_posix()))
        seen: dict[tuple[Any, ...], Path] = {}
        for e in runs:
            ident = (*e.row_key, e.seed)
            if ident in seen:
                raise InputError(
                    f"duplicate run: model {e.model!r}, recipe {e.recipe_label!r}, seed {e.seed} "
                    f"already read from {seen[ident]}",
                    path=str(e.path),
                )
            seen[ident] = e.path
        out[key] = runs
    return out
