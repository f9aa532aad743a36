"""The dataset registry: ``register_dataset``, ``load_dataset``, ``list_datasets``.

Like ogb, a dataset decides its evaluator: each registered dataset declares its default
scoring rule and parameters (:class:`DatasetInfo`), so ``cmbbench score`` and
``cmbbench run`` need no flags to be correct.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cmbbench.cases import Case
from cmbbench.errors import UnknownNameError

# modules that register the built-in datasets when imported (imported lazily, on first use)
_BUILTIN_MODULES = (
    "cmbbench.datasets.synthetic",
    "cmbbench.datasets.valdo",
    "cmbbench.datasets.nnunet",
    "cmbbench.datasets.points",
    "cmbbench.datasets.folder",
)


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
    name: str, root: str | None = None, split: str | None = None, **options: Any
) -> Dataset:
    """Load a dataset by name: a lazy sequence of :class:`~cmbbench.cases.Case`.

    ``split`` is ``"train"``, ``"val"``, ``"test"`` or ``None`` (all cases); ``options`` are
    dataset-specific (e.g. ``preset``/``n`` for ``synthetic``, ``split_file`` for any).
    """
    dataset_info(name)  # raises for unknown names, listing the known ones
    factory = _REGISTRY[name][1]
    return factory(root=root, split=split, **options)
