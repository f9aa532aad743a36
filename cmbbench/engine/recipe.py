"""Training and inference recipes: one :class:`Recipe` dataclass and named presets.

Every network in cmbbench is trained by the same engine with a recipe. A recipe is resolved
in three layers, later layers winning:

1. the preset's defaults (``"full"``: the seed's published recipe for a GPU; ``"quick"``: a
   CPU recipe that finishes in minutes on two cores; ``"tiny"``: tests);
2. the model's own recipe overrides (returned by its registry factory);
3. the user's overrides (CLI flags / ``--set key=value`` / ``overrides=``).

:func:`resolve_recipe` returns the recipe and, for every field, which layer set it, so that
a run record (and a leaderboard) shows exactly what a model changed. This module does not
import torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from cmbbench.errors import CmbbenchError, UnknownNameError

PRESETS: tuple[str, ...] = ("tiny", "quick", "full")

Triple = tuple[int, int, int]


class RecipeError(CmbbenchError, ValueError):
    """An unknown recipe key or a value of the wrong type/range."""


@dataclass(frozen=True)
class Recipe:
    """Everything the engine needs to train and run a network. Sizes are in voxels.

    Training samples ``batch_size`` patches of ``patch_size`` voxels per step for ``steps``
    steps; a fraction ``cmb_fraction`` of patches is centred on a CMB voxel (when the volume
    has one), the rest anywhere inside the image. Each training volume contributes
    ``patches_per_volume`` consecutive samples before the sampler moves on (the seed's
    "30 patches per volume"). Loss = ``tversky_weight`` × focal Tversky
    (``TI = TP / (TP + α·FP + β·FN)``, loss ``(1 − TI)^(1/γ)``) + ``ce_weight`` × cross
    entropy with class weights ``ce_class_weights`` (background, CMB).
    """

    # --- sampling
    patch_size: Triple = (40, 40, 40)
    batch_size: int = 8
    patches_per_volume: int = 30
    cmb_fraction: float = 0.9
    hard_negative_fraction: float = 0.0  # patches centred on dark CMB look-alikes (mimics)
    # --- optimisation
    steps: int = 20000
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    # how PyTorch runs the optimizer step: "auto" = its default (a loop over parameters on
    # CPU, "foreach" on CUDA); "fused" = one fused kernel, 2-5x faster on CPU for the smp
    # networks' 35-73 M parameters but rounded differently (not bit-identical to "auto")
    optimizer_impl: Literal["auto", "foreach", "fused"] = "auto"
    lr: float = 5e-5
    weight_decay: float = 1e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0 = off
    # --- loss
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    tversky_gamma: float = 3.0
    tversky_weight: float = 1.0
    ce_weight: float = 1.0
    ce_class_weights: tuple[float, float] = (0.1, 5.0)
    # --- augmentation
    aug_flip: bool = True
    aug_rotate_deg: float = 10.0  # max in-plane rotation (about the third array axis); 0 = off
    aug_intensity: bool = True  # random gain, offset and noise on the normalised image
    # --- model-facing options
    normalize: str = "zscore_foreground"  # per-image intensity normalisation (engine.normalize)
    deep_supervision_weights: tuple[float, ...] = ()  # losses on model.aux_outputs (coarse→fine)
    # --- validation and checkpoints
    val_every: int = 1000
    checkpoint_every: int = 1000
    val_threshold: float = 0.5
    # --- inference
    infer_patch_size: Triple = (64, 64, 64)
    infer_overlap: float = 0.5
    infer_batch_size: int = 4
    # --- post-processing grid (tuned on the validation split only)
    # from 0.1 to 0.998: a loss with strong class weights (the seed's) calibrates high, a
    # balanced one low; the grid covers both so that the search, not the grid, decides
    pp_thresholds: tuple[float, ...] = (
        0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998,
    )  # fmt: skip
    pp_min_sizes: tuple[int, ...] = (1, 2, 3, 5)
    # --- runtime
    amp: bool = True  # float16 mixed precision on CUDA
    # bfloat16 autocast on CPU: "auto" = only where bf16 is the faster (AMX, or AMD with
    # avx512_bf16: trainer.bf16_is_faster)
    amp_cpu: Literal["auto", "on", "off"] = "off"
    num_workers: int = 2  # data-loading worker processes (0 = in the main process)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`RecipeError`."""
        return dataclasses.replace(cls(), **coerce_overrides(data))


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# The seed's published recipe (research project report; see docs/seed-results.md).
_FULL = Recipe(
    patch_size=(40, 40, 40),
    batch_size=8,
    patches_per_volume=30,
    cmb_fraction=0.9,
    steps=20000,
    lr=5e-5,
    weight_decay=1e-4,
    val_every=1000,
    checkpoint_every=1000,
    infer_patch_size=(80, 80, 40),
    infer_overlap=0.5,
    infer_batch_size=8,
    amp=True,
    num_workers=4,
)

# CPU recipe for two cores: same network and loss, smaller and fewer patches, a larger
# learning rate with a cosine decay (few steps), no rotation (its interpolation costs CPU
# time, and in-plane rotation matters little at 1×1×3 mm with this budget), bfloat16 autocast
# where the CPU computes bf16 faster than float32 (AMX, AMD Zen 4+), one
# validation at the end (its probability maps are reused for the post-processing search)
# and whole-volume inference (no overlap: every voxel is computed once).
_QUICK = dataclasses.replace(
    _FULL,
    # twice as many, smaller patches per step as 4 × 32×32×16 at the same cost: validation
    # F1 0.69 vs 0.26-0.42 after 800 steps (more CMBs and look-alikes seen per step)
    patch_size=(24, 24, 16),
    batch_size=8,
    patches_per_volume=8,
    cmb_fraction=0.35,
    hard_negative_fraction=0.35,
    steps=800,
    optimizer="adam",
    lr=1e-3,
    lr_schedule="cosine",
    warmup_steps=20,
    val_every=800,
    checkpoint_every=100,
    aug_rotate_deg=0.0,
    infer_patch_size=(192, 224, 64),
    infer_overlap=0.0,
    infer_batch_size=1,
    amp=False,
    amp_cpu="auto",
    # patches are sampled in the training process: on two cores a loader process only takes
    # CPU from the convolutions (engine 87 % of the bare model's throughput with one worker,
    # 98 % without; sampling costs ~5 ms a step). The batches are the same either way.
    num_workers=0,
)

# Tests: seconds on one core.
_TINY = dataclasses.replace(
    _QUICK,
    patch_size=(16, 16, 16),
    batch_size=2,
    patches_per_volume=4,
    cmb_fraction=0.8,
    steps=8,
    lr=1e-3,
    lr_schedule="constant",
    warmup_steps=0,
    val_every=4,
    checkpoint_every=4,
    infer_patch_size=(96, 96, 32),
    infer_overlap=0.25,
    infer_batch_size=1,
    num_workers=0,
    amp_cpu="off",
    pp_thresholds=(0.3, 0.5, 0.7),
    pp_min_sizes=(1, 2),
)

_PRESET_RECIPES: dict[str, Recipe] = {"tiny": _TINY, "quick": _QUICK, "full": _FULL}


def preset_recipe(name: str) -> Recipe:
    """The defaults of a named preset (``"tiny"``, ``"quick"``, ``"full"``)."""
    if name not in _PRESET_RECIPES:
        raise UnknownNameError("recipe preset", name, list(_PRESET_RECIPES))
    return _PRESET_RECIPES[name]


def recipe_keys() -> list[str]:
    """Every recipe field name, in declaration order."""
    return [f.name for f in fields(Recipe)]


_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = get_type_hints(Recipe)
    return _HINTS


def _coerce(key: str, value: Any) -> Any:
    """Convert ``value`` (a Python value or a CLI string) to the type of field ``key``."""
    hint = _hints()[key]
    origin = get_origin(hint)
    try:
        if origin is Literal:
            allowed = get_args(hint)
            if value not in allowed:
                raise RecipeError(f"recipe key {key!r}: expected one of {allowed}, got {value!r}")
            return value
        if origin is tuple:
            args = get_args(hint)
            if isinstance(value, str):
                parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
            elif isinstance(value, (int, float)):
                parts = [value]
            else:
                parts = list(value)
            elem = args[0]
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_scalar(elem, p) for p in parts)
            if len(parts) == 1 and len(args) > 1:
                parts = parts * len(args)  # "32" -> (32, 32, 32)
            if len(parts) != len(args):
                raise RecipeError(
                    f"recipe key {key!r}: expected {len(args)} values, got {len(parts)} ({value!r})"
                )
            return tuple(_scalar(a, p) for a, p in zip(args, parts, strict=True))
        return _scalar(hint, value)
    except (TypeError, ValueError) as err:
        if isinstance(err, RecipeError):
            raise
        raise RecipeError(f"recipe key {key!r}: cannot use {value!r} ({err})") from None


def _scalar(tp: Any, value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
    if tp is bool:
        if isinstance(value, str):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected a boolean, got {value!r}")
        return bool(value)
    if tp is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
    if tp is float:
        return float(value)
    return value


_POSITIVE_INT = ("batch_size", "patches_per_volume", "steps", "val_every", "checkpoint_every")


def coerce_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and type-convert a mapping of recipe overrides (unknown keys raise)."""
    known = set(recipe_keys())
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            raise RecipeError(f"unknown recipe key {key!r}; known keys: {', '.join(recipe_keys())}")
        v = _coerce(key, value)
        if key in _POSITIVE_INT and v < 1:
            raise RecipeError(f"recipe key {key!r}: expected a positive integer, got {v}")
        if key in ("patch_size", "infer_patch_size") and min(v) < 1:
            raise RecipeError(f"recipe key {key!r}: expected positive sizes, got {v}")
        if key in ("cmb_fraction", "hard_negative_fraction") and not 0.0 <= v <= 1.0:
            raise RecipeError(f"recipe key {key!r}: expected a value in [0, 1], got {v}")
        if key == "infer_overlap" and not 0.0 <= v < 1.0:
            raise RecipeError(f"recipe key 'infer_overlap': expected a value in [0, 1), got {v}")
        if key == "lr" and v <= 0:
            raise RecipeError(f"recipe key 'lr': expected > 0, got {v}")
        out[key] = v
    return out


# Model-side spellings of recipe entries (a model's factory may use them) -> recipe keys.
_ALIASES = {"positive_fraction": "cmb_fraction"}
_LOSS_PARAM_KEYS = {
    "alpha": "tversky_alpha",
    "beta": "tversky_beta",
    "gamma": "tversky_gamma",
    "tversky_weight": "tversky_weight",
    "ce_weight": "ce_weight",
    "ce_class_weights": "ce_class_weights",
}
SUPPORTED_LOSSES = ("focal_tversky+ce",)
# entries that describe the model itself, not its training (known from the registry)
_MODEL_ONLY_KEYS = ("divisor",)


def canonical_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Translate a model's recipe entries to recipe keys.

    ``positive_fraction`` -> ``cmb_fraction``; ``loss_params`` (``alpha``, ``beta``,
    ``gamma``, ``ce_weight``, ``ce_class_weights``) -> the ``tversky_*`` / ``ce_*`` keys;
    ``loss`` must name a supported loss (``"focal_tversky+ce"``) and is dropped; ``divisor``
    is a model property (from the registry) and is dropped. Other keys pass unchanged (and
    are validated later).
    """
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in _MODEL_ONLY_KEYS:
            continue
        if key == "loss":
            if value not in SUPPORTED_LOSSES:
                raise RecipeError(
                    f"recipe key 'loss': expected one of {SUPPORTED_LOSSES}, got {value!r}"
                )
            continue
        if key == "loss_params":
            for k, v in dict(value).items():
                if k not in _LOSS_PARAM_KEYS:
                    raise RecipeError(
                        f"unknown loss parameter {k!r}; known: {', '.join(_LOSS_PARAM_KEYS)}"
                    )
                out[_LOSS_PARAM_KEYS[k]] = v
            continue
        out[_ALIASES.get(key, key)] = value
    return out


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe plus, for every key, the layer that set it: ``"preset:<name>"``, ``"model"``, ``"user"``."""

    recipe: Recipe
    preset: str
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def overridden(self) -> dict[str, str]:
        """Only the keys that did not come from the preset."""
        return {k: v for k, v in self.sources.items() if not v.startswith("preset:")}


def resolve_recipe(
    preset: str,
    model_overrides: Mapping[str, Any] | None = None,
    user_overrides: Mapping[str, Any] | None = None,
) -> ResolvedRecipe:
    """Preset defaults < model overrides < user overrides; records where each key came from.

    A model's overrides are relative to the reference recipe (the ``full`` preset, the
    seed's published recipe): an entry equal to the reference value is the reference, not
    an override, so e.g. ``unet3d`` (which declares the seed recipe) keeps the ``quick``
    preset's CPU settings under ``--preset quick``. Entries that differ from the reference
    apply under every preset and are recorded as ``"model"``.
    """
    base = preset_recipe(preset)
    reference = _PRESET_RECIPES["full"]
    sources = {k: f"preset:{preset}" for k in recipe_keys()}
    values: dict[str, Any] = {}
    model = coerce_overrides(canonical_overrides(model_overrides or {}))
    for key, value in model.items():
        if value != getattr(reference, key):
            values[key] = value
            sources[key] = "model"
    for key, value in coerce_overrides(user_overrides or {}).items():
        values[key] = value
        sources[key] = "user"
    return ResolvedRecipe(dataclasses.replace(base, **values), preset, sources)
