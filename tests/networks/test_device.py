"""The network, the transforms and the text cache on the device of ``LCPDN_TEST_DEVICE`` (default cpu).

``scripts/gpu_check.py`` runs this file with ``LCPDN_TEST_DEVICE=cuda``; in normal runs it is the CPU.
Everything is tiny (32-64 px, tiny encoders).
"""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Activationsd, AsDiscreted, Compose, Resized, ScaleIntensityRanged

from bundle.networks import LCPDN, MonaiDiffusionBackbone, TextEncoder, build_image_encoder
from bundle.networks import text_encoder as te
from bundle.networks.adm import ADMUNet
from bundle.networks.backbone import DiffusionFeatureExtractor
from bundle.transforms import BinaryMaskd, EnsureChannelsd, InvertMonochrome1d

TEXT = ["the nuclei are evenly distributed.", "the nuclei density in the upper right is high."]


def on(t: torch.Tensor, device: torch.device) -> bool:
    """``t`` lives on ``device`` (``cuda`` matches any index, ``cuda:1`` only that one)."""
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


@pytest.fixture(scope="module")
def encoders(tiny_encoders):
    return TextEncoder(str(tiny_encoders["bert"]), max_tokens=16), build_image_encoder("hf_clip", str(tiny_encoders["hf_clip"]))


def tiny_lcpdn(encoders, device: torch.device) -> LCPDN:
    torch.manual_seed(0)
    backbone = MonaiDiffusionBackbone(3, (8, 16), (False, True), 1, cross_attention_dim=16, num_head_channels=8,
                                      norm_num_groups=8)
    net = LCPDN(backbone, encoders[0], encoders[1], blocks=(0, 2), timesteps=(50, 150), fusion_dim=8)
    with torch.no_grad():  # like a pretrained backbone (DDPM zero-initialises residual outputs)
        for p in net.extractor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.to(device)


def images(device: torch.device, batch: int = 2, size: int = 32) -> torch.Tensor:
    return (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)


def test_lcpdn_forward_backward_on_device(encoders, device):
    net = tiny_lcpdn(encoders, device)
    logits = net(images(device), TEXT)
    assert on(logits, device) and logits.shape == (2, 2, 32, 32) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable and all(on(p, device) for p in trainable)
    assert all(p.grad is not None and on(p.grad, device) and torch.isfinite(p.grad).all() for p in trainable)
    assert net.alignment.w_q.weight.grad.abs().sum() > 0  # through the frozen encoders, on the device
    assert all(on(noise, device) for noise in net.extractor._noise.values())  # the shared eps follows the input


def test_autocast_forward_backward_on_device(encoders, device):
    net = tiny_lcpdn(encoders, device)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16  # what each device's autocast runs
    with torch.autocast(device.type, dtype=dtype):
        logits = net(images(device), TEXT)
    assert on(logits, device) and torch.isfinite(logits.float()).all()
    logits.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_small_adm_features_and_prompt_gradient_on_device(device):
    torch.manual_seed(0)
    adm = ADMUNet(model_channels=32, num_head_channels=32, cross_attention_dim=16)
    with torch.no_grad():  # ADM zero-initialises residual outputs, which would hide the prompt slot
        for p in adm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    adm.to(device)
    ext = DiffusionFeatureExtractor(adm, timesteps=(50, 150, 250), blocks=[4, 8], trainable=False)
    offset = torch.zeros(1, adm.time_embed_dim, device=device, requires_grad=True)
    context = torch.randn(1, 5, 16, device=device)
    feats = ext(images(device, 1, 64), emb_offset=offset, context=context)
    assert [tuple(f.shape) for f in feats] == [(1, 3 * 128, 4, 4), (1, 3 * 64, 16, 16)]
    assert all(on(f, device) and torch.isfinite(f).all() for f in feats)
    sum(f.square().mean() for f in feats).backward()
    assert on(offset.grad, device) and offset.grad.abs().sum() > 0  # the prompt slot learns through the frozen ADM


def test_transforms_keep_device_tensors(device):
    grey = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8) * 4  # 0..252
    mask = (grey > 120).float() * 255
    data = {"image": MetaTensor(grey.to(device)), "label": MetaTensor(mask.to(device))}
    pipeline = Compose([
        BinaryMaskd("label", image_key="image"),
        ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=-1.0, b_max=1.0, clip=True),
        EnsureChannelsd("image", channels=3),
        Resized(["image", "label"], spatial_size=(16, 16), mode=["bilinear", "nearest"], anti_aliasing=[True, False]),
    ])
    out = pipeline(data)
    assert on(out["image"], device) and on(out["label"], device)
    assert out["image"].shape == (3, 16, 16) and -1 <= out["image"].min() < out["image"].max() <= 1
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}
    cr = MetaTensor(grey.to(device), meta={"0028|0004": "MONOCHROME1"})
    inverted = InvertMonochrome1d("image")({"image": cr})["image"]
    assert on(inverted, device) and inverted[0, 0, 0] == grey.max() and inverted.meta["0028|0004"] == "MONOCHROME2"
    logits = torch.randn(2, 16, 16, device=device)
    post = Compose([Activationsd("pred", softmax=True), AsDiscreted("pred", argmax=True)])({"pred": logits})
    assert on(post["pred"], device) and post["pred"].shape == (1, 16, 16)


def test_text_cache_returns_tokens_on_the_device(tiny_encoders, device, monkeypatch):
    te.clear_text_cache()
    enc = TextEncoder(str(tiny_encoders["bert"]), max_tokens=16)
    calls = []
    original = enc._encode
    monkeypatch.setattr(enc, "_encode", lambda s: calls.append(list(s)) or original(s))
    tokens, mask = enc(TEXT, device=device)
    assert on(tokens, device) and on(mask, device) and on(next(enc.model.parameters()), device)
    again, again_mask = enc(TEXT[::-1], device=device)  # from the cache: no second encoding
    assert calls == [sorted(TEXT)]
    assert on(again, device) and torch.equal(again[0], tokens[1]) and torch.equal(again_mask[1], mask[0])
    assert all(v.device.type == "cpu" for pair in te._CACHE.values() for v in pair)  # the cache keeps host copies
    uncached, _ = TextEncoder(str(tiny_encoders["bert"]), max_tokens=16, cache_size=0)(TEXT, device=device)
    assert on(uncached, device) and torch.allclose(uncached, tokens, atol=1e-5)
