"""The dataset registry: ``register_dataset``, ``load_dataset``, ``list_datasets``.

Like ogb, a dataset decides its evaluator: each registered dataset declares its scoring rule,
the rule's parameters and its label kind (:class:`DatasetInfo`), bound in one
:class:`~cmbbench.scoring.evaluator.Evaluator` (:attr:`DatasetInfo.evaluator`), so
``cmbbench score``, ``run`` and ``evaluate`` need no flags to be correct.

A dataset also owns its preparation: the options it wants under each recipe preset
(:func:`options_for_recipe`) and, for a dataset that generates or caches its cases on load,
a one-off preparation with a progress callback (:func:`prepare_dataset`). The engine and the
CLI call these and never branch on a dataset's name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cmbbench.cases import Case
from cmbbench.errors import UnknownNameError
from cmbbench.progress import ProgressFn
from cmbbench.scoring.evaluator import Evaluator

# modules that register the built-in datasets when imported (imported lazily, on first use)
_BUILTIN_MODULES = (
    "cmbbench.datasets.synthetic",
    "cmbbench.datasets.valdo",
    "cmbbench.datasets.nnunet",
    "cmbbench.datasets.points",
    "cmbbench.datasets.folder",
)


#: the dataset a run uses when none is named: the embedded semi-synthetic set, which needs
#: no download and runs anywhere
DEFAULT_DATASET = "synthetic"


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and how it must be scored."""

    name: str
    description: str
    version: str = "1"
    default_rule: str = "overlap"
    rule_params: dict[str, Any] = field(default_factory=dict)
    label_kind: str = "mask"  # "mask" | "instance" | "points"
    needs_root: bool = True
    expected_input_format: str = ""  # tells a user what folder layout to pass
    #: per-case metadata derivable from a case id alone (e.g. VALDO's cohort from the
    #: subject number), attached to scoring records by ``cmbbench score --dataset``
    case_meta: Callable[[str], dict[str, Any]] | None = field(default=None, compare=False)
    #: why the default rule is what it is, when that is not obvious (shown by ``data info``)
    rule_note: str = ""
    #: recipe preset -> the dataset options designed for it (the user's options win)
    recipe_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: the factory generates or caches cases when loaded and takes ``progress``: a
    #: :data:`~cmbbench.progress.ProgressFn`, ``True`` (log) or ``False`` (silent)
    generates: bool = False
    #: the dataset's own cross-validation folds, when it publishes them: ``official_folds(
    #: root, k)`` returns ``{"fold-0": [case ids], ...}`` (or ``None`` for a ``k`` it has
    #: none for); ``cmbbench run --folds K`` uses them instead of making its own
    official_folds: Callable[[str | None, int], dict[str, list[str]] | None] | None = field(
        default=None, compare=False
    )

    @property
    def evaluator(self) -> Evaluator:
        """The dataset's evaluator: its rule, rule parameters, label kind, ignore regions."""
        kinds = ("mask", "instance", "points", "agreement")
        kind = self.label_kind if self.label_kind in kinds else "mask"
        return Evaluator(self.default_rule, dict(self.rule_params), label_kind=kind)  # type: ignore[arg-type]


class Dataset(Sequence[Case]):
    """An ordered, lazy collection of cases plus the dataset's :class:`DatasetInfo`."""

    def __init__(
        self,
        info: DatasetInfo,
        cases: Sequence[Case],
        *,
        split: str | None = None,
        options: dict[str, Any] | None = None,
    ):
        self.info = info
        self._cases = list(cases)
        self.split = split
        self.options = dict(options or {})

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return self.info.version

    def __len__(self) -> int:
        return len(self._cases)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return Dataset(self.info, self._cases[index], split=self.split, options=self.options)
        return self._cases[index]

    def case(self, case_id: str) -> Case:
        """The case with this id (KeyError listing a few known ids otherwise)."""
        for c in self._cases:
            if c.case_id == case_id:
                return c
        known = ", ".join(c.case_id for c in self._cases[:10])
        raise KeyError(f"dataset {self.name!r} has no case {case_id!r} (first ids: {known})")

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, version={self.version!r}, split={self.split!r}, n={len(self)})"
        )


# name -> (info, factory(root, split, **options) -> Dataset)
DatasetFactory = Callable[..., Dataset]
_REGISTRY: dict[str, tuple[DatasetInfo, DatasetFactory]] = {}
_builtins_loaded = False


def register_dataset(info: DatasetInfo) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator: register ``factory(root=None, split=None, **options) -> Dataset`` under ``info.name``."""

    def deco(factory: DatasetFactory) -> DatasetFactory:
        _REGISTRY[info.name] = (info, factory)
        return factory

    return deco


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:  # a real missing dependency inside the module
                raise


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset (unknown names list the known ones)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise UnknownNameError("dataset", name, list(_REGISTRY))
    return _REGISTRY[name][0]


def load_dataset(
    name: str,
    root: str | None = None,
    split: str | None = None,
    *,
    progress: ProgressFn | bool | None = None,
    **options: Any,
) -> Dataset:
    """Load a dataset by name: a lazy sequence of :class:`~cmbbench.cases.Case`.

    ``split`` is ``"train"``, ``"val"``, ``"test"`` or ``None`` (all cases); ``options`` are
    dataset-specific (e.g. ``preset``/``n`` for ``synthetic``, ``split_file`` for any).
    ``progress`` reaches datasets that generate or cache on load (:attr:`DatasetInfo.generates`):
    a :data:`~cmbbench.progress.ProgressFn`, ``True`` (log) or ``False`` (silent); ``None`` keeps the
    dataset's default. Other datasets load without one.
    """
    info = dataset_info(name)  # raises for unknown names, listing the known ones
    factory = _REGISTRY[name][1]
    if progress is not None and info.generates:
        options["progress"] = progress
    return factory(root=root, split=split, **options)


def options_for_recipe(
    name: str, recipe_preset: str, options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The dataset options of a run under ``recipe_preset``: the dataset's own choice for that
    preset (:attr:`DatasetInfo.recipe_options`, e.g. synthetic: recipe ``quick`` -> dataset
    preset ``quick``), overridden by the user's ``options``."""
    info = dataset_info(name)
    return {**dict(info.recipe_options.get(recipe_preset, {})), **dict(options or {})}


def prepare_dataset(
    name: str,
    root: str | None = None,
    *,
    progress: ProgressFn | None = None,
    **options: Any,
) -> None:
    """Generate or cache every case of a dataset that does so on load (once, in parallel,
    reporting a ``"data"`` phase to ``progress``), so later split loads only read; a no-op for
    datasets read from files."""
    if dataset_info(name).generates:
        load_dataset(name, root=root, split=None, progress=progress or False, **options)
