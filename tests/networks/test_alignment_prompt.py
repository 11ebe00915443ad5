"""Eq. 1-5: attention of text over image tokens, tanh gating, masked mean, projection to the time embedding."""

from __future__ import annotations

import math

import torch

from bundle.networks.alignment_prompt import AlignmentPrompt, masked_mean


def _inputs(b=2, n=6, m=5, dt=12, di=10):
    torch.manual_seed(0)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 3:] = False
    return torch.randn(b, n, dt), mask, torch.randn(b, m, di)


def test_equations_against_a_direct_computation():
    text, mask, image = _inputs()
    block = AlignmentPrompt(12, 10, dim=8, emb_dim=20)
    out = block(text, mask, image)
    q, k, v = block.w_q(text), block.w_k(image), block.w_v(image)
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1)  # Eq. 1
    q_star = torch.tanh(a @ v) * q  # Eq. 2
    e = torch.stack([q_star[i][mask[i]].mean(0) for i in range(2)])  # Eq. 3, real tokens only
    assert torch.allclose(out.embedding, e, atol=1e-6)
    assert torch.allclose(out.offset, e @ block.w_t.weight.T + block.w_t.bias, atol=1e-6)  # Eq. 4
    assert out.tokens.shape == (2, 6, 8) and out.offset.shape == (2, 20)


def test_padding_never_leaks_into_the_prompt():
    text, mask, image = _inputs()
    block = AlignmentPrompt(12, 10, dim=8, emb_dim=20)
    before = block(text, mask, image)
    text2 = text.clone()
    text2[0, 3:] = 1e3 * torch.randn(3, 12)  # garbage in the padded positions of sample 0
    after = block(text2, mask, image)
    assert torch.allclose(before.embedding, after.embedding) and torch.allclose(before.offset, after.offset)
    assert torch.all(after.tokens[0, 3:] == 0)


def test_masked_mean_ignores_masked_tokens():
    tokens = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(tokens, torch.tensor([[True, True, False]])).item() == 2.0


def test_prompt_depends_on_the_image():
    text, mask, image = _inputs()
    block = AlignmentPrompt(12, 10, dim=8, emb_dim=20)
    assert not torch.allclose(block(text, mask, image).offset, block(text, mask, image.flip(1) * 2).offset)
