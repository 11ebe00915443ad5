"""TextDiff's segmentation head (Feng, MICCAI 2024; method-notes section 4), the "TextDiff-style" variant.

Text enters only here (no prompt inside the diffusion UNet): each hooked block map is reduced to
``width`` channels, ONE transformer block shared by all scales lets image positions cross-attend to the
text tokens (no positional encoding), the maps are upsampled to the output size, concatenated and
classified by 3x3 convolutions ``S*width -> 128 -> 32 -> K``. Differences from the public code, on
purpose: padding tokens are masked, and Dice is computed on softmax (in the loss, not here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TextDiffHead", "SharedCrossAttentionBlock"]


class SharedCrossAttentionBlock(nn.Module):
    """x + MHA(LN(x), text) followed by x + MLP(LN(x)); image tokens query text tokens."""

    def __init__(self, width: int, text_dim: int, heads: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, kdim=text_dim, vdim=text_dim, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, M, W), text (B, N, D_t), mask (B, N) -> (B, M, W)."""
        x = x + self.attn(self.norm1(x), text, text, key_padding_mask=~mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TextDiffHead(nn.Module):
    """TextDiff head. Args: in_channels per scale, text_dim, width (768 in TextDiff), heads, out_channels."""

    def __init__(
        self, in_channels: Sequence[int], text_dim: int, width: int = 768, heads: int = 8, out_channels: int = 2
    ) -> None:
        super().__init__()
        self.reduce = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.block = SharedCrossAttentionBlock(width, text_dim, heads)
        self.classifier = nn.Sequential(
            nn.Conv2d(width * len(in_channels), 128, 3, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, out_channels, 1),
        )

    def forward(
        self, features: Sequence[torch.Tensor], text: torch.Tensor, mask: torch.Tensor, size: Sequence[int]
    ) -> torch.Tensor:
        outs = []
        for reduce, feature in zip(self.reduce, features):
            f = reduce(feature)  # (B, W, h, w)
            b, w_, h, w = f.shape
            f = self.block(f.flatten(2).transpose(1, 2), text, mask).transpose(1, 2).reshape(b, w_, h, w)
            outs.append(F.interpolate(f, size=tuple(size), mode="bilinear", align_corners=False))
        return self.classifier(torch.cat(outs, dim=1))
