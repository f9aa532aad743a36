"""nnU-Net's residual-encoder U-Net (ResEnc), trained by cmbbench's engine.

nnU-Net revisited (Isensee et al., MICCAI 2024) found its residual-encoder U-Net the strongest
configuration across datasets. ``resenc_unet_m`` is that network from nnU-Net's own network
library (``dynamic-network-architectures``, ``ResidualEncoderUNet``: residual basic blocks in
the encoder, one convolution per decoder stage, instance norm, leaky ReLU), with the ResEnc-M
preset's blocks per stage (1, 3, 4, 6) and widths (32, 64, 128, 256) over the four stages the
engine's patches allow, and strides planned from the spacing as nnU-Net plans them: on the
1×1×3 mm grid the first stage keeps full resolution and z is not downsampled until the
voxels are near-isotropic, ``((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2))`` (divisor
8×8×4). It is trained with ``unet3d``'s recipe, sampler, budget, post-processing and output
prior, so the two rows compare the architecture alone. The full nnU-Net (its own planning,
preprocessing and 1000-epoch trainer) is a different row. The library is imported only when
a model is created.
"""

from __future__ import annotations

from typing import Any

from cmbbench_baselines.unet3d import PRIOR, SEED_RECIPE

from cmbbench import register_model

#: per stage (x, y, z): full resolution, then no z-downsampling of 3 mm slices until the
#: voxels are near-isotropic (nnU-Net's rule: a spacing more than 2x the finest is not halved)
STRIDES: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2))
#: the ResEnc-M preset's first four stages
FEATURES: tuple[int, ...] = (32, 64, 128, 256)
BLOCKS: tuple[int, ...] = (1, 3, 4, 6)
DIVISOR = (8, 8, 4)
#: unet3d's recipe; the divisor is the network's own (above)
RECIPE = {k: v for k, v in SEED_RECIPE.items() if k != "divisor"}


def build_resenc(
    in_channels: int = 1,
    *,
    features: tuple[int, ...] = FEATURES,
    blocks: tuple[int, ...] = BLOCKS,
    strides: tuple[tuple[int, int, int], ...] = STRIDES,
    prior: float | None = PRIOR,
) -> Any:
    """A ``ResidualEncoderUNet`` (3-D, 2 output classes) with ``len(features)`` stages; the
    output layer's bias starts at a ``prior`` CMB probability, as ``unet3d``'s."""
    import torch
    from cmbbench_baselines.unet3d_net import init_prior_bias
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from torch import nn

    if not len(features) == len(blocks) == len(strides):
        raise ValueError(
            f"features, blocks and strides need one entry per stage; got {len(features)}, "
            f"{len(blocks)} and {len(strides)}"
        )
    net = ResidualEncoderUNet(
        input_channels=int(in_channels),
        n_stages=len(features),
        features_per_stage=list(features),
        conv_op=nn.Conv3d,
        kernel_sizes=3,
        strides=[list(s) for s in strides],
        n_blocks_per_stage=list(blocks),
        num_classes=2,
        n_conv_per_stage_decoder=[1] * (len(features) - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
    if prior is not None:
        head = net.decoder.seg_layers[-1]
        with torch.no_grad():
            init_prior_bias(head, prior)
    return net


@register_model(
    "resenc_unet_m",
    description="nnU-Net's residual-encoder U-Net (ResEnc-M blocks 1/3/4/6, 32-256), unet3d recipe",
    kind="network",
    divisor=DIVISOR,
    recipe=RECIPE,
)
def resenc_unet_m(in_channels: int = 1, **kwargs: Any) -> Any:
    return build_resenc(in_channels, **kwargs)
