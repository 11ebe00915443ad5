"""Pixel classifier on the fused multi-scale representation H (paper Fig. 1, DDPM-seg style)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["PixelClassifier"]


class PixelClassifier(nn.Sequential):
    """Per-pixel MLP: 1x1 convs ``in_channels -> hidden... -> out_channels`` with BN + ReLU between.

    Args:
        in_channels: channels of H (sum over scales).
        out_channels: classes (2 = background / foreground).
        hidden: widths of the hidden layers (DDPM-seg: 128, 32).
    """

    def __init__(self, in_channels: int, out_channels: int = 2, hidden: Sequence[int] = (128, 32)) -> None:
        layers: list[nn.Module] = []
        width = in_channels
        for h in hidden:
            layers += [nn.Conv2d(width, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Conv2d(width, out_channels, 1))
        super().__init__(*layers)
