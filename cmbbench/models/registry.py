"""The model registry: ``register_model``, ``create_model``, ``build_model``, ``list_models``.

timm-style: a *factory* is registered under a name with the :func:`register_model`
decorator and called by :func:`create_model` / :func:`build_model`. A factory returns

* a ``torch.nn.Module`` (a *network*): input ``(B, C, X, Y, Z)`` float32 (C = 1, or the
  run's number of sequences, passed to a factory that has an ``in_channels`` parameter),
  output logits ``(B, 2, X, Y, Z)`` (two classes, softmax over the channel axis) or
  ``(B, 1, X, Y, Z)`` (one logit, sigmoid); the shared engine trains and runs it;
* ``(module, recipe_overrides)``: a network plus a dict of recipe entries it overrides
  (patch size, learning rate, ...), recorded in every result of the model;
* any other object with ``fit(train, val, config)`` and ``predict(case) -> Prediction``
  (a *detector*, see :mod:`cmbbench.models.detector`).

Models come from four places, all into the same registry: the reference baselines (an entry
point of cmbbench's own distribution, found exactly like a third party's), third-party
entry points in the group ``cmbbench.models`` (loaded lazily, on first use of the registry),
plug-in modules or ``.py`` files (:func:`load_plugin`, ``--plugin``), and decorators run in
the user's own code. Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from cmbbench.errors import CmbbenchError, UnknownNameError
from cmbbench.models.detector import Divisor, compact_divisor

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cmbbench.models"
# the entry point through which cmbbench's own distribution exposes its reference baselines
_BUILTIN_ENTRY_POINT = ("baselines", "cmbbench_baselines")

ModelKind = Literal["auto", "network", "detector"]
Factory = Callable[..., Any]


class PluginError(CmbbenchError):
    """A model plug-in (module, file or entry point) failed to load.

    ``plugin`` names it; ``details`` holds the original traceback text (also in the message).
    """

    def __init__(self, plugin: str, problem: str, details: str = ""):
        self.plugin, self.problem, self.details = plugin, problem, details
        msg = f"model plugin {plugin}: {problem}"
        if details:
            msg += "\n" + details.rstrip()
        super().__init__(msg)


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a registered model without building it.

    ``kind``: ``"network"``, ``"detector"`` or ``"auto"`` (decided when the factory's result
    is seen). ``source``: where the registration came from — ``"builtin baselines"``, the
    defining module's name, ``"entry point NAME (DIST)"`` or ``"plugin PATH"``.
    ``divisor``: every spatial input size must be a multiple of it (e.g. 32 for a network
    with five stride-2 stages), or one int per axis (x, y, z), e.g. ``(32, 32, 8)`` when
    two of the stages do not downsample z. ``recipe``: recipe entries the model overrides, known at
    registration (the factory may add more). ``off_board``: why the model is left off the
    default leaderboard tracks (it stays usable); empty when it is on them.
    """

    name: str
    description: str
    kind: ModelKind
    source: str
    divisor: Divisor = 1
    recipe: Mapping[str, Any] = field(default_factory=dict)
    off_board: str = ""


@dataclass
class BuiltModel:
    """A created model with everything the engine needs to record about it.

    ``model``: the ``nn.Module`` (kind ``"network"``) or the detector object.
    ``recipe_overrides``: registration-time recipe merged with what the factory returned.
    ``kwargs``: the keyword arguments the factory was called with (``in_channels`` apart).
    ``in_channels``: the number of input channels the model was built for.
    """

    name: str
    kind: Literal["network", "detector"]
    model: Any
    recipe_overrides: dict[str, Any]
    info: ModelInfo
    kwargs: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 1


@dataclass
class _Entry:
    info: ModelInfo
    factory: Factory


_REGISTRY: dict[str, _Entry] = {}
_entry_points_loaded = False
_loading_entry_points = False
_source_stack: list[str] = []
_loaded_plugins: dict[str, types.ModuleType] = {}


@contextlib.contextmanager
def _source(label: str) -> Iterator[None]:
    """Attribute registrations made while loading a plug-in to ``label``."""
    _source_stack.append(label)
    try:
        yield
    finally:
        _source_stack.pop()


def _first_line(text: str | None) -> str:
    return (inspect.cleandoc(text).splitlines() or [""])[0] if text else ""


def _qualname(factory: Factory) -> str:
    return (
        f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"
    )


def _add(
    name: str,
    factory: Factory,
    *,
    description: str,
    kind: ModelKind,
    divisor: Divisor,
    recipe: Mapping[str, Any] | None,
    off_board: str = "",
) -> None:
    if not isinstance(name, str) or not name:
        raise CmbbenchError(f"model name must be a non-empty string, got {name!r}")
    if kind not in ("auto", "network", "detector"):
        raise CmbbenchError(
            f"model {name!r}: kind must be 'auto', 'network' or 'detector', got {kind!r}"
        )
    divisor = compact_divisor(divisor, name=f"model {name!r}")  # raises when malformed
    old = _REGISTRY.get(name)
    if old is not None and _qualname(old.factory) != _qualname(factory):
        raise CmbbenchError(
            f"model name {name!r} is already registered by {_qualname(old.factory)} "
            f"(source: {old.info.source}); cannot register {_qualname(factory)} under it"
        )
    module = getattr(factory, "__module__", "?") or "?"
    if _source_stack:
        source = _source_stack[-1]
    elif module.split(".")[0] == "cmbbench_baselines":
        # Imported directly (e.g. ``from cmbbench_baselines import classical``) before the
        # entry points were loaded: still the package's own baselines.
        source = "builtin baselines"
    else:
        source = module
    info = ModelInfo(
        name=name,
        description=description or _first_line(getattr(factory, "__doc__", None)),
        kind=kind,
        source=source,
        divisor=divisor,
        recipe=dict(recipe or {}),
        off_board=str(off_board),
    )
    _REGISTRY[name] = _Entry(info=info, factory=factory)


@overload
def register_model(name: Factory, /) -> Factory: ...
@overload
def register_model(
    name: str | None = None,
    *,
    description: str = "",
    kind: ModelKind = "auto",
    divisor: Divisor = 1,
    recipe: Mapping[str, Any] | None = None,
    off_board: str = "",
) -> Callable[[Factory], Factory]: ...
def register_model(
    name: str | Factory | None = None,
    *,
    description: str = "",
    kind: ModelKind = "auto",
    divisor: Divisor = 1,
    recipe: Mapping[str, Any] | None = None,
    off_board: str = "",
) -> Any:
    """Decorator registering a model factory; usable bare (``@register_model``) or called.

    ``name`` defaults to the factory's ``__name__``; ``description`` to the first line of its
    docstring. ``divisor``: spatial sizes the network accepts must be multiples of it (one
    int, or one per axis x, y, z).
    ``recipe``: recipe entries this model overrides (e.g. ``{"patch_size": (64, 64, 64)}``).
    ``off_board``: the reason a model is left off the default leaderboard tracks (shown by
    ``cmbbench models``; :func:`list_models` ``(on_board=True)`` leaves it out).
    Returns the factory unchanged.
    """
    if callable(name) and not isinstance(name, str):
        factory = name
        _add(
            factory.__name__,
            factory,
            description=description,
            kind=kind,
            divisor=divisor,
            recipe=recipe,
            off_board=off_board,
        )
        return factory

    def deco(factory: Factory) -> Factory:
        _add(
            name or factory.__name__,
            factory,
            description=description,
            kind=kind,
            divisor=divisor,
            recipe=recipe,
            off_board=off_board,
        )
        return factory

    return deco


def unregister_model(name: str) -> None:
    """Remove a registration (mainly for tests); unknown names raise UnknownNameError."""
    if name not in _REGISTRY:
        raise UnknownNameError("model", name, list(_REGISTRY))
    del _REGISTRY[name]


def _entry_point_label(ep: importlib.metadata.EntryPoint) -> str:
    if (ep.name, ep.value) == _BUILTIN_ENTRY_POINT:
        return "builtin baselines"
    dist = getattr(ep, "dist", None)
    dist_name = getattr(dist, "name", None) if dist is not None else None
    return f"entry point {ep.name}" + (f" ({dist_name})" if dist_name else "")


def _load_entry_points() -> None:
    """Import every entry point of the group ``cmbbench.models`` (once).

    An entry point may name a module (importing it registers its models with the decorator)
    or a factory (``name = "pkg.mod:factory"``), which is registered under the entry point's
    name unless the import already registered it. Failures raise :class:`PluginError`
    naming every failing entry point, with its traceback.
    """
    global _entry_points_loaded, _loading_entry_points
    if _entry_points_loaded or _loading_entry_points:
        return
    _loading_entry_points = True
    failures: list[PluginError] = []
    try:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            label = _entry_point_label(ep)
            with _source(label):
                try:
                    obj = ep.load()
                except Exception as err:
                    failures.append(
                        PluginError(
                            f"entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP})",
                            f"import failed: {type(err).__name__}: {err}",
                            traceback.format_exc(),
                        )
                    )
                    continue
                if not isinstance(obj, types.ModuleType) and callable(obj):
                    known = {id(e.factory) for e in _REGISTRY.values()}
                    if id(obj) not in known:
                        _add(ep.name, obj, description="", kind="auto", divisor=1, recipe=None)
    finally:
        _loading_entry_points = False
    _entry_points_loaded = True
    if failures:
        _entry_points_loaded = False  # retried next time; the failure stays visible
        if len(failures) == 1:
            raise failures[0]
        raise PluginError(
            ", ".join(f.plugin for f in failures),
            f"{len(failures)} entry points failed to import",
            "\n".join(str(f) for f in failures),
        )


def load_plugin(module_or_path: str) -> types.ModuleType:
    """Import a plug-in so its ``@register_model`` decorators run; returns the module.

    ``module_or_path`` is an importable module name (``my_pkg.models``) or the path of a
    ``.py`` file. Loading the same plug-in twice is a no-op. Import failures raise
    :class:`PluginError` naming the plug-in, with the original traceback text.
    """
    key = str(module_or_path)
    if key in _loaded_plugins:
        return _loaded_plugins[key]
    _load_entry_points()  # so a plug-in cannot silently shadow an entry point's names
    is_path = key.endswith(".py") or "/" in key or "\\" in key
    if is_path:
        path = Path(key).expanduser().resolve()
        if not path.is_file():
            raise PluginError(key, f"file not found (resolved to {path})")
        mod_name = f"cmbbench_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise PluginError(key, "not an importable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        with _source(f"plugin {path}"):
            try:
                spec.loader.exec_module(module)
            except BaseException as err:
                sys.modules.pop(mod_name, None)
                if isinstance(err, KeyboardInterrupt):
                    raise
                raise PluginError(
                    key, f"import failed: {type(err).__name__}: {err}", traceback.format_exc()
                ) from err
    else:
        with _source(f"plugin {key}"):
            try:
                module = importlib.import_module(key)
            except BaseException as err:
                if isinstance(err, KeyboardInterrupt):
                    raise
                hint = ""
                if isinstance(err, ModuleNotFoundError) and err.name == key.split(".")[0]:
                    hint = " (not on sys.path; pass a .py file path or install the package)"
                raise PluginError(
                    key,
                    f"import failed: {type(err).__name__}: {err}{hint}",
                    traceback.format_exc(),
                ) from err
    _loaded_plugins[key] = module
    return module


def list_models(on_board: bool = False) -> list[str]:
    """Names of all registered models, sorted (loads entry points on first use); with
    ``on_board`` only those on the default leaderboard tracks (no ``off_board`` reason)."""
    _load_entry_points()
    return sorted(n for n, e in _REGISTRY.items() if not (on_board and e.info.off_board))


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model; unknown names list the known ones."""
    _load_entry_points()
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownNameError("model", name, list(_REGISTRY))
    return entry.info


def _is_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # an nn.Module cannot exist without torch imported
    return torch is not None and isinstance(obj, torch.nn.Module)


def _is_detector(obj: Any) -> bool:
    return callable(getattr(obj, "fit", None)) and callable(getattr(obj, "predict", None))


def accepts_in_channels(factory: Factory) -> bool:
    """Whether a factory's signature names an ``in_channels`` parameter (``**kwargs`` alone
    does not count: it may not forward it to anything that takes it)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("in_channels")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def check_in_channels(name: str, in_channels: int, channels: Any = None) -> None:
    """Raise :class:`CmbbenchError` up front when model ``name`` cannot take ``in_channels``
    input channels (more than one and a factory without an ``in_channels`` parameter);
    ``channels`` (the names, optional) go into the message."""
    if in_channels <= 1:
        return
    model_info(name)  # unknown names list the known ones
    factory = _REGISTRY[name].factory
    if not accepts_in_channels(factory):
        names = f" ({', '.join(str(c) for c in channels)})" if channels else ""
        raise CmbbenchError(
            f"model {name!r} cannot take {in_channels} input channels{names}: it takes one "
            f"(its factory {_qualname(factory)} has no in_channels parameter). Run it with "
            "one channel (e.g. --dataset-option channels=T2S) or add in_channels to the factory"
        )


def build_model(name: str, *, in_channels: int | None = None, **kwargs: Any) -> BuiltModel:
    """Call the factory of ``name`` with ``kwargs``; returns a :class:`BuiltModel`.

    ``in_channels``: input channels (sequences) the model must take; passed to the factory
    when its signature names ``in_channels`` (the model's default is kept for ``None``);
    more than one for a factory without it is an error (:func:`check_in_channels`).
    Checks that the result matches the declared kind: networks must be ``nn.Module``,
    detectors must have callable ``fit`` and ``predict``.
    """
    info = model_info(name)
    factory = _REGISTRY[name].factory
    n_in = 1 if in_channels is None else int(in_channels)
    if n_in < 1:
        raise CmbbenchError(f"model {name!r}: in_channels must be >= 1, got {in_channels}")
    check_in_channels(name, n_in)
    call = dict(kwargs)
    if in_channels is not None and accepts_in_channels(factory):
        call["in_channels"] = n_in
    try:
        result = factory(**call)
    except TypeError as err:
        sig = ""
        with contextlib.suppress(TypeError, ValueError):
            sig = str(inspect.signature(factory))
        raise CmbbenchError(
            f"model {name!r}: factory {_qualname(factory)}{sig} rejected arguments "
            f"{sorted(kwargs)}: {err}"
        ) from err
    overrides: dict[str, Any] = dict(info.recipe)
    if isinstance(result, tuple):
        if len(result) != 2 or not isinstance(result[1], Mapping):
            raise CmbbenchError(
                f"model {name!r}: a factory returning a tuple must return (module, recipe_overrides: dict), "
                f"got a tuple of {len(result)} items"
            )
        result, extra = result
        overrides.update(extra)
    if _is_module(result):
        kind: Literal["network", "detector"] = "network"
    elif _is_detector(result):
        kind = "detector"
    else:
        raise CmbbenchError(
            f"model {name!r}: factory returned {type(result).__name__}, expected a torch.nn.Module "
            "or a detector with fit(train, val, config) and predict(case)"
        )
    if info.kind != "auto" and info.kind != kind:
        raise CmbbenchError(
            f"model {name!r} is registered as kind {info.kind!r} but its factory returned a {kind} "
            f"({type(result).__name__})"
        )
    if "divisor" in overrides:  # the factory decides (e.g. from its strides)
        divisor = compact_divisor(overrides["divisor"], name=f"model {name!r}")
        if divisor != info.divisor:
            info = dataclasses.replace(info, divisor=divisor)
    return BuiltModel(
        name=name,
        kind=kind,
        model=result,
        recipe_overrides=overrides,
        info=info,
        kwargs=dict(kwargs),
        in_channels=n_in,
    )


def create_model(name: str, **kwargs: Any) -> Any:
    """Create a registered model (timm-style): the ``nn.Module`` or detector object.

    Use :func:`build_model` to also get the recipe overrides and kind.
    """
    return build_model(name, **kwargs).model
