"""Cross-attention whose padding tokens are never keys (the prompt Q* of a short sentence in a long batch).

MONAI's :class:`~monai.networks.blocks.CrossAttentionBlock` attends to every context token. The text
tokens of CPRFL are padded to ``text_max_tokens``; zeroed padding still takes softmax weight, so the same
sentence would give other features at another padding length. MONAI's UNet blocks hand ``context``
through unchanged, so the key-padding mask travels inside it: :func:`pack_context` appends the mask as
one more channel, and :class:`KeyMaskedCrossAttention` (a drop-in class for MONAI's block, same
parameters and state-dict keys) takes it off again and masks the keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import CrossAttentionBlock
from torch import nn

__all__ = ["KeyMaskedCrossAttention", "pack_context", "unpack_context", "mask_cross_attention"]


def pack_context(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """tokens (B, N, D) and mask (B, N) bool -> (B, N, D + 1), the mask as the last channel."""
    if mask is None:
        return tokens
    return torch.cat([tokens, mask.to(tokens.dtype).unsqueeze(-1)], dim=-1)


def unpack_context(context: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`pack_context` for tokens of width ``dim``; an unpacked context has no mask."""
    if context.shape[-1] == dim + 1:
        return context[..., :dim], context[..., dim] > 0.5
    return context, None


def key_padding_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """mask (B, N) bool -> boolean ``attn_mask`` (B, 1, 1, N) for scaled_dot_product_attention.

    A sample without any real token keeps all its keys (softmax over nothing is undefined).
    """
    if mask is None:
        return None
    mask = mask | ~mask.any(dim=1, keepdim=True)
    return mask[:, None, None, :]


class KeyMaskedCrossAttention(CrossAttentionBlock):
    """:class:`CrossAttentionBlock` reading a :func:`pack_context` context: padding tokens are no keys."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, M, C) queries, context (B, N, D) or packed (B, N, D + 1) -> (B, M, C)."""
        if context is None:
            return super().forward(x)
        tokens, mask = unpack_context(context, self.context_input_size)
        if mask is None:
            return super().forward(x, context=tokens)
        q = self.input_rearrange(self.to_q(x))  # (B, heads, M, d)
        k = self.input_rearrange(self.to_k(tokens))  # (B, heads, N, d)
        v = self.input_rearrange(self.to_v(tokens))
        if self.attention_dtype is not None:
            q, k = q.to(self.attention_dtype), k.to(self.attention_dtype)
        out = F.scaled_dot_product_attention(
            q, k, v.to(q.dtype), attn_mask=key_padding_bias(mask), scale=self.scale,
            dropout_p=self.dropout_rate if self.training else 0.0,
        )
        return self.drop_output(self.out_proj(self.out_rearrange(out.to(v.dtype))))


def mask_cross_attention(module: nn.Module) -> nn.Module:
    """Turn every ``CrossAttentionBlock`` under ``module`` into a :class:`KeyMaskedCrossAttention` in place.

    Only the class changes (no parameter, buffer or key): checkpoints load as before.
    """
    for child in module.modules():
        if type(child) is CrossAttentionBlock:
            if child.causal or child.rel_positional_embedding is not None or child.save_attn:
                raise ValueError("key masking supports plain cross-attention only (no causal / relative / saved attention)")
            child.__class__ = KeyMaskedCrossAttention
    return module
