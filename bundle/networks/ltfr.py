"""Lightweight text-vision fusion representation, LTFR (paper section 3.4, Eq. 7-11)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LTFR", "tile_text", "channel_reduction", "MultiScaleFusion"]


def tile_text(text: torch.Tensor, mask: torch.Tensor, positions: int) -> torch.Tensor:
    """Replicate / truncate each sample's real tokens along the token axis to ``positions`` (F_text↑).

    text (B, N, D), mask (B, N) bool with real tokens first -> (B, positions, D); position m takes
    real token ``m mod n_b`` so padding never enters the fusion.
    """
    lengths = mask.sum(1).clamp_min(1)  # (B,)
    index = torch.arange(positions, device=text.device).unsqueeze(0) % lengths.unsqueeze(1)  # (B, M)
    return torch.gather(text, 1, index.unsqueeze(-1).expand(-1, -1, text.shape[-1]))


def channel_reduction(in_channels: int, dim: int, norm: bool = False) -> nn.Module:
    """The 1x1 convolution that reduces timestep-concatenated backbone channels to the fusion width D,
    optionally followed by a GroupNorm (keeps F_img at unit scale for the product of Eq. 10)."""
    if not norm:
        return nn.Conv2d(in_channels, dim, 1)
    return nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), nn.GroupNorm(min(8, dim), dim))


class LTFR(nn.Module):
    """Eq. 7-10 at one scale, as per-position (1x1) operations on a feature map.

        F_img  = 1x1 channel reduction of the backbone features          (B, D, H, W), M = H W positions
        F_cat  = Concat(F_img, F_text↑)                                   Eq. 7
        F_fuse = MLP(F_cat)                                               Eq. 8
        λ      = sigmoid(Linear(F_cat)) in [0, 1], one per position       Eq. 9
        F*     = λ F_fuse + (1 - λ) F_img                                 Eq. 9
        H      = F* ⊙ F_img                                               Eq. 10

    Args:
        in_channels: channels of the backbone feature map (timesteps concatenated).
        text_dim: D_t of the text tokens.
        dim: fusion width D after channel reduction.
        norm: normalise the reduced features (see :func:`channel_reduction`).
    """

    def __init__(self, in_channels: int, text_dim: int, dim: int, norm: bool = False) -> None:
        super().__init__()
        self.reduce = channel_reduction(in_channels, dim, norm)
        self.text_proj = nn.Linear(text_dim, dim)
        self.mlp = nn.Sequential(nn.Conv2d(2 * dim, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 1))
        self.gate = nn.Conv2d(2 * dim, 1, 1)

    def gate_and_fuse(self, feature: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (H, λ): H (B, D, H, W) and the gate λ (B, 1, H, W)."""
        f_img = self.reduce(feature)  # (B, D, H, W)
        b, d, h, w = f_img.shape
        f_text = tile_text(self.text_proj(text), mask, h * w).transpose(1, 2).reshape(b, d, h, w)  # row-major
        f_cat = torch.cat([f_img, f_text], dim=1)  # (B, 2D, H, W) Eq. 7
        f_fuse = self.mlp(f_cat)  # Eq. 8
        lam = torch.sigmoid(self.gate(f_cat))  # (B, 1, H, W) Eq. 9
        f_star = lam * f_fuse + (1 - lam) * f_img  # Eq. 9
        return f_star * f_img, lam  # Eq. 10

    def forward(self, feature: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """feature (B, C, H, W), text (B, N, D_t), mask (B, N) -> H_fuse (B, D, H, W)."""
        return self.gate_and_fuse(feature, text, mask)[0]


class MultiScaleFusion(nn.Module):
    """Eq. 11: one fusion module per scale, upsampled bilinearly to the output size and concatenated.

    Args:
        fusions: one module per scale, each ``(feature, text, mask) -> (B, D_i, h_i, w_i)``.
    """

    def __init__(self, fusions: Sequence[nn.Module]) -> None:
        super().__init__()
        self.fusions = nn.ModuleList(fusions)

    def forward(
        self, features: Sequence[torch.Tensor], text: torch.Tensor, mask: torch.Tensor, size: Sequence[int]
    ) -> torch.Tensor:
        """features: one map per scale -> H (B, sum D_i, *size)."""
        if len(features) != len(self.fusions):
            raise ValueError(f"expected {len(self.fusions)} feature maps, got {len(features)}")
        outs = []
        for fusion, feature in zip(self.fusions, features):
            h = fusion(feature, text, mask)
            if tuple(h.shape[-2:]) != tuple(size):
                h = F.interpolate(h, size=tuple(size), mode="bilinear", align_corners=False)
            outs.append(h)
        return torch.cat(outs, dim=1)  # Eq. 11
