"""Lightweight text-vision fusion representation, LTFR (paper section 3.4, Eq. 7-11)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BundleInputError
from .alignment_prompt import masked_mean

__all__ = ["LTFR", "TEXT_LAYOUTS", "tile_text", "pixel_coordinates", "channel_reduction", "MultiScaleFusion"]

#: how the text reaches each position of LTFR: the paper's tiled tokens, or the pooled sentence + position
TEXT_LAYOUTS = ("tiled", "pooled")


def tile_text(text: torch.Tensor, mask: torch.Tensor, positions: int) -> torch.Tensor:
    """Replicate / truncate each sample's real tokens along the token axis to ``positions`` (F_text↑).

    text (B, N, D), mask (B, N) bool with real tokens first -> (B, positions, D); position m takes
    real token ``m mod n_b`` so padding never enters the fusion.
    """
    lengths = mask.sum(1).clamp_min(1)  # (B,)
    index = torch.arange(positions, device=text.device).unsqueeze(0) % lengths.unsqueeze(1)  # (B, M)
    return torch.gather(text, 1, index.unsqueeze(-1).expand(-1, -1, text.shape[-1]))


def pixel_coordinates(b: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W): each position's two array coordinates, pixel centres in [-1, 1]."""
    axes = [(torch.arange(n, device=like.device, dtype=like.dtype) + 0.5) / n * 2 - 1 for n in (h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0).expand(b, -1, -1, -1)


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
        text_layout: ``"tiled"`` (the paper: position m gets real token m mod n, so each position sees one
            token) or ``"pooled"`` (not in the paper: every position gets the masked mean of the tokens,
            the whole sentence, plus its two coordinates, so Eq. 8-9 can act on where a sentence's
            location words point).
    """

    def __init__(self, in_channels: int, text_dim: int, dim: int, norm: bool = False, text_layout: str = "tiled") -> None:
        super().__init__()
        if text_layout not in TEXT_LAYOUTS:
            raise BundleInputError(f"LTFR text layout {text_layout!r}: expected one of {', '.join(TEXT_LAYOUTS)}")
        self.text_layout = text_layout
        extra = 2 if text_layout == "pooled" else 0  # the coordinates
        self.reduce = channel_reduction(in_channels, dim, norm)
        self.text_proj = nn.Linear(text_dim, dim)
        self.mlp = nn.Sequential(nn.Conv2d(2 * dim + extra, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 1))
        self.gate = nn.Conv2d(2 * dim + extra, 1, 1)

    def gate_and_fuse(self, feature: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (H, λ): H (B, D, H, W) and the gate λ (B, 1, H, W)."""
        f_img = self.reduce(feature)  # (B, D, H, W)
        b, d, h, w = f_img.shape
        if self.text_layout == "tiled":
            f_text = tile_text(self.text_proj(text), mask, h * w).transpose(1, 2).reshape(b, d, h, w)  # row-major
            f_cat = torch.cat([f_img, f_text], dim=1)  # (B, 2D, H, W) Eq. 7
        else:
            f_text = masked_mean(self.text_proj(text), mask)[:, :, None, None].expand(-1, -1, h, w)
            f_cat = torch.cat([f_img, f_text, pixel_coordinates(b, h, w, f_img)], dim=1)  # (B, 2D + 2, H, W)
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
