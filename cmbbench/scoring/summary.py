"""Readable rows of headline metrics, for CLI tables and leaderboards."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cmbbench.errors import InputError
from cmbbench.scoring.metrics import HEADLINE


def format_value(value: float | None, digits: int = 2) -> str:
    """``0.712 -> "0.71"``; ``None`` (undefined) -> ``"n/a"``."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_entry(item: Mapping[str, Any] | None, digits: int = 2) -> str:
    """``{"value": 0.71, "ci": [0.62, 0.80]} -> "0.71 [0.62, 0.80]"`` (no CI: value only)."""
    if item is None:
        return "n/a"
    text = format_value(item.get("value"), digits)
    ci = item.get("ci")
    if item.get("value") is not None and ci is not None:
        text += f" [{format_value(ci[0], digits)}, {format_value(ci[1], digits)}]"
    return text


def summary_rows(
    metrics: Mapping[str, Any], *, digits: int = 2, counts: bool = True
) -> list[tuple[str, str]]:
    """``(metric label, formatted value with CI)`` for the headline metrics of :func:`aggregate`.

    With ``counts`` the rows start with the number of cases (and of scans without CMBs), CMBs
    and predicted lesions. Metrics absent from ``metrics["headline"]`` (e.g. CPM without
    scores) are left out; undefined ones read ``"n/a"``.
    """
    headline = metrics.get("headline")
    if not isinstance(headline, Mapping):
        raise InputError("not an aggregate-metrics dict: no 'headline' section")
    rows: list[tuple[str, str]] = []
    if counts and "n_cases" in metrics:
        rows.append(
            (
                "Cases (without CMB)",
                f"{metrics['n_cases']} ({metrics.get('n_cases_without_cmb', 0)})",
            )
        )
        rows.append(("CMBs (ground truth)", str(metrics.get("n_gt", ""))))
        rows.append(("Predicted lesions", str(metrics.get("n_pred", ""))))
    for key, label in HEADLINE.items():
        if key in headline:
            rows.append((label, format_entry(headline[key], digits)))
    return rows
