"""Eq. 7-11 (LTFR, multi-scale fusion), the cross-attention ablation, the pixel classifier, the TextDiff head."""

from __future__ import annotations

import torch

from bundle.networks import CrossAttentionFusion, LTFR, MultiScaleFusion, PixelClassifier, TextDiffHead, tile_text


def _text(b=2, n=5, d=12):
    torch.manual_seed(0)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 2:] = False
    return torch.randn(b, n, d), mask


def test_tile_text_repeats_real_tokens_only():
    text, mask = _text()
    tiled = tile_text(text, mask, 7)
    assert tiled.shape == (2, 7, 12)
    assert torch.equal(tiled[0, 5], text[0, 0]) and torch.equal(tiled[0, 6], text[0, 1])  # 5 real tokens, wraps
    assert torch.equal(tiled[1, 2], text[1, 0]) and torch.equal(tiled[1, 3], text[1, 1])  # 2 real tokens
    truncated = tile_text(text, mask, 3)  # fewer positions than tokens: truncate
    assert torch.equal(truncated[0], text[0, :3]) and torch.equal(truncated[1], text[1, [0, 1, 0]])


def test_ltfr_equations_gate_in_unit_interval_and_shape():
    text, mask = _text()
    ltfr = LTFR(in_channels=6, text_dim=12, dim=4)
    feature = torch.randn(2, 6, 3, 5)
    h, lam = ltfr.gate_and_fuse(feature, text, mask)
    assert h.shape == (2, 4, 3, 5) and lam.shape == (2, 1, 3, 5)
    assert torch.all((lam >= 0) & (lam <= 1))
    f_img = ltfr.reduce(feature)
    f_text = tile_text(ltfr.text_proj(text), mask, 15).transpose(1, 2).reshape(2, 4, 3, 5)
    f_cat = torch.cat([f_img, f_text], 1)
    expected_lam = torch.sigmoid(ltfr.gate(f_cat))
    f_star = expected_lam * ltfr.mlp(f_cat) + (1 - expected_lam) * f_img
    assert torch.allclose(h, f_star * f_img, atol=1e-6)  # Eq. 9-10


def test_normalised_reduction_puts_small_features_at_unit_scale():
    """The default (fusion_norm): decoder features of a fresh backbone are small (rms 0.05-0.2), and Eq. 10
    multiplies F_img by F*; normalised, F_img enters the product at unit scale (docs/benchmarks.md section 10)."""
    torch.manual_seed(0)
    feature = 0.05 * torch.randn(2, 6, 8, 8)
    normed = LTFR(6, 12, 4, norm=True)
    for scale in (1.0, 20.0):
        assert torch.allclose(normed.reduce(scale * feature).pow(2).mean().sqrt(), torch.tensor(1.0), atol=0.05)


def test_ltfr_uses_the_text():
    text, mask = _text()
    ltfr = LTFR(6, 12, 4)
    feature = torch.randn(2, 6, 4, 4)
    assert not torch.allclose(ltfr(feature, text, mask), ltfr(feature, text.flip(1), mask))


def test_multiscale_upsamples_and_concatenates():
    text, mask = _text()
    fusion = MultiScaleFusion([LTFR(6, 12, 4), CrossAttentionFusion(8, 12, 4, heads=2)])
    out = fusion([torch.randn(2, 6, 4, 4), torch.randn(2, 8, 8, 8)], text, mask, (16, 16))
    assert out.shape == (2, 8, 16, 16)


def test_cross_attention_fusion_masks_padding():
    text, mask = _text()
    fusion = CrossAttentionFusion(6, 12, 4, heads=2)
    feature = torch.randn(2, 6, 3, 3)
    text2 = text.clone()
    text2[1, 2:] = 100.0
    assert torch.allclose(fusion(feature, text, mask), fusion(feature, text2, mask), atol=1e-5)


def test_pixel_classifier_and_textdiff_head_shapes():
    assert PixelClassifier(16, 2, (8, 4))(torch.randn(2, 16, 5, 5)).shape == (2, 2, 5, 5)
    text, mask = _text()
    head = TextDiffHead([6, 8], text_dim=12, width=16, heads=2)
    out = head([torch.randn(2, 6, 4, 4), torch.randn(2, 8, 8, 8)], text, mask, (16, 16))
    assert out.shape == (2, 2, 16, 16)
