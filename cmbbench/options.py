"""``KEY=VALUE`` options from a command line: the one parser of cmbbench.

Used for recipe overrides (``cmbbench run --set``) and dataset options (``run
--dataset-option``, ``evaluate --dataset-option``, ``data ... -o``), so a value means the
same everywhere. ``VALUE`` is read as JSON when it is JSON (``50``, ``1e-3``, ``false``,
``[1, 2]``, ``"text"``), else a comma-separated list of stripped strings (``T2S,T1`` ->
``["T2S", "T1"]``), else the text itself. Dashes in ``KEY`` become underscores. Recipe
values are then converted to each field's type by :mod:`cmbbench.engine.recipe`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cmbbench.errors import CmbbenchError


class OptionError(CmbbenchError, ValueError):
    """A command-line option that is not ``KEY=VALUE``."""


def parse_value(raw: str) -> Any:
    """One option value: JSON, else a comma-separated list, else the text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return [v.strip() for v in raw.split(",")] if "," in raw else raw


def parse_key_values(items: Iterable[str] | None, *, what: str = "option") -> dict[str, Any]:
    """``["lr=1e-3", "channels=T2S,T1"] -> {"lr": 0.001, "channels": ["T2S", "T1"]}``; an item
    without ``=`` or without a key is an :class:`OptionError` naming ``what`` (e.g. ``--set``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{what} expects KEY=VALUE (key=value), got {item!r}")
        out[key.strip().replace("-", "_")] = parse_value(raw)
    return out
