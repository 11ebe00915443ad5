"""Diffusion UNet backbones and the feature extractor of CPRFL (paper Eq. 6).

A backbone is a diffusion UNet that can stop inside its decoder and hand back the outputs of chosen
decoder blocks. "Block" follows the DDPM-seg / TextDiff convention (method-notes section 2): decoder
block ``j`` is the ``j``-th residual unit of the decoder, counted from the deepest, together with the
attention that follows it and, for the last unit of a resolution level, the upsampler. This is exactly
what OpenAI's ADM calls ``output_blocks[j]``, so block indices mean the same thing for the MONAI
backbone here and for the ADM backbone in :mod:`bundle.networks.adm`.

Both backbones take the prompt of Eq. 5 as ``emb_offset``: a vector added to the timestep embedding
``M`` before any residual block consumes it (the slot where class-conditional diffusion models add their
label embedding), so ``P = M + TextProj(E)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from ..errors import BundleInputError
from ..utils import as_bool, check_state_dict, read_checkpoint
from .masked_attention import mask_cross_attention, pack_context

__all__ = [
    "DecoderFeatureBackbone",
    "BlockwiseBackbone",
    "MonaiDiffusionBackbone",
    "DiffusionFeatureExtractor",
    "load_backbone_weights",
]


def transformer_cross_attention(module: nn.Module) -> list[nn.Module]:
    """MONAI's cross-attention (``attn2``) and its pre-norm (``norm2``) in every transformer block under ``module``."""
    return [
        m
        for name, m in module.named_modules()
        if ".transformer_blocks." in name and name.rsplit(".", 1)[-1] in ("attn2", "norm2")
    ]


@runtime_checkable
class DecoderFeatureBackbone(Protocol):
    """What :class:`DiffusionFeatureExtractor` needs from a diffusion UNet."""

    in_channels: int
    time_embed_dim: int  # d in Eq. 4-5
    cross_attention_dim: int | None  # context token width, None = no cross-attention

    def decoder_block_channels(self) -> list[int]:
        """Channels of every decoder block output, index = block index."""
        ...

    def decoder_block_strides(self) -> list[int]:
        """Down-sampling factor of every decoder block output relative to the input."""
        ...

    def decoder_features(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        blocks: Sequence[int],
        emb_offset: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Outputs of ``blocks`` (ascending) for noisy images ``x_t`` (B, C, H, W) at ``timesteps`` (B,).

        Stops after the last requested block. ``emb_offset`` (B, time_embed_dim) is added to the
        timestep embedding; ``context`` (B, N, cross_attention_dim) feeds the cross-attention, whose
        keys are only the tokens where ``context_mask`` (B, N) bool is True (None: every token).
        """
        ...

    def modules_after(self, block: int) -> list[nn.Module]:  # optional
        """Modules never run when features stop at ``block`` (later decoder units, output head)."""
        ...

    def cross_attention_modules(self) -> list[nn.Module]:  # optional
        """Modules that read the context tokens (the prompt Q*); they train even in a frozen backbone."""
        ...


class BlockwiseBackbone(nn.Module):
    """Base of the backbones built here block by block: a subclass's ``_run`` yields decoder blocks 0, 1, ... in order.

    It holds the decoder blocks in ``self.up`` and the noise-prediction head in ``self.out``, embeds the
    timesteps with ``self.time_embed`` over a sinusoid of width ``self.sinusoid_dim``, and sets
    ``cross_attention_dim``. This class gives it the contract's ``decoder_features`` (stopping after the last
    requested block) and the stage-1 ``forward`` (noise prediction from the last block).
    """

    up: nn.ModuleList
    out: nn.Module
    time_embed: nn.Module
    sinusoid_dim: int
    cross_attention_dim: int | None

    @property
    def denoiser(self) -> nn.Module:
        """The network stage 1 (``configs/pretrain_diffusion.json``) trains to predict the noise: this module."""
        return self

    def prompt(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        emb_offset: torch.Tensor | None,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 5: P = M(t) + TextProj(E) (B, d), and the context for cross-attention with its key mask packed in."""
        emb = self.time_embed(get_timestep_embedding(timesteps, self.sinusoid_dim).to(x_t.dtype))  # M
        if emb_offset is not None:
            emb = emb + emb_offset.to(emb.dtype)
        if self.cross_attention_dim is not None and context is None:
            raise ValueError("this backbone has cross-attention: pass context tokens (B, N, cross_attention_dim)")
        ctx = pack_context(context, context_mask) if self.cross_attention_dim is not None else None
        return emb, ctx

    def _run(self, x_t: torch.Tensor, emb: torch.Tensor, ctx: torch.Tensor | None, last: int) -> Iterator[torch.Tensor]:
        """Yield the outputs of decoder blocks 0..``last`` in order, given P (B, d) and the packed context."""
        raise NotImplementedError

    def decoder_features(self, x_t: torch.Tensor, timesteps: torch.Tensor, blocks: Sequence[int],
                         emb_offset: torch.Tensor | None = None, context: torch.Tensor | None = None,
                         context_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Decoder features as :class:`DecoderFeatureBackbone` specifies; stops after the last requested block."""
        wanted = sorted(set(int(b) for b in blocks))
        if not wanted or wanted[0] < 0 or wanted[-1] >= len(self.up):
            raise BundleInputError(
                f"decoder blocks {list(blocks)} out of range: this backbone has blocks 0..{len(self.up) - 1}"
            )
        emb, ctx = self.prompt(x_t, timesteps, emb_offset, context, context_mask)
        return [h for j, h in enumerate(self._run(x_t, emb, ctx, wanted[-1])) if j in wanted]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Noise prediction eps(x_t, t) (B, in_channels, H, W), the stage-1 objective."""
        emb, ctx = self.prompt(x, timesteps, None, context, None)
        *_, h = self._run(x, emb, ctx, len(self.up) - 1)
        return self.out(h)


class MonaiDiffusionBackbone(nn.Module):
    """MONAI :class:`~monai.networks.nets.DiffusionModelUNet` (2D) exposed block by block.

    The wrapped network is kept as ``self.unet`` so a checkpoint of a plain ``DiffusionModelUNet``
    (what ``configs/pretrain_diffusion.json`` writes) loads into it unchanged. Constructor arguments
    are passed to ``DiffusionModelUNet``; ``spatial_dims`` is fixed to 2.

    Args:
        in_channels: image channels.
        channels: channels per resolution level.
        attention_levels: which levels carry attention (cross-attention when ``cross_attention_dim``).
        num_res_blocks: residual blocks per encoder level (the decoder has one more per level).
        cross_attention_dim: width of context tokens; ``None`` builds a UNet without cross-attention.
        kwargs: any other ``DiffusionModelUNet`` argument (``norm_num_groups``, ``num_head_channels``...).
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128, 128),
        attention_levels: Sequence[bool] = (False, False, False, False, True),
        num_res_blocks: Sequence[int] | int = 1,
        cross_attention_dim: int | None = None,
        num_head_channels: Sequence[int] | int = 32,
        norm_num_groups: int = 16,
        **kwargs,
    ) -> None:
        super().__init__()
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=in_channels,
            channels=tuple(channels),
            attention_levels=tuple(as_bool(a, "backbone_attention_levels") for a in attention_levels),
            num_res_blocks=num_res_blocks,
            with_conditioning=cross_attention_dim is not None,
            cross_attention_dim=cross_attention_dim,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            **kwargs,
        )
        if cross_attention_dim is not None:
            mask_cross_attention(self.unet)  # padding tokens of the prompt are no keys
        self.in_channels = in_channels
        self.cross_attention_dim = cross_attention_dim
        self.time_embed_dim = self.unet.time_embed[-1].out_features
        # decoder blocks: (up-block index, resnet index), one per residual unit, deepest first
        self._units: list[tuple[int, int]] = [
            (i, j) for i, up in enumerate(self.unet.up_blocks) for j in range(len(up.resnets))
        ]
        rev = list(reversed(channels))
        self._channels = [rev[i] for i, _ in self._units]
        levels = len(channels)
        self._strides = [
            2 ** (levels - 1 - i) // (2 if (j == len(self.unet.up_blocks[i].resnets) - 1 and i < levels - 1) else 1)
            for i, j in self._units
        ]

    @property
    def denoiser(self) -> nn.Module:
        """The network stage 1 (``configs/pretrain_diffusion.json``) trains to predict the noise."""
        return self.unet

    def decoder_block_channels(self) -> list[int]:
        return list(self._channels)

    def decoder_block_strides(self) -> list[int]:
        return list(self._strides)

    def cross_attention_modules(self) -> list[nn.Module]:
        return transformer_cross_attention(self.unet)

    def modules_after(self, block: int) -> list[nn.Module]:
        unet = self.unet
        after: list[nn.Module] = [unet.out]
        for unit, (i, j) in enumerate(self._units):
            if unit <= block:
                continue
            up = unet.up_blocks[i]
            after.append(up.resnets[j])
            if getattr(up, "attentions", None) is not None:
                after.append(up.attentions[j])
            if j == len(up.resnets) - 1 and up.upsampler is not None:
                after.append(up.upsampler)
        return after

    def decoder_features(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        blocks: Sequence[int],
        emb_offset: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        unet = self.unet
        wanted = sorted(set(blocks))
        if not wanted or wanted[0] < 0 or wanted[-1] >= len(self._units):
            raise BundleInputError(
                f"decoder blocks {list(blocks)} out of range: this backbone has blocks 0..{len(self._units) - 1}"
            )
        # Eq. 5: P = M + TextProj(E), M = time_embed(sinusoid(t))
        emb = unet.time_embed(get_timestep_embedding(timesteps, unet.block_out_channels[0]).to(x_t.dtype))
        if emb_offset is not None:
            emb = emb + emb_offset.to(emb.dtype)
        if unet.with_conditioning and context is None:
            raise ValueError("this backbone has cross-attention: pass context tokens (B, N, cross_attention_dim)")
        ctx = pack_context(context, context_mask) if unet.with_conditioning else None  # (B, N, D [+ 1])

        h = unet.conv_in(x_t)
        skips = [h]
        for down in unet.down_blocks:
            h, res = down(hidden_states=h, temb=emb, context=ctx)
            skips.extend(res)
        h = unet.middle_block(hidden_states=h, temb=emb, context=ctx)

        out: list[torch.Tensor] = []
        for block, (i, j) in enumerate(self._units):
            up = unet.up_blocks[i]
            h = up.resnets[j](torch.cat([h, skips.pop()], dim=1), emb)
            attentions = getattr(up, "attentions", None)
            if attentions is not None:
                h = attentions[j](h, context=ctx) if unet.with_conditioning else attentions[j](h).contiguous()
            if j == len(up.resnets) - 1 and up.upsampler is not None:
                h = up.upsampler(h, emb)
            if block in wanted:
                out.append(h)
                if block == wanted[-1]:
                    break
        return out


def load_backbone_weights(
    module: nn.Module,
    path: str | os.PathLike | None,
    option: str = "backbone_ckpt",
    what: str = "backbone checkpoint",
    hint: str = "Check that the backbone options (channels, attention levels, cross_attention_dim / cprfl) match "
    "the run that wrote this checkpoint.",
) -> nn.Module:
    """Load a backbone checkpoint from a local file; any mismatch is one error naming the first bad key.

    For :class:`MonaiDiffusionBackbone`, a plain ``DiffusionModelUNet`` state dict (what
    ``configs/pretrain_diffusion.json`` writes) is loaded into ``module.unet``. Keys listed by the
    module's ``checkpoint_optional_keys()`` (layers added on top of a published layout, e.g. ADM's
    cross-attention) may be missing and keep their initial values.
    """
    if path is None or str(path) == "":
        return module
    state = read_checkpoint(path, option, what)
    target = module
    if isinstance(module, MonaiDiffusionBackbone) and not any(k.startswith("unet.") for k in state):
        target = module.unet
    optional = list(getattr(target, "checkpoint_optional_keys", lambda: [])())
    check_state_dict(target.state_dict(), state, os.fspath(path), hint, optional, what)
    target.load_state_dict(state, strict=not optional)
    return module


class DiffusionFeatureExtractor(nn.Module):
    """Eq. 6: F_img = f_DUN(N_img, P), multi-timestep decoder features of a diffusion UNet.

    The clean image x0 is noised to x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with MONAI's
    :class:`DDPMScheduler` and ONE seeded noise tensor eps shared by every image, timestep, call and
    split (DDPM-seg / TextDiff). All timesteps run as one batch; the outputs of each hooked decoder block
    are concatenated over timesteps on the channel axis, timestep-major.

    Args:
        backbone: a :class:`DecoderFeatureBackbone`.
        timesteps: diffusion steps t (paper: 50, 150, 250).
        blocks: decoder block indices to hook.
        num_train_timesteps, beta_start, beta_end, schedule: the noise schedule (linear, 1000 steps,
            1e-4..0.02 gives abar = 0.970 / 0.786 / 0.521 at t = 50 / 150 / 250).
        noise_seed: seed of the shared noise eps.
        training_noise: ``"shared"`` (DDPM-seg / TextDiff: the seeded eps in training too) or ``"fresh"``
            (in training mode, a new eps per image and step, shared by that image's timesteps; evaluation
            and inference keep the seeded eps). A trainable backbone can read the fixed eps as an
            absolute-position code and memorise its training images; fresh noise removes that shortcut.
        trainable: False freezes the backbone (no gradients to its weights, eval mode) except its
            ``cross_attention_modules()``: those read the prompt Q* and belong to CPRFL, which must learn to
            align it with the frozen features (for ADM they are new, zero-initialised layers).
        checkpoint: optional local backbone checkpoint loaded at construction.
        batch_timesteps: run all timesteps as one batch (False: one after another, as the research code).
        stop_early: stop after the last hooked block (False: run the whole decoder, as the research code).
    """

    def __init__(
        self,
        backbone: nn.Module,
        timesteps: Sequence[int] = (50, 150, 250),
        blocks: Sequence[int] = (2, 4, 6, 8),
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        schedule: str = "linear_beta",
        noise_seed: int = 0,
        training_noise: str = "shared",
        trainable: bool = True,
        checkpoint: str | None = None,
        batch_timesteps: bool = True,
        stop_early: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, DecoderFeatureBackbone):
            raise TypeError(f"backbone {type(backbone).__name__} does not implement DecoderFeatureBackbone")
        timesteps = [int(t) for t in timesteps]
        if not timesteps or min(timesteps) < 0 or max(timesteps) >= num_train_timesteps:
            raise BundleInputError(f"timesteps {timesteps} must lie in [0, {num_train_timesteps - 1}]")
        n_blocks = len(backbone.decoder_block_channels())
        self.blocks = sorted({int(b) for b in blocks})
        if not self.blocks or self.blocks[0] < 0 or self.blocks[-1] >= n_blocks:
            raise BundleInputError(f"blocks {list(blocks)} out of range: the backbone has blocks 0..{n_blocks - 1}")
        self.backbone = load_backbone_weights(backbone, checkpoint)
        self.timesteps = timesteps
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, schedule=schedule, beta_start=beta_start, beta_end=beta_end
        )
        self.noise_seed = int(noise_seed)
        if training_noise not in ("shared", "fresh"):
            raise BundleInputError(f"option training_noise must be 'shared' or 'fresh', got {training_noise!r}")
        self.training_noise = training_noise
        self.batch_timesteps = bool(batch_timesteps)
        self.stop_early = bool(stop_early)
        self._n_blocks = n_blocks
        self._noise: dict[tuple, torch.Tensor] = {}
        self.trainable = bool(trainable)
        if not self.trainable:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
            for module in getattr(self.backbone, "cross_attention_modules", lambda: [])():
                module.requires_grad_(True)
        # what runs after the last hooked block never runs: no gradients, not counted as trainable
        for module in getattr(self.backbone, "modules_after", lambda _: [])(self.blocks[-1]):
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> DiffusionFeatureExtractor:
        super().train(mode)
        if not self.trainable:
            self.backbone.eval()
        return self

    @property
    def out_channels(self) -> list[int]:
        """Channels of each returned feature map: single-timestep channels x number of timesteps."""
        chans = self.backbone.decoder_block_channels()
        return [chans[b] * len(self.timesteps) for b in self.blocks]

    @property
    def out_strides(self) -> list[int]:
        strides = self.backbone.decoder_block_strides()
        return [strides[b] for b in self.blocks]

    def shared_noise(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The one seeded eps of shape (C, H, W), identical on every call."""
        shape = tuple(int(s) for s in shape)  # plain ints: under torch.jit.trace sizes are tensors
        key = (shape, str(device), dtype)
        if key not in self._noise:
            gen = torch.Generator().manual_seed(self.noise_seed)
            noise = torch.randn(shape, generator=gen)
            if torch.jit.is_tracing():  # a trace records randn without its generator: keep eps a constant
                noise = torch.from_numpy(noise.numpy().copy())
            self._noise[key] = noise.to(device=device, dtype=dtype)
        return self._noise[key]

    def add_noise(self, x0: torch.Tensor, timesteps: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 (B, C, H, W) -> x_t (T*B, C, H, W), timestep-major, and the matching timesteps (T*B,)."""
        steps = list(self.timesteps if timesteps is None else timesteps)
        b = x0.shape[0]
        t = torch.tensor(steps, device=x0.device, dtype=torch.long).repeat_interleave(b)
        if self.training and self.training_noise == "fresh":
            eps = torch.randn_like(x0).repeat(len(steps), 1, 1, 1)  # one eps per image, for all its timesteps
        else:
            eps = self.shared_noise(x0.shape[1:], x0.device, x0.dtype).expand(len(t), *x0.shape[1:])
        x_t = self.scheduler.add_noise(x0.repeat(len(steps), 1, 1, 1), eps, t)
        return x_t, t

    def forward(
        self,
        x0: torch.Tensor,
        emb_offset: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """x0 (B, C, H, W) in [-1, 1] -> one (B, C_b * T, H_b, W_b) map per hooked block.

        ``context_mask`` (B, N) bool marks the real tokens of ``context`` (padding is never a key).
        """
        needs_grad = torch.is_grad_enabled() and (
            any(p.requires_grad for p in self.backbone.parameters())
            or (emb_offset is not None and emb_offset.requires_grad)
            or (context is not None and context.requires_grad)
        )
        blocks = self.blocks if self.stop_early else [*self.blocks, self._n_blocks - 1]
        chunks = []  # per timestep group: list of (n_t*B, C, h, w) maps
        with torch.set_grad_enabled(needs_grad):
            for group in ([self.timesteps] if self.batch_timesteps else [[t] for t in self.timesteps]):
                x_t, t = self.add_noise(x0, group)
                offset = emb_offset.repeat(len(group), 1) if emb_offset is not None else None  # (T*B, d)
                ctx = context.repeat(len(group), 1, 1) if context is not None else None  # (T*B, N, Dc)
                ctx_mask = context_mask.repeat(len(group), 1) if context_mask is not None else None  # (T*B, N)
                chunks.append(
                    self.backbone.decoder_features(
                        x_t, t, blocks, emb_offset=offset, context=ctx, context_mask=ctx_mask
                    )[: len(self.blocks)]
                )
        b = x0.shape[0]
        out = []
        for i in range(len(self.blocks)):
            f = torch.cat([c[i] for c in chunks], dim=0) if len(chunks) > 1 else chunks[0][i]
            t_all = len(self.timesteps)
            # (T*B, C, h, w) -> (B, T*C, h, w), timestep-major channels
            out.append(f.reshape(t_all, b, *f.shape[1:]).transpose(1, 0).reshape(b, t_all * f.shape[1], *f.shape[2:]))
        return out
