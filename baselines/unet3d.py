"""The reference 3D U-Net and its variants, registered like any third-party model.

``unet3d`` is the research project's network and recipe (see ``docs/seed-results.md``);
the variants change one thing each over the same builder, :class:`UNet3D`. Importing
this module does not import torch: the builder is imported when a model is created.
"""

from __future__ import annotations

from typing import Any

from cmbbench import register_model

# The seed's training recipe (the engine's recipe keys; lists are (x, y, z) in voxels).
SEED_RECIPE: dict[str, Any] = {
    "patch_size": (40, 40, 40),
    "batch_size": 8,
    "optimizer": "adam",
    "lr": 5e-5,
    "weight_decay": 1e-4,  # L2 on the weights
    "loss": "focal_tversky+ce",
    "loss_params": {
        "alpha": 0.3,
        "beta": 0.7,
        "gamma": 3.0,
        "ce_weight": 1.0,
        "ce_class_weights": (0.1, 5.0),
    },
    "patches_per_volume": 30,
    "positive_fraction": 0.9,
    "normalize": "zscore_foreground",
    "divisor": 8,
}


def __getattr__(name: str) -> Any:  # lazy re-export of the builder (keeps torch unimported)
    if name == "UNet3D":
        from cmbbench_baselines.unet3d_net import UNet3D

        return UNet3D
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Output bias initialised to a 1 % CMB probability (the one change to the seed's network):
# the training loss leaves its early plateau hundreds of steps sooner (validation F1 after
# 800 quick-preset steps 0.76 instead of 0.69). ``prior=None`` gives PyTorch's default.
PRIOR = 0.01


def _build(**kwargs: Any) -> Any:
    """A :class:`UNet3D` with the seed's output prior; ``in_channels`` (input sequences, e.g.
    3 for T2*, T1, T2) and the rest of ``kwargs`` go to the network."""
    from cmbbench_baselines.unet3d_net import UNet3D

    return UNet3D(**{"prior": PRIOR, **kwargs})


_KW = {"kind": "network", "divisor": 8, "recipe": SEED_RECIPE}


@register_model("unet3d", description="seed 3D U-Net (32/64/128/256, BN, ELU), seed recipe", **_KW)
def unet3d(in_channels: int = 1, **kwargs: Any) -> Any:
    return _build(in_channels=in_channels, **kwargs)


@register_model("unet3d_small", description="unet3d with half the filters (16/32/64/128)", **_KW)
def unet3d_small(in_channels: int = 1, **kwargs: Any) -> Any:
    return _build(in_channels=in_channels, **{"filters": (16, 32, 64, 128), **kwargs})


@register_model("unet3d_res", description="unet3d with residual conv blocks", **_KW)
def unet3d_res(in_channels: int = 1, **kwargs: Any) -> Any:
    return _build(in_channels=in_channels, **{"block": "residual", **kwargs})


@register_model(
    "unet3d_ds",
    description="unet3d with deep supervision heads (aux outputs in model.aux_outputs)",
    kind="network",
    divisor=8,
    recipe={**SEED_RECIPE, "deep_supervision_weights": (0.25, 0.5)},
)
def unet3d_ds(in_channels: int = 1, **kwargs: Any) -> Any:
    return _build(in_channels=in_channels, **{"deep_supervision": True, **kwargs})
