"""Eq. 6: shared seeded noise, batched timesteps, hooked decoder blocks, early stop, prompt slot, checkpoints."""

from __future__ import annotations

import pytest
import torch

from bundle.errors import BundleInputError
from bundle.networks.backbone import DiffusionFeatureExtractor, MonaiDiffusionBackbone, load_backbone_weights


def tiny_backbone(cross_attention_dim=16):
    torch.manual_seed(0)
    bb = MonaiDiffusionBackbone(3, (8, 16, 16), (False, False, True), 1, cross_attention_dim=cross_attention_dim,
                                num_head_channels=8, norm_num_groups=8)
    for p in bb.parameters():  # DDPM zero-initialises residual outputs; perturb like a trained model
        p.data.add_(0.05 * torch.randn_like(p))
    return bb


def test_block_channels_and_strides_match_real_outputs():
    bb = tiny_backbone()
    n = len(bb.decoder_block_channels())
    x = torch.randn(1, 3, 32, 32)
    feats = bb.decoder_features(x, torch.tensor([10]), list(range(n)), context=torch.randn(1, 4, 16))
    assert [f.shape[1] for f in feats] == bb.decoder_block_channels()
    assert [32 // f.shape[-1] for f in feats] == bb.decoder_block_strides()


def test_shared_noise_is_identical_across_calls_timesteps_and_instances():
    fe = DiffusionFeatureExtractor(tiny_backbone(), timesteps=(50, 150, 250), blocks=(0, 2), noise_seed=7)
    x0 = torch.zeros(2, 3, 32, 32)
    x_t, t = fe.add_noise(x0)
    eps = fe.shared_noise((3, 32, 32), x0.device, x0.dtype)
    abar = fe.scheduler.alphas_cumprod
    for i, step in enumerate((50, 150, 250)):  # x0 = 0 -> x_t = sqrt(1 - abar_t) eps for every image
        expected = torch.sqrt(1 - abar[step]) * eps
        assert torch.allclose(x_t[2 * i], expected, atol=1e-6) and torch.allclose(x_t[2 * i + 1], expected, atol=1e-6)
    assert t.tolist() == [50, 50, 150, 150, 250, 250]
    other = DiffusionFeatureExtractor(tiny_backbone(), blocks=(0,), noise_seed=7)
    assert torch.equal(other.shared_noise((3, 32, 32), x0.device, x0.dtype), eps)


def test_schedule_matches_the_published_alphas():
    fe = DiffusionFeatureExtractor(tiny_backbone(), blocks=(0,))
    abar = fe.scheduler.alphas_cumprod[[50, 150, 250]]
    assert torch.allclose(abar, torch.tensor([0.9700, 0.7859, 0.5214]), atol=1e-4)


def test_timesteps_concatenated_per_block_timestep_major():
    bb = tiny_backbone()
    fe = DiffusionFeatureExtractor(bb, timesteps=(50, 150), blocks=(0, 2))
    x = torch.randn(2, 3, 32, 32)
    ctx = torch.randn(2, 4, 16)
    feats = fe(x, context=ctx)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 8, 8), (2, 32, 16, 16)]
    x_t, t = fe.add_noise(x)
    direct = bb.decoder_features(x_t, t, [0], context=ctx.repeat(2, 1, 1))[0]  # (T*B, 16, 8, 8)
    assert torch.allclose(feats[0][1, :16], direct[1], atol=1e-5)  # image 1, t=50
    assert torch.allclose(feats[0][1, 16:], direct[3], atol=1e-5)  # image 1, t=150


def test_forward_stops_after_the_last_hooked_block():
    bb = tiny_backbone()
    ran = []
    for i, up in enumerate(bb.unet.up_blocks):
        for j, res in enumerate(up.resnets):
            res.register_forward_hook(lambda *_, i=i, j=j: ran.append((i, j)))
    bb.decoder_features(torch.randn(1, 3, 32, 32), torch.tensor([5]), [1], context=torch.randn(1, 2, 16))
    assert ran == [(0, 0), (0, 1)]  # decoder units 0 and 1 only


def test_prompt_offset_changes_features_and_zero_offset_is_a_no_op():
    bb = tiny_backbone()
    x, t, ctx = torch.randn(1, 3, 32, 32), torch.tensor([50]), torch.randn(1, 3, 16)
    base = bb.decoder_features(x, t, [3], context=ctx)[0]
    zero = bb.decoder_features(x, t, [3], emb_offset=torch.zeros(1, bb.time_embed_dim), context=ctx)[0]
    moved = bb.decoder_features(x, t, [3], emb_offset=torch.randn(1, bb.time_embed_dim), context=ctx)[0]
    assert torch.allclose(base, zero) and not torch.allclose(base, moved)


def test_frozen_backbone_trains_only_its_cross_attention_and_passes_gradients_to_the_prompt():
    fe = DiffusionFeatureExtractor(tiny_backbone(), blocks=(1,), trainable=False)
    fe.train()
    assert not fe.backbone.training  # frozen stays in eval mode
    cross = {id(p) for m in fe.backbone.cross_attention_modules() for p in m.parameters()}
    assert cross and all(p.requires_grad == (id(p) in cross) for p in fe.backbone.parameters())
    offset = torch.zeros(1, fe.backbone.time_embed_dim, requires_grad=True)
    context = torch.randn(1, 2, 16, requires_grad=True)
    fe(torch.randn(1, 3, 32, 32), emb_offset=offset, context=context)[0].sum().backward()
    assert offset.grad is not None and offset.grad.abs().sum() > 0
    assert context.grad is not None and context.grad.abs().sum() > 0  # Q* reaches the loss through cross-attention
    for name, p in fe.backbone.named_parameters():
        assert (p.grad is not None) == (id(p) in cross), name  # the published / pretrained weights get nothing


def test_frozen_backbone_without_cross_attention_runs_without_a_graph():
    fe = DiffusionFeatureExtractor(tiny_backbone(cross_attention_dim=None), blocks=(1,), trainable=False)
    assert not any(p.requires_grad for p in fe.parameters())
    with torch.enable_grad():
        out = fe(torch.randn(1, 3, 32, 32))[0]
    assert not out.requires_grad  # nothing to train: the forward ran without a graph


def test_checkpoint_round_trip_and_clear_mismatch_error(tmp_path):
    bb = tiny_backbone()
    torch.save(bb.unet.state_dict(), tmp_path / "unet.pt")  # what pretrain_diffusion.json writes
    fe = DiffusionFeatureExtractor(tiny_backbone(), blocks=(0,), checkpoint=str(tmp_path / "unet.pt"))
    assert all(torch.equal(a, b) for a, b in zip(fe.backbone.unet.state_dict().values(), bb.unet.state_dict().values()))
    with pytest.raises(BundleInputError, match="cross_attention_dim|missing key|unexpected key"):
        DiffusionFeatureExtractor(tiny_backbone(cross_attention_dim=None), blocks=(0,), checkpoint=str(tmp_path / "unet.pt"))
    with pytest.raises(BundleInputError, match="does not exist"):
        DiffusionFeatureExtractor(tiny_backbone(), blocks=(0,), checkpoint=str(tmp_path / "nope.pt"))


def test_bad_blocks_and_timesteps_are_clear_errors():
    with pytest.raises(BundleInputError, match="blocks"):
        DiffusionFeatureExtractor(tiny_backbone(), blocks=(99,))
    with pytest.raises(BundleInputError, match="timesteps"):
        DiffusionFeatureExtractor(tiny_backbone(), timesteps=(1000,), blocks=(0,))


def test_modules_after_the_last_block_are_not_trainable():
    fe = DiffusionFeatureExtractor(tiny_backbone(), blocks=(0, 2))
    unet = fe.backbone.unet
    assert not any(p.requires_grad for p in unet.out.parameters())
    assert not any(p.requires_grad for p in unet.up_blocks[1].resnets[1].parameters())  # unit 3
    assert all(p.requires_grad for p in unet.up_blocks[1].resnets[0].parameters())  # unit 2 (hooked)
    x = torch.randn(1, 3, 32, 32)
    sum(f.sum() for f in fe(x, context=torch.randn(1, 2, 16))).backward()
    trainable = [p for p in fe.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)  # every trainable parameter is used (DDP-safe)


def test_research_pipeline_switches_give_the_same_features():
    """Sequential timesteps and the full decoder (the research code's way) change cost, not results."""
    bb = tiny_backbone()
    fast = DiffusionFeatureExtractor(bb, timesteps=(50, 150, 250), blocks=(0, 2))
    slow = DiffusionFeatureExtractor(bb, timesteps=(50, 150, 250), blocks=(0, 2), batch_timesteps=False, stop_early=False)
    x, ctx = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16)
    for a, b in zip(fast(x, context=ctx), slow(x, context=ctx)):
        assert torch.allclose(a, b, atol=1e-5)


def test_fresh_training_noise_changes_per_step_but_evaluation_keeps_the_seeded_eps():
    fe = DiffusionFeatureExtractor(tiny_backbone(), timesteps=(50, 250), blocks=(0,), training_noise="fresh")
    x0 = torch.zeros(2, 3, 32, 32)
    fe.train()
    first, _ = fe.add_noise(x0)
    second, _ = fe.add_noise(x0)
    assert not torch.allclose(first, second)  # a new eps every training step
    assert not torch.allclose(first[0], first[1])  # and per image
    abar = fe.scheduler.alphas_cumprod
    ratio = torch.sqrt((1 - abar[250]) / (1 - abar[50]))
    assert torch.allclose(first[2], ratio * first[0], atol=1e-5)  # one eps per image across its timesteps
    fe.eval()
    shared = DiffusionFeatureExtractor(tiny_backbone(), timesteps=(50, 250), blocks=(0,)).eval()
    assert torch.equal(fe.add_noise(x0)[0], shared.add_noise(x0)[0])  # inference: the seeded eps, deterministic
    with pytest.raises(BundleInputError, match="training_noise"):
        DiffusionFeatureExtractor(tiny_backbone(), blocks=(0,), training_noise="random")
