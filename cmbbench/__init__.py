"""cmbbench: a benchmarking library for cerebral microbleed (CMB) detection.

Importing the package is cheap and silent: every public name is resolved lazily, so that
scoring alone never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # scoring
    "score_case": "cmbbench.scoring.case",
    "CaseResult": "cmbbench.scoring.records",
    "ScoreReport": "cmbbench.scoring.records",
    "save_results": "cmbbench.scoring.records",
    "load_results": "cmbbench.scoring.records",
    "aggregate": "cmbbench.scoring.metrics",
    "compare": "cmbbench.scoring.compare",
    "score_folder": "cmbbench.scoring.folder",
    # data
    "Case": "cmbbench.cases",
    "load_dataset": "cmbbench.datasets.registry",
    "list_datasets": "cmbbench.datasets.registry",
    "register_dataset": "cmbbench.datasets.registry",
    "dataset_info": "cmbbench.datasets.registry",
    "make_splits": "cmbbench.datasets.splits",
    "load_split_file": "cmbbench.datasets.splits",
    "export_nnunet": "cmbbench.datasets.nnunet",
    # models and runs
    "register_model": "cmbbench.models.registry",
    "create_model": "cmbbench.models.registry",
    "list_models": "cmbbench.models.registry",
    "model_info": "cmbbench.models.registry",
    "load_plugin": "cmbbench.models.registry",
    "Prediction": "cmbbench.models.detector",
    "Detector": "cmbbench.models.detector",
    "run": "cmbbench.engine.run",
    "submit_folder": "cmbbench.submission",
    # leaderboards
    "build_leaderboard": "cmbbench.leaderboard.build",
    # errors
    "CmbbenchError": "cmbbench.errors",
    "InputError": "cmbbench.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cmbbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
