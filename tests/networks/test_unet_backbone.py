"""BasicUNetBackbone: MONAI BasicUNet's blocks as a diffusion UNet that takes the prompt P in every block."""

from __future__ import annotations

import pytest
import torch
from forward_calls import modules_that_ran
from monai.networks.nets import BasicUNet

from bundle.errors import BundleInputError
from bundle.networks import LCPDN, BasicUNetBackbone, DecoderFeatureBackbone, TextEncoder, build_image_encoder

FEATURES = (8, 8, 16, 16, 32, 8)


def acting(net: BasicUNetBackbone) -> BasicUNetBackbone:
    """The zero-initialised scale-shift layers and transformer outputs perturbed, as in a trained network."""
    torch.manual_seed(1)
    for name, p in net.named_parameters():
        if "emb_proj" in name or "proj_out" in name:
            p.data.add_(0.1 * torch.randn_like(p))
    return net


@pytest.fixture(scope="module")
def backbone() -> BasicUNetBackbone:
    torch.manual_seed(0)
    net = BasicUNetBackbone(features=FEATURES, attention=(True, True, False, False, False), cross_attention_dim=16,
                            num_head_channels=8, norm_num_groups=8)
    return acting(net).eval()


def test_decoder_blocks_have_the_declared_channels_and_strides(backbone):
    assert isinstance(backbone, DecoderFeatureBackbone)
    assert backbone.decoder_block_channels() == [16, 16, 8, 8] and backbone.decoder_block_strides() == [8, 4, 2, 1]
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([0, 10])
    ctx, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        feats = backbone.decoder_features(x, t, [0, 2, 3], context=ctx, context_mask=mask)
        noise = backbone(x, t, context=ctx)  # the noise prediction of stage 1
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 8, 8), (8, 32, 32), (8, 64, 64)]
    assert noise.shape == x.shape
    with pytest.raises(BundleInputError, match="0..3"):
        backbone.decoder_features(x, t, [4], context=ctx)


def test_untrained_it_computes_a_basicunet_decoder():
    """With its scale-shift layers and transformer outputs at their zero start, the backbone IS MONAI's
    BasicUNet: the same weights give the same last decoder features, whatever the prompt."""
    torch.manual_seed(0)
    net = BasicUNetBackbone(features=FEATURES, cross_attention_dim=16, num_head_channels=8, norm_num_groups=8).eval()
    reference = BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=FEATURES).eval()
    names = {"conv_0": "conv_0", **{f"down_{i + 1}.convs": f"down.{i}" for i in range(4)},
             **{f"upcat_{4 - j}": f"up.{j}" for j in range(4)}}
    state = {}
    for key, value in reference.state_dict().items():
        prefix = next((p for p in names if key.startswith(p + ".")), None)
        if prefix is not None:
            state[names[prefix] + key[len(prefix):]] = value
    missing = net.load_state_dict(state, strict=False).missing_keys
    assert all("emb_proj" in k or k.startswith(("attentions.", "time_embed.", "out.")) for k in missing)
    x = torch.randn(1, 3, 64, 64)
    out = {}
    reference.upcat_1.register_forward_hook(lambda _m, _i, o: out.setdefault("h", o))
    with torch.no_grad():
        reference(x)
        ours = net.decoder_features(x, torch.tensor([0]), [3], emb_offset=torch.randn(1, net.time_embed_dim),
                                    context=torch.randn(1, 4, 16))[0]
    assert torch.allclose(ours, out["h"], atol=1e-5)


def test_prompt_reaches_every_block_and_padding_is_no_key(backbone):
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([0])
    tokens = torch.randn(1, 3, 16)
    padded = torch.cat([tokens, torch.randn(1, 4, 16)], dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 4])
    offset = torch.randn(1, backbone.time_embed_dim)
    with torch.no_grad():
        short = backbone.decoder_features(x, t, [3], context=tokens)[0]
        long = backbone.decoder_features(x, t, [3], context=padded, context_mask=mask)[0]
        moved = backbone.decoder_features(x, t, [3], emb_offset=offset, context=tokens)[0]
        other_tokens = backbone.decoder_features(x, t, [3], context=torch.randn(1, 3, 16))[0]
    assert torch.allclose(short, long, atol=1e-5)
    assert not torch.allclose(short, moved, atol=1e-3)  # Eq. 5's P scales and shifts the blocks
    assert not torch.allclose(short, other_tokens, atol=1e-3)  # Q* enters through cross-attention
    assert len(backbone.cross_attention_modules()) == 2 * 2  # attn2 + norm2 at the bottleneck and after block 0
    # the scale-shift is applied after the instance norm: a shift added before it would be normalised away
    block = backbone.down[1]
    grads = torch.autograd.grad(block(torch.randn(1, 8, 16, 16), offset.requires_grad_()).sum(), offset)[0]
    assert grads.abs().sum() > 0


def test_stopping_early_skips_the_later_blocks(backbone):
    x, t, ctx = torch.randn(1, 3, 64, 64), torch.tensor([0]), torch.randn(1, 3, 16)
    assert modules_that_ran(backbone.modules_after(0), lambda: backbone.decoder_features(x, t, [0], context=ctx)) == 0
    assert len(backbone.modules_after(0)) == 4  # out, up 1-3 (the transformer after block 0 runs)
    assert modules_that_ran(backbone.modules_after(0), lambda: backbone(x, t, context=ctx)) == 4


def test_bad_sizes_are_one_clear_error():
    with pytest.raises(BundleInputError, match="6 widths"):
        BasicUNetBackbone(features=(8, 16))
    with pytest.raises(BundleInputError, match="num_head_channels"):
        BasicUNetBackbone(features=(8, 8, 16, 16, 24, 8), num_head_channels=16, norm_num_groups=8)


def test_lcpdn_trains_with_it_and_a_frozen_copy_keeps_only_cprfl_trainable(backbone, tiny_encoders):
    text, image = TextEncoder(str(tiny_encoders["bert"]), max_tokens=16), build_image_encoder("hf_clip", str(tiny_encoders["hf_clip"]))
    net = LCPDN(backbone.train(), text, image, timesteps=[0], blocks=[1, 3], fusion_dim=8)
    net(torch.rand(2, 3, 64, 64) * 2 - 1, ["the nuclei are evenly distributed.", "one lesion."]).sum().backward()
    assert backbone.conv_0.emb_proj[1].weight.grad.abs().sum() > 0  # the prompt's path into the blocks learns
    assert net.alignment.w_t.weight.grad is not None
    frozen = LCPDN(backbone, text, image, timesteps=[0], blocks=[1, 3], fusion_dim=8, backbone_trainable=False)
    trainable = {n for n, p in frozen.extractor.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".attn2." in n or ".norm2." in n for n in trainable)
