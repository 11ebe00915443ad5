"""ADM (guided-diffusion) backbone: exact checkpoint layout, block-wise decoder features, loading errors.

The reference layout is ``tests/data/adm256_uncond_manifest.json``: the key/shape list of OpenAI's
``256x256_diffusion_uncond.pt`` plus the decoder block output shapes for a 1x3x256x256 input and the
linear-schedule alphas_cumprod at t = 50/150/250. Everything runs on CPU (about 30 s on 2 cores).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from bundle.errors import BundleInputError
from bundle.networks.adm import AttentionBlock, ADMUNet, load_adm_checkpoint, timestep_embedding
from bundle.networks.backbone import DecoderFeatureBackbone, DiffusionFeatureExtractor

MANIFEST = json.loads((Path(__file__).resolve().parents[1] / "data" / "adm256_uncond_manifest.json").read_text())
FULL_SHAPES: dict[str, list[int]] = MANIFEST["state_dict"]
BLOCK_SHAPES = {int(k): v for k, v in MANIFEST["output_block_shapes"].items()}
SMALL = dict(model_channels=32, num_head_channels=32)  # same topology as ADM-256, 1/8 of the width


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter (ADM zero-initialises residual outputs, which would hide the embedding)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net


def _manifest_checkpoint(path: Path, drop: str | None = None, rename: str | None = None,
                         reshape: str | None = None) -> Path:
    """A checkpoint with the manifest's keys/shapes; stride-0 tensors keep the file a few hundred KB."""
    state = {}
    for i, (k, shape) in enumerate(FULL_SHAPES.items()):
        if k == drop:
            continue
        if k == reshape:
            shape = [shape[0] + 1, *shape[1:]]
        state[(k + "_renamed") if k == rename else k] = torch.tensor(1e-3 * (i % 7)).expand(*shape)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def full_meta() -> ADMUNet:
    with torch.device("meta"):
        return ADMUNet()


@pytest.fixture(scope="module")
def full_net() -> ADMUNet:
    torch.manual_seed(0)
    return ADMUNet().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def small() -> ADMUNet:
    torch.manual_seed(0)
    return _randomize(ADMUNet(**SMALL)).eval()


# ----------------------------------------------------------------------------------------- full size
def test_full_state_dict_equals_manifest(full_meta: ADMUNet) -> None:
    got = {k: list(v.shape) for k, v in full_meta.state_dict().items()}
    assert list(got) == list(FULL_SHAPES)  # same keys in the same order
    assert got == FULL_SHAPES
    assert len(got) == 566
    assert sum(p.numel() for p in full_meta.parameters()) == MANIFEST["num_parameters"] == 552_814_086
    assert full_meta.time_embed_dim == 1024 and full_meta.in_channels == 3 and full_meta.cross_attention_dim is None
    assert full_meta.out_channels == 6  # learn_sigma
    assert full_meta.checkpoint_optional_keys() == []
    assert isinstance(full_meta, DecoderFeatureBackbone)


def test_full_block_geometry_matches_manifest(full_meta: ADMUNet) -> None:
    assert full_meta.decoder_block_channels() == [BLOCK_SHAPES[j][1] for j in range(18)]
    assert full_meta.decoder_block_strides() == [256 // BLOCK_SHAPES[j][2] for j in range(18)]
    # paper settings: blocks {4,6,8,12} (QaTa/MosMed) and {6,8,12,16} (MoNuSeg)
    ch = full_meta.decoder_block_channels()
    assert [ch[b] for b in (4, 6, 8, 12)] == [1024, 512, 512, 256]
    assert [ch[b] for b in (6, 8, 12, 16)] == [512, 512, 256, 256]


def test_full_forward_256_hooked_blocks(full_net: ADMUNet) -> None:
    """One random-weight forward of the full model at 256x256, stopping after block 16."""
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    blocks = [4, 6, 8, 12, 16]
    with torch.inference_mode():
        feats = full_net.decoder_features(x, torch.tensor([50]), blocks)
    assert [list(f.shape) for f in feats] == [BLOCK_SHAPES[b] for b in blocks]
    assert all(torch.isfinite(f).all() for f in feats)


def test_full_manifest_checkpoint_loads_strict(full_net: ADMUNet, tmp_path: Path) -> None:
    sd = torch.load(_manifest_checkpoint(tmp_path / "adm.pt"), weights_only=True)
    full_net.load_state_dict(sd, strict=True)
    load_adm_checkpoint(full_net, tmp_path / "adm.pt")
    keys = list(FULL_SHAPES)
    i = keys.index("output_blocks.3.0.in_layers.2.weight")
    assert torch.all(full_net.state_dict()[keys[i]] == torch.tensor(1e-3 * (i % 7)))


@pytest.mark.parametrize(
    "kind,key",
    [("drop", "output_blocks.3.0.in_layers.0.weight"), ("rename", "middle_block.1.qkv.weight"),
     ("reshape", "out.2.weight")],
)
def test_full_mismatched_checkpoint_names_key(full_meta: ADMUNet, tmp_path: Path, kind: str, key: str) -> None:
    path = _manifest_checkpoint(tmp_path / f"{kind}.pt", **{kind: key})
    with pytest.raises(BundleInputError) as err:
        load_adm_checkpoint(full_meta, path)
    msg = str(err.value)
    assert "\n" not in msg and f"'{path}'" in msg and f"'{key}'" in msg
    expect = {"drop": f"missing key '{key}'", "rename": f"checkpoint has unexpected key '{key}_renamed'",
              "reshape": "wrong shape"}[kind]
    assert expect in msg
    if kind != "reshape":  # the missing key is named first
        assert msg.startswith(f"ADM checkpoint '{path}' does not match the configured network: missing key '{key}'")


def test_checkpoint_file_errors(small: ADMUNet, tmp_path: Path) -> None:
    with pytest.raises(BundleInputError, match="does not exist"):
        load_adm_checkpoint(small, tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BundleInputError, match="cannot be read"):
        load_adm_checkpoint(small, bad)
    assert load_adm_checkpoint(small, None) is small


# ----------------------------------------------------------------------------------------- small width
def test_small_all_blocks_shapes_and_geometry(small: ADMUNet) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = small.decoder_features(x, torch.tensor([50, 250]), range(18))
    assert len(feats) == 18
    for j, f in enumerate(feats):
        c, s = small.decoder_block_channels()[j], small.decoder_block_strides()[j]
        assert tuple(f.shape) == (2, c, 64 // s, 64 // s)
        full = BLOCK_SHAPES[j]  # same relative shapes as ADM-256 (width / 8, 256 px -> 64 px)
        assert (c * 8, 256 // s) == (full[1], full[2])
    with torch.no_grad():
        out = small(x, torch.tensor([50, 250]))
    assert out.shape == (2, 6, 64, 64)


def test_forward_stops_after_last_requested_block(small: ADMUNet) -> None:
    ran: list[int] = []
    hooks = [b.register_forward_hook(lambda m, i, o, j=j: ran.append(j)) for j, b in enumerate(small.output_blocks)]
    out_ran: list[bool] = []
    hooks.append(small.out.register_forward_hook(lambda *a: out_ran.append(True)))
    try:
        with torch.no_grad():
            feats = small.decoder_features(torch.randn(1, 3, 64, 64), torch.tensor([150]), [4, 2])
    finally:
        for h in hooks:
            h.remove()
    assert ran == [0, 1, 2, 3, 4] and not out_ran
    assert [f.shape[1] for f in feats] == [small.decoder_block_channels()[2], small.decoder_block_channels()[4]]


def test_emb_offset_is_the_prompt_slot(small: ADMUNet) -> None:
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([50, 50])
    with torch.no_grad():
        base = small.decoder_features(x, t, [4, 8])
        zero = small.decoder_features(x, t, [4, 8], emb_offset=torch.zeros(2, small.time_embed_dim))
        moved = small.decoder_features(x, t, [4, 8], emb_offset=torch.randn(2, small.time_embed_dim))
    assert all(torch.equal(a, b) for a, b in zip(base, zero))
    assert all(not torch.allclose(a, b, atol=1e-4) for a, b in zip(base, moved))
    with pytest.raises(ValueError, match="emb_offset"):
        small.decoder_features(x, t, [4], emb_offset=torch.zeros(2, 7))
    with pytest.raises(BundleInputError, match="out of range"):
        small.decoder_features(x, t, [18])
    with pytest.raises(ValueError, match="x spatial size"):
        small.decoder_features(torch.randn(2, 3, 48, 48), t, [4])


def test_gradient_reaches_emb_offset_through_frozen_backbone(small: ADMUNet) -> None:
    net = ADMUNet(**SMALL)
    net.load_state_dict(small.state_dict())
    net.eval().requires_grad_(False)
    off = torch.zeros(1, net.time_embed_dim, requires_grad=True)
    (f,) = net.decoder_features(torch.randn(1, 3, 64, 64), torch.tensor([50]), [4], emb_offset=off)
    f.square().mean().backward()
    assert off.grad is not None and off.grad.abs().sum() > 0


def test_state_dict_round_trip_through_file(small: ADMUNet, tmp_path: Path) -> None:
    path = tmp_path / "small.pt"
    torch.save(small.state_dict(), path)
    other = load_adm_checkpoint(ADMUNet(**SMALL).eval(), path)
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([250])
    with torch.no_grad():
        assert torch.equal(other(x, t), small(x, t))
    torch.save({"state_dict": {"module." + k: v for k, v in small.state_dict().items()}}, path)
    load_adm_checkpoint(ADMUNet(**SMALL), path)  # nested + DataParallel prefix


def test_cross_attention_keys_are_new_and_optional(small: ADMUNet, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cross = ADMUNet(**SMALL, cross_attention_dim=16).eval()
    extra = cross.checkpoint_optional_keys()
    assert extra and all(".cross_attn." in k for k in extra)
    assert [k for k in cross.state_dict() if k not in extra] == list(small.state_dict())  # ADM keys untouched
    # one cross-attention per attention block: 3 levels x (2 enc + 3 dec) + middle = 16
    assert len({k.split(".cross_attn.")[0] for k in extra}) == 16
    path = tmp_path / "adm_small.pt"
    torch.save(small.state_dict(), path)
    load_adm_checkpoint(cross, path)  # cross-attention keys may be missing, nothing else
    built = ADMUNet(**SMALL, cross_attention_dim=16, checkpoint=str(path))  # same, at construction
    assert torch.equal(built.state_dict()["out.2.weight"], small.state_dict()["out.2.weight"])
    x, t, ctx = torch.randn(1, 3, 64, 64), torch.tensor([50]), torch.randn(1, 5, 16)
    with torch.no_grad():  # zero-initialised output projection: a fresh cross model computes ADM exactly
        a = cross.decoder_features(x, t, [4, 12], context=ctx)
        b = small.decoder_features(x, t, [4, 12])
    assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(a, b))
    _randomize(cross, seed=3)
    with torch.no_grad():
        c1 = cross.decoder_features(x, t, [4], context=ctx)[0]
        c2 = cross.decoder_features(x, t, [4], context=torch.randn(1, 5, 16))[0]
    assert not torch.allclose(c1, c2, atol=1e-4)
    with pytest.raises(ValueError, match="context"):
        cross.decoder_features(x, t, [4])
    sd = small.state_dict()
    sd.pop("input_blocks.1.0.in_layers.2.weight")
    torch.save(sd, path)
    with pytest.raises(BundleInputError, match="missing key 'input_blocks.1.0.in_layers.2.weight'"):
        load_adm_checkpoint(cross, path)


def test_feature_extractor_with_small_adm(small: ADMUNet) -> None:
    net = ADMUNet(**SMALL)
    net.load_state_dict(small.state_dict())
    ext = DiffusionFeatureExtractor(net, timesteps=(50, 150, 250), blocks=[4, 6, 8, 12], trainable=False)
    x0 = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        feats = ext(x0)
        again = ext(x0)
    chans = net.decoder_block_channels()
    assert ext.out_channels == [chans[b] * 3 for b in (4, 6, 8, 12)] == [384, 192, 192, 96]
    assert [tuple(f.shape) for f in feats] == [(2, 384, 4, 4), (2, 192, 8, 8), (2, 192, 16, 16), (2, 96, 32, 32)]
    assert all(torch.equal(a, b) for a, b in zip(feats, again))  # one shared seeded noise
    # timestep-major channels: the first C channels are t=50
    with torch.no_grad():
        x_t, t = ext.add_noise(x0)
        (ref,) = net.decoder_features(x_t[:2], t[:2], [4])
    assert torch.allclose(feats[0][:, : chans[4]], ref, rtol=1e-4, atol=1e-4)


def test_modules_after_last_block_are_the_unused_ones(small: ADMUNet) -> None:
    after = small.modules_after(12)
    assert after[:-1] == list(small.output_blocks[13:]) and after[-1] is small.out
    net = ADMUNet(**SMALL)
    net.load_state_dict(small.state_dict())
    ext = DiffusionFeatureExtractor(net, timesteps=(50, 250), blocks=[6, 8], trainable=True)
    assert not any(p.requires_grad for p in net.output_blocks[9].parameters())  # after block 8: never runs
    assert not any(p.requires_grad for p in net.out.parameters())
    sum(f.square().mean() for f in ext(torch.rand(1, 3, 64, 64))).backward()
    used = [p for p in ext.parameters() if p.requires_grad]
    assert used and all(p.grad is not None for p in used)  # nothing trainable is left unused (DDP-safe)


# ------------------------------------------------------------------------------------------- numerics
def test_timestep_embedding_formula() -> None:
    t = torch.tensor([0, 50, 999])
    emb = timestep_embedding(t, 8)
    freqs = [10000 ** (-i / 4) for i in range(4)]
    ref = torch.tensor([[math.cos(s * f) for f in freqs] + [math.sin(s * f) for f in freqs] for s in (0, 50, 999)])
    assert emb.dtype == torch.float32 and torch.allclose(emb, ref, atol=1e-4)


@pytest.mark.parametrize("legacy", [True, False])
def test_attention_matches_reference(legacy: bool) -> None:
    torch.manual_seed(0)
    blk = _randomize(AttentionBlock(64, num_heads=2, legacy_order=legacy)).eval()
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        got = blk(x)
        qkv = blk.qkv(blk.norm(x.reshape(2, 64, 16)))  # (B, 3C, T)
        if legacy:  # heads first, then q/k/v
            q, k, v = qkv.reshape(2 * 2, 3 * 32, 16).split(32, dim=1)
        else:
            q, k, v = (z.reshape(2 * 2, 32, 16) for z in qkv.chunk(3, dim=1))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(32), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(2, 64, 16)
        ref = (x.reshape(2, 64, 16) + blk.proj_out(a)).reshape(2, 64, 4, 4)
    assert torch.allclose(got, ref, atol=1e-5)


def test_low_precision_paths(small: ADMUNet) -> None:
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([150])
    with torch.no_grad():
        ref = small.decoder_features(x, t, [8])[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = small.decoder_features(x, t, [8])[0]
        half = ADMUNet(**SMALL).eval()
        half.load_state_dict(small.state_dict())
        half.convert_to_fp16()  # ADM use_fp16: torso convs in float16, norms/embeddings float32
        assert half.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
        assert half.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32
        try:
            hf = half.decoder_features(x, t, [8])[0]
        except RuntimeError as e:  # CPU builds without float16 convolutions
            pytest.skip(f"float16 conv not supported on this CPU build: {e}")
    rel = lambda a: ((a.float() - ref).norm() / ref.norm()).item()  # noqa: E731
    assert rel(bf) < 0.05 and hf.dtype == torch.float32 and rel(hf) < 0.01


def test_manifest_alphas_cumprod_match_monai_scheduler() -> None:
    sched = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02)
    for t, value in MANIFEST["alphas_cumprod"].items():
        assert abs(sched.alphas_cumprod[int(t)].item() - value) < 1e-4


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="model_channels"):
        ADMUNet(model_channels=16)
    with pytest.raises(ValueError, match="num_head_channels"):
        with torch.device("meta"):
            ADMUNet(model_channels=32, num_head_channels=24)
    with pytest.raises(ValueError, match="channel_mult"):
        ADMUNet(image_size=100, model_channels=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            net = ADMUNet(image_size=64, model_channels=32, channel_mult="1,2", attention_resolutions="16",
                          num_head_channels=32, resblock_updown=False, learn_sigma=False, num_classes=10)
    keys = net.state_dict()
    assert "input_blocks.3.0.op.weight" in keys and "output_blocks.2.1.conv.weight" in keys  # Downsample/Upsample
    assert "label_emb.weight" in keys and net.out_channels == 3
