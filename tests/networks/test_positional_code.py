"""The positional code of the cross-attention's queries: a no-op at initialisation, position-dependent once trained."""

from __future__ import annotations

import pytest
import torch

from bundle.errors import BundleInputError
from bundle.networks.backbone import DiffusionFeatureExtractor, MonaiDiffusionBackbone, load_backbone_weights
from bundle.networks.positional_code import PositionalCode


def backbone(positional_code: bool) -> MonaiDiffusionBackbone:
    torch.manual_seed(0)
    bb = MonaiDiffusionBackbone(3, (8, 16, 16), (False, False, True), 1, cross_attention_dim=16,
                                num_head_channels=8, norm_num_groups=8, positional_code=positional_code)
    torch.manual_seed(1)
    for name, p in bb.named_parameters():  # perturb like a trained model (the code's own layers stay zero)
        if "position_code" not in name:
            p.data.add_(0.05 * torch.randn_like(p))
    return bb


def test_code_is_zero_at_init_and_tells_left_from_right_once_trained():
    code = PositionalCode(4, frequencies=2)
    x = torch.zeros(1, 4, 6, 8)
    assert torch.equal(code(x), x)
    features = code.features(6, 8, x.device, x.dtype)
    assert features.shape == (1, 10, 6, 8)
    assert torch.allclose(features[0, 1, 0], (torch.arange(8) + 0.5) / 8 * 2 - 1)  # x at pixel centres
    torch.nn.init.normal_(code.proj.weight)
    out = code(x)
    assert not torch.allclose(out[..., :4], out[..., 4:].flip(-1))  # left half is not the right half mirrored


def test_plain_unet_checkpoint_loads_and_gives_the_same_features(tmp_path):
    plain, coded = backbone(False), backbone(True)
    assert coded.checkpoint_optional_keys() and all("position_code" in k for k in coded.checkpoint_optional_keys())
    torch.save(plain.unet.state_dict(), tmp_path / "unet.pt")  # what configs/pretrain_diffusion.json writes
    load_backbone_weights(coded, tmp_path / "unet.pt")
    x, t, ctx = torch.randn(2, 3, 32, 32), torch.tensor([5, 50]), torch.randn(2, 4, 16)
    for a, b in zip(plain.decoder_features(x, t, [0, 2, 4], context=ctx), coded.decoder_features(x, t, [0, 2, 4], context=ctx)):
        assert torch.allclose(a, b, atol=1e-6)
    for code in (m for m in coded.modules() if isinstance(m, PositionalCode)):
        torch.nn.init.normal_(code.proj.weight, std=0.5)
    moved = coded.decoder_features(x, t, [2], context=ctx)[0]
    assert not torch.allclose(moved, plain.decoder_features(x, t, [2], context=ctx)[0], atol=1e-4)


def test_frozen_backbone_still_trains_the_code_and_the_option_needs_cross_attention():
    fe = DiffusionFeatureExtractor(backbone(True), blocks=(0, 2), trainable=False)
    codes = [m for m in fe.backbone.modules() if isinstance(m, PositionalCode)]
    assert len(codes) == 4 and all(p.requires_grad for c in codes for p in c.parameters())
    with pytest.raises(BundleInputError, match="positional_code needs cross-attention"):
        MonaiDiffusionBackbone(3, (8, 16), (False, True), 1, cross_attention_dim=None, num_head_channels=8,
                               norm_num_groups=8, positional_code=True)
