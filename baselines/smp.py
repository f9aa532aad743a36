"""Variants from ``segmentation-models-pytorch-3d``, trained from scratch.

No pretrained weights exist offline, so ``encoder_weights=None`` always. With their default
five stride-2 stages these networks need spatial sizes divisible by 32: each registration
declares ``divisor=32`` (checked up front by the engine, see
:func:`cmbbench.models.detector.check_input_size`) and a 32³ training patch — the legal size
closest to the seed's 40³ (64 slices would exceed the whole head on 3 mm-slice scans), so
the preset's batch size and step budget apply unchanged. At 32³ the deepest stage is 1 voxel.
The library is imported only when a model is created.
"""

from __future__ import annotations

from typing import Any

from cmbbench import register_model

PRIOR = 0.01  # initial CMB probability of the output layer, as for unet3d (None: default)
SMP_RECIPE: dict[str, Any] = {"patch_size": (32, 32, 32), "divisor": 32}
_KW = {"kind": "network", "divisor": 32, "recipe": SMP_RECIPE}


def _build(arch: str, encoder: str, **kwargs: Any) -> Any:
    import segmentation_models_pytorch_3d as smp

    options = {"encoder_name": encoder, "in_channels": 1, "classes": 2, **kwargs}
    if options.get("encoder_weights") is not None:
        raise ValueError("smp baselines are trained from scratch: encoder_weights must be None")
    options["encoder_weights"] = None
    prior = options.pop("prior", PRIOR)
    model = getattr(smp, arch)(**options)
    if prior is not None:
        from cmbbench_baselines.unet3d_net import init_prior_bias

        init_prior_bias(model.segmentation_head[0], prior)
    return model


@register_model("smp_unet_r18", description="smp-3d U-Net, ResNet-18 encoder (scratch)", **_KW)
def smp_unet_r18(**kwargs: Any) -> Any:
    return _build("Unet", "resnet18", **kwargs)


@register_model("smp_unet_r34", description="smp-3d U-Net, ResNet-34 encoder (scratch)", **_KW)
def smp_unet_r34(**kwargs: Any) -> Any:
    return _build("Unet", "resnet34", **kwargs)


@register_model("smp_fpn_r18", description="smp-3d FPN, ResNet-18 encoder (scratch)", **_KW)
def smp_fpn_r18(**kwargs: Any) -> Any:
    return _build("FPN", "resnet18", **kwargs)
