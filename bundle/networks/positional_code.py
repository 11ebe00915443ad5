"""An absolute position for the queries of the backbone's cross-attention (not in the paper; a probe).

MONAI's :class:`~monai.networks.nets.diffusion_model_unet.SpatialTransformer` flattens the feature map
into tokens without any positional code, so a query knows where it is only through what zero padding
leaves in the convolutional features, and a location word ("left lung") has nothing to attend from.
:func:`add_positional_code` gives every cross-attending transformer a :class:`PositionalCode`: fixed 2D
Fourier features of the pixel coordinates, projected by a zero-initialised 1x1 convolution and added to
the map it reads. At initialisation the network is unchanged, and a checkpoint without these layers
loads with them at zero (:meth:`~bundle.networks.MonaiDiffusionBackbone.checkpoint_optional_keys`).
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets.diffusion_model_unet import SpatialTransformer
from torch import nn

__all__ = ["PositionalCode", "PositionedSpatialTransformer", "add_positional_code"]


class PositionalCode(nn.Module):
    """x (B, C, H, W) -> x + W [y, x, sin(pi 2^k y), cos(pi 2^k y), sin(pi 2^k x), cos(pi 2^k x)]_k, W zero at init.

    Coordinates run over [-1, 1] along each axis of the stored map, at pixel centres.

    Args:
        channels: C of the feature map.
        frequencies: octaves k = 0 .. frequencies - 1.
    """

    def __init__(self, channels: int, frequencies: int = 4) -> None:
        super().__init__()
        self.frequencies = int(frequencies)
        self.proj = nn.Conv2d(2 + 4 * self.frequencies, channels, 1, bias=False)
        nn.init.zeros_(self.proj.weight)

    def features(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The fixed code (1, 2 + 4 frequencies, H, W)."""
        axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) / n * 2 - 1 for n in (height, width)]
        y, x = torch.meshgrid(*axes, indexing="ij")
        code = [y, x]
        for k in range(self.frequencies):
            scale = math.pi * 2**k
            code += [torch.sin(scale * y), torch.cos(scale * y), torch.sin(scale * x), torch.cos(scale * x)]
        return torch.stack(code)[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.features(x.shape[-2], x.shape[-1], x.device, x.dtype))


class PositionedSpatialTransformer(SpatialTransformer):
    """:class:`SpatialTransformer` whose input carries its ``position_code`` (same keys, plus that module's)."""

    position_code: PositionalCode

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(self.position_code(x), context=context)


def add_positional_code(module: nn.Module, frequencies: int = 4) -> list[str]:
    """Give every ``SpatialTransformer`` under ``module`` a :class:`PositionalCode`, in place.

    Meant for a UNet built with cross-attention, where every transformer reads the context. Returns the
    state-dict keys (relative to ``module``) of the added layers.
    """
    keys = []
    for name, child in [(n, m) for n, m in module.named_modules() if type(m) is SpatialTransformer]:
        child.__class__ = PositionedSpatialTransformer
        child.position_code = PositionalCode(child.in_channels, frequencies)
        keys.append(f"{name}.position_code.proj.weight")
    return keys
