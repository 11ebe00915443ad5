"""Text-vision alignment prompt block of CPRFL (paper section 3.3, Eq. 1-5)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["AlignmentPrompt", "PromptOutput", "masked_mean"]


class PromptOutput(NamedTuple):
    """What the alignment block hands to the diffusion UNet."""

    tokens: torch.Tensor  # (B, N, D) Q*, padding positions zeroed: cross-attention context
    embedding: torch.Tensor  # (B, D) E, Eq. 3
    offset: torch.Tensor  # (B, d) TextProj(E) = E Wt + bt, Eq. 4; P = M + offset (Eq. 5)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3 over real tokens only: tokens (B, N, D), mask (B, N) bool -> (B, D)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, N, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class AlignmentPrompt(nn.Module):
    """Eq. 1-5: text tokens query image tokens; the aligned tokens become the diffusion prompt.

    Q = text tokens, K = V = image tokens. W^Q, W^K, W^V map both modalities to the shared width D
    (the paper's "projected" Q, K, V followed by its D x D matrices, composed into one linear map each):

        A  = softmax((Q W^Q)(K W^K)^T / sqrt(D))      Eq. 1
        Z  = A (V W^V)                                Eq. 1
        Q* = tanh(Z) ⊙ (Q W^Q)                        Eq. 2
        E  = mean_n Q*_n   (real tokens only)         Eq. 3
        TextProj(E) = E W_t + b_t                     Eq. 4
        P  = M + TextProj(E)                          Eq. 5 (the addition happens in the backbone)

    Args:
        text_dim: D_t of the text encoder.
        image_dim: D_i of the image encoder.
        dim: shared width D.
        emb_dim: width d of the backbone's timestep embedding M.
    """

    def __init__(self, text_dim: int, image_dim: int, dim: int, emb_dim: int) -> None:
        super().__init__()
        for name, value in (("text_dim", text_dim), ("image_dim", image_dim), ("dim", dim), ("emb_dim", emb_dim)):
            if value < 1:
                raise ValueError(f"AlignmentPrompt: {name} must be positive, got {value}")
        self.dim = dim
        self.w_q = nn.Linear(text_dim, dim, bias=False)
        self.w_k = nn.Linear(image_dim, dim, bias=False)
        self.w_v = nn.Linear(image_dim, dim, bias=False)
        self.w_t = nn.Linear(dim, emb_dim)  # W_t and b_t

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> PromptOutput:
        """text (B, N, D_t), text_mask (B, N) bool, image (B, M, D_i) -> :class:`PromptOutput`."""
        q = self.w_q(text)  # (B, N, D)
        k = self.w_k(image)  # (B, M, D)
        v = self.w_v(image)  # (B, M, D)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.dim), dim=-1)  # (B, N, M) Eq. 1
        z = attn @ v  # (B, N, D) Eq. 1
        q_star = torch.tanh(z) * q  # (B, N, D) Eq. 2
        q_star = q_star * text_mask.unsqueeze(-1).to(q_star.dtype)  # padding carries nothing
        e = masked_mean(q_star, text_mask)  # (B, D) Eq. 3
        return PromptOutput(q_star, e, self.w_t(e))  # Eq. 4
