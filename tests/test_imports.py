"""Import hygiene of cmbbench.scoring: every module imports without torch, and the modules that
score cases and aggregate them in memory import without nibabel (files are read elsewhere).

Each module is imported in a fresh interpreter, so nothing imported by another test hides a
heavy import.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import cmbbench.scoring

SCORING_MODULES = sorted(m.name for m in pkgutil.iter_modules(cmbbench.scoring.__path__))

# per-case scoring and aggregation: arrays and records in memory, no NIfTI
IN_MEMORY = (
    "bootstrap",
    "case",
    "compare",
    "components",
    "evaluator",
    "froc",
    "inputs",
    "matching",
    "metrics",
    "rates",
    "records",
    "rules",
    "sections",
    "strata",
    "summary",
    "sweep",
    "table",
)


def _absent_after_import(module: str, absent: tuple[str, ...]) -> None:
    code = (
        "import sys\n"
        f"import {module}\n"
        f"loaded = [m for m in {absent!r} if m in sys.modules]\n"
        f"assert not loaded, f'importing {module} imported ' + ', '.join(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""


def test_module_lists_are_current():
    assert set(IN_MEMORY) <= set(SCORING_MODULES)
    assert {"folder", "metrics", "case", "rates"} <= set(SCORING_MODULES)


@pytest.mark.parametrize("name", SCORING_MODULES)
def test_scoring_module_import_hygiene(name):
    absent = ("torch", "nibabel") if name in IN_MEMORY else ("torch",)
    _absent_after_import(f"cmbbench.scoring.{name}", absent)
