"""The "standard cross-attention" fusion that replaces LTFR in the paper's ablation (Table 2)."""

from __future__ import annotations

import torch
from torch import nn

from .ltfr import channel_reduction

__all__ = ["CrossAttentionFusion"]


class CrossAttentionFusion(nn.Module):
    """Image positions attend to the text tokens (padding masked): H = F_img + MHA(F_img, F_text).

    Same interface and output width as :class:`~bundle.networks.ltfr.LTFR`, so the two swap freely.

    Args:
        in_channels: channels of the backbone feature map.
        text_dim: D_t of the text tokens.
        dim: fusion width D after channel reduction.
        norm: normalise the reduced features (see :func:`~bundle.networks.ltfr.channel_reduction`).
        heads: attention heads (``dim`` must be divisible by it).
    """

    def __init__(self, in_channels: int, text_dim: int, dim: int, norm: bool = False, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"CrossAttentionFusion: dim {dim} is not divisible by heads {heads}")
        self.reduce = channel_reduction(in_channels, dim, norm)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, kdim=text_dim, vdim=text_dim, batch_first=True)

    def forward(self, feature: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """feature (B, C, H, W), text (B, N, D_t), mask (B, N) -> (B, D, H, W)."""
        f_img = self.reduce(feature)
        b, d, h, w = f_img.shape
        q = f_img.flatten(2).transpose(1, 2)  # (B, M, D)
        out, _ = self.attn(self.norm(q), text, text, key_padding_mask=~mask, need_weights=False)
        return f_img + out.transpose(1, 2).reshape(b, d, h, w)
