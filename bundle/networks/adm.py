"""ADM-compatible diffusion UNet backbone (Dhariwal & Nichol 2021, "guided diffusion").

:class:`ADMUNet` is written for this project; its parameter names and shapes follow OpenAI's
guided-diffusion ``UNetModel`` so that the public ImageNet checkpoints, in particular
``256x256_diffusion_uncond.pt`` (552,814,086 parameters, the backbone TextDiff uses), load into it with
``load_state_dict(strict=True)``. In CPRFL it plays two roles:

* Eq. 6 feature extractor ``f_DUN``: :meth:`ADMUNet.decoder_features` returns the outputs of chosen
  ``output_blocks`` (decoder blocks, deepest first) and stops after the last one requested.
* Eq. 5 prompt slot: ``emb_offset`` (B, time_embed_dim) is added to the timestep embedding ``M`` exactly
  where class-conditional ADM adds its label embedding, so ``P = M + TextProj(E)``.

Optionally (``cross_attention_dim``) every attention block also attends to context tokens; those extra
layers live under ``*.cross_attn.*`` keys that no ADM checkpoint has, are zero-initialised (a fresh model
computes exactly what the checkpoint computes) and are the only keys :func:`load_adm_checkpoint` lets be
missing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BundleInputError
from .masked_attention import key_padding_bias, pack_context, unpack_context

__all__ = ["ADMUNet", "load_adm_checkpoint", "adm_channel_mult", "timestep_embedding"]


def adm_channel_mult(image_size: int) -> tuple[float, ...]:
    """The channel multipliers guided-diffusion picks when ``channel_mult`` is left empty."""
    table = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
    }
    if image_size not in table:
        raise ValueError(f"image_size={image_size}: pass channel_mult explicitly (defaults exist for {sorted(table)})")
    return table[image_size]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """ADM's sinusoidal embedding of (possibly fractional) timesteps (B,) -> (B, dim), float32.

    The first half holds cosines, the second half sines, of ``t * max_period ** (-i / (dim // 2))``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (safe under fp16/bf16 autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _Resample(nn.Module):
    """Nearest x2 up-sampling or 2x2 average pooling, without parameters (inside residual blocks)."""

    def __init__(self, up: bool) -> None:
        super().__init__()
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.up else F.avg_pool2d(x, 2)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key ``op``) or average pooling; used when ``resblock_updown=False``."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then optional 3x3 conv (key ``conv``); used when ``resblock_updown=False``."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding (timestep + prompt), optionally resampling.

    Key layout: ``in_layers`` (norm, SiLU, conv3x3), ``emb_layers`` (SiLU, linear), ``out_layers``
    (norm, SiLU, dropout, zero-initialised conv3x3), ``skip_connection`` (1x1 conv when channels change).
    With ``use_scale_shift_norm`` the embedding gives a FiLM scale and shift applied after the out norm.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if self.updown:
            self.h_upd, self.x_upd = _Resample(up), _Resample(up)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:  # resample between the norm/SiLU and the conv, on both paths
            h = self.in_layers[2](self.h_upd(self.in_layers[1](self.in_layers[0](x))))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # (B, 2C or C, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


def _heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    if num_head_channels == -1:
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide {channels} channels")
        return num_heads
    if channels % num_head_channels:
        raise ValueError(f"num_head_channels={num_head_channels} does not divide {channels} channels")
    return channels // num_head_channels


class CrossAttention(nn.Module):
    """Pixels attend to context tokens (B, N, context_dim); zero-initialised output projection.

    Not part of ADM: added only when ``cross_attention_dim`` is set, under the key ``cross_attn``.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(context_dim, channels, bias=False)
        self.to_v = nn.Linear(context_dim, channels, bias=False)
        self.proj_out = _zeroed(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), context (B, N, context_dim) or packed with its key mask (masked_attention.py)."""
        b, c, hgt, wid = x.shape
        heads, wdt = self.num_heads, self.to_q.weight.dtype
        tokens = self.norm(x).flatten(2).transpose(1, 2).to(wdt)  # (B, HW, C)
        ctx, mask = unpack_context(context, self.to_k.in_features)
        ctx = ctx.to(wdt)
        q = self.to_q(tokens).view(b, -1, heads, c // heads).transpose(1, 2)  # (B, heads, HW, c/heads)
        k = self.to_k(ctx).view(b, -1, heads, c // heads).transpose(1, 2)  # (B, heads, N, c/heads)
        v = self.to_v(ctx).view(b, -1, heads, c // heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_bias(mask))
        a = a.transpose(1, 2).reshape(b, hgt * wid, c)
        out = self.proj_out(a).transpose(1, 2).reshape(b, c, hgt, wid)
        return x + out.to(x.dtype)


class AttentionBlock(nn.Module):
    """ADM spatial self-attention (keys ``norm``, ``qkv`` and ``proj_out``, 1x1 Conv1d), then optional cross-attention.

    ``legacy_order=True`` (ADM's default ``use_new_attention_order=False``) splits the qkv channels into
    heads first and then into q, k, v; otherwise q, k, v first. The scores are softmax(q.k / sqrt(d)).
    """

    def __init__(
        self, channels: int, num_heads: int, legacy_order: bool = True, context_dim: int | None = None
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.legacy_order = legacy_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))
        self.cross_attn = CrossAttention(channels, context_dim, num_heads) if context_dim is not None else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        n, heads = hgt * wid, self.num_heads
        flat = x.reshape(b, c, n)
        qkv = self.qkv(self.norm(flat))  # (B, 3C, HW)
        d = c // heads
        if self.legacy_order:
            q, k, v = qkv.reshape(b, heads, 3 * d, n).split(d, dim=2)  # each (B, heads, d, HW)
        else:
            q, k, v = (t.reshape(b, heads, d, n) for t in qkv.chunk(3, dim=1))
        a = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))  # (B, heads, HW, d)
        h = self.proj_out(a.transpose(2, 3).reshape(b, c, n))
        out = (flat + h).reshape(b, c, hgt, wid)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this ADMUNet has cross-attention: pass context (B, N, cross_attention_dim)")
            out = self.cross_attn(out, context)
        return out


class EmbedSequential(nn.Sequential):
    """A sequential stage that hands the embedding to residual blocks and the context to attention blocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ADMUNet(nn.Module):
    """OpenAI guided-diffusion (ADM) UNet, 2D, with block-wise decoder access for CPRFL.

    The defaults build the ImageNet 256x256 unconditional model (``256x256_diffusion_uncond.pt``).
    Arguments use guided-diffusion's names and meanings:

    Args:
        image_size: training resolution; only used to derive ``channel_mult`` and attention strides.
            Any input whose sides are divisible by ``2 ** (len(channel_mult) - 1)`` runs.
        in_channels: image channels.
        model_channels: base width (``num_channels``), 256 for ADM-256.
        out_channels: output channels of :meth:`forward`; default ``in_channels * (2 if learn_sigma else 1)``.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        attention_resolutions: feature-map sizes (pixels, relative to ``image_size``) with self-attention,
            e.g. ``(32, 16, 8)`` or the string ``"32,16,8"``.
        dropout: dropout inside residual blocks.
        channel_mult: width multiplier per level; ``None`` or ``""`` takes guided-diffusion's default for
            ``image_size``; a string ``"1,1,2,2,4,4"`` is accepted.
        num_heads, num_head_channels, num_heads_upsample: attention heads (``num_head_channels`` wins
            unless it is -1).
        use_scale_shift_norm: FiLM conditioning in residual blocks.
        resblock_updown: resample with residual blocks (else conv/avg-pool ``Downsample``/``Upsample``).
        conv_resample: with ``resblock_updown=False``, use convolutions to resample.
        use_new_attention_order: split q/k/v before heads (False = ADM's legacy order).
        learn_sigma: 2x output channels (eps and variance interpolation).
        num_classes: add ``label_emb`` for class-conditional checkpoints (``y`` in :meth:`forward`).
        use_fp16: keep the torso's convolutions in float16 as ADM does when sampling on GPU (norms and
            embeddings stay float32). On CPU or with ``torch.autocast`` leave it False.
        cross_attention_dim: width of context tokens; adds zero-initialised cross-attention after every
            attention block (keys ``*.cross_attn.*``). ``None`` = exact ADM.
        checkpoint: optional local guided-diffusion checkpoint loaded with :func:`load_adm_checkpoint`
            (the generic ``backbone_ckpt`` option does the same: both let the cross-attention keys be absent).
    """

    def __init__(
        self,
        image_size: int = 256,
        in_channels: int = 3,
        model_channels: int = 256,
        out_channels: int | None = None,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] | str = (32, 16, 8),
        dropout: float = 0.1,
        channel_mult: Sequence[float] | str | None = None,
        num_heads: int = 4,
        num_head_channels: int = 64,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        conv_resample: bool = True,
        use_new_attention_order: bool = False,
        learn_sigma: bool = True,
        num_classes: int | None = None,
        use_fp16: bool = False,
        cross_attention_dim: int | None = None,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if isinstance(channel_mult, str):
            channel_mult = tuple(float(m) for m in channel_mult.split(",") if m.strip())
        mults = tuple(channel_mult) if channel_mult else adm_channel_mult(image_size)
        if isinstance(attention_resolutions, str):
            attention_resolutions = [int(r) for r in attention_resolutions.split(",") if r.strip()]
        for name, value in (("in_channels", in_channels), ("model_channels", model_channels),
                            ("num_res_blocks", num_res_blocks), ("image_size", image_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if cross_attention_dim is not None and int(cross_attention_dim) < 1:
            raise ValueError(f"cross_attention_dim must be None or >= 1, got {cross_attention_dim}")
        widths = [int(m * model_channels) for m in mults]
        bad = [w for w in widths if w < 32 or w % 32]
        if bad:
            raise ValueError(
                f"model_channels={model_channels} x channel_mult={mults} gives widths {widths}: "
                "every width must be a multiple of 32 (GroupNorm with 32 groups)"
            )
        attn_ds = {image_size // int(r) for r in attention_resolutions}
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.model_channels = int(model_channels)
        self.out_channels = int(out_channels or in_channels * (2 if learn_sigma else 1))
        self.num_res_blocks = int(num_res_blocks)
        self.channel_mult = mults
        self.attention_ds = sorted(attn_ds)
        self.num_classes = num_classes
        self.cross_attention_dim = None if cross_attention_dim is None else int(cross_attention_dim)
        self.time_embed_dim = 4 * self.model_channels  # d in Eq. 4-5 (1024 for ADM-256)
        self.dtype = torch.float16 if use_fp16 else torch.float32
        ctx_dim = self.cross_attention_dim
        emb_dim = self.time_embed_dim
        legacy = not use_new_attention_order

        def res(ch_in: int, ch_out: int, **kw) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, _heads(ch, heads, num_head_channels), legacy, ctx_dim)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        # encoder: input_blocks[0] = conv_in, then num_res_blocks units per level and a down-sampler
        ch = widths[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if ds in attn_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(widths) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        # decoder: num_res_blocks + 1 units per level, deepest first; the last unit of a level up-samples
        self.output_blocks = nn.ModuleList()
        self._block_channels: list[int] = []
        self._block_strides: list[int] = []
        for level in reversed(range(len(widths))):
            width = widths[level]
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), width)]
                ch = width
                if ds in attn_ds:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
                self._block_channels.append(ch)
                self._block_strides.append(ds)

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zeroed(nn.Conv2d(widths[0], self.out_channels, 3, padding=1)))
        self._min_divisor = 2 ** (len(widths) - 1)
        if use_fp16:
            self.convert_to_fp16()
        if checkpoint:
            load_adm_checkpoint(self, checkpoint)

    # ----------------------------------------------------------------------------------------- precision
    def _torso(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block, self.output_blocks]

    def convert_to_fp16(self) -> None:
        """Cast the torso's convolutions to float16 (ADM ``use_fp16``); norms and linears stay float32."""
        for part in self._torso():
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.half()
        self.dtype = torch.float16

    def convert_to_fp32(self) -> None:
        """Undo :meth:`convert_to_fp16`."""
        for part in self._torso():
            part.float()
        self.dtype = torch.float32

    # ------------------------------------------------------------------------------------------ protocol
    def decoder_block_channels(self) -> list[int]:
        """Channels of ``output_blocks[j]`` outputs, j = 0..len-1 (18 blocks for ADM-256)."""
        return list(self._block_channels)

    def decoder_block_strides(self) -> list[int]:
        """Input size / ``output_blocks[j]`` output size."""
        return list(self._block_strides)

    def modules_after(self, block: int) -> list[nn.Module]:
        """Modules never run when features stop at ``block``: later ``output_blocks`` and the ``out`` head."""
        return [*self.output_blocks[int(block) + 1:], self.out]

    def checkpoint_optional_keys(self) -> list[str]:
        """State-dict keys that no ADM checkpoint holds (the added cross-attention)."""
        return [k for k in self.state_dict() if ".cross_attn." in k]

    def cross_attention_modules(self) -> list[nn.Module]:
        """The added cross-attention layers: they read the prompt and train even when the ADM is frozen."""
        return [m.cross_attn for m in self.modules() if isinstance(m, AttentionBlock) and m.cross_attn is not None]

    def _embed(self, x: torch.Tensor, timesteps: torch.Tensor, emb_offset: torch.Tensor | None,
               y: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        if timesteps.shape != (b,):
            raise ValueError(f"timesteps must have shape ({b},) to match x, got {tuple(timesteps.shape)}")
        # M = time_embed(sinusoid(t)) (B, d)
        sinusoid = timestep_embedding(timesteps.to(x.device), self.model_channels)  # (B, model_channels)
        emb = self.time_embed(sinusoid.to(self.time_embed[0].weight.dtype))
        if y is not None:
            if self.num_classes is None:
                raise ValueError("y (class labels) given but this ADMUNet was built with num_classes=None")
            if y.shape != (b,):
                raise ValueError(f"y must have shape ({b},), got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)
        if emb_offset is not None:  # Eq. 5: P = M + TextProj(E), in the label-embedding slot
            if emb_offset.shape != (b, self.time_embed_dim):
                raise ValueError(
                    f"emb_offset must have shape ({b}, {self.time_embed_dim}), got {tuple(emb_offset.shape)}"
                )
            emb = emb + emb_offset.to(emb.dtype)
        return emb

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor | None) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self._min_divisor or x.shape[3] % self._min_divisor:
            raise ValueError(f"x spatial size {tuple(x.shape[2:])} must be divisible by {self._min_divisor}")
        if self.cross_attention_dim is not None:
            if context is None or context.ndim != 3 or context.shape[0] != x.shape[0] \
                    or context.shape[2] not in (self.cross_attention_dim, self.cross_attention_dim + 1):
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"context must be ({x.shape[0]}, N, {self.cross_attention_dim}) for this cross-attention "
                    f"ADMUNet, got {got}"
                )

    def _encode(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = x.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        return self.middle_block(h, emb, context), skips  # (B, C_last, H/2^L, W/2^L)

    def decoder_features(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        blocks: Sequence[int],
        emb_offset: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Eq. 6: outputs of ``output_blocks[j]`` for j in ``blocks`` (ascending) for noisy x_t (B, C, H, W).

        Stops after the last requested block (the ``out`` head never runs). ``emb_offset`` (B, d) is the
        Eq. 5 prompt added to the timestep embedding; ``context`` (B, N, cross_attention_dim) feeds the
        optional cross-attention, whose keys are the tokens where ``context_mask`` (B, N) is True. With ``use_fp16`` features are cast back to ``x_t``'s dtype; under
        ``torch.autocast`` they keep the autocast dtype.
        """
        n = len(self.output_blocks)
        wanted = sorted({int(j) for j in blocks})
        if not wanted or wanted[0] < 0 or wanted[-1] >= n:
            raise BundleInputError(
                f"decoder blocks {list(blocks)} out of range: this ADM backbone has blocks 0..{n - 1}"
            )
        if context is not None:
            context = pack_context(context, context_mask)  # (B, N, D [+ 1]): the key mask rides along
        self._check_inputs(x_t, context)
        emb = self._embed(x_t, timesteps, emb_offset)
        h, skips = self._encode(x_t, emb, context)
        out: list[torch.Tensor] = []
        for j, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)  # (B, C_j, H/s_j, W/s_j)
            if j in wanted:
                out.append(h if self.dtype == torch.float32 else h.to(x_t.dtype))
                if j == wanted[-1]:
                    break
        return out

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        y: torch.Tensor | None = None,
        emb_offset: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full ADM prediction (B, out_channels, H, W): eps and, with ``learn_sigma``, the variance values."""
        self._check_inputs(x, context)
        emb = self._embed(x, timesteps, emb_offset, y)
        h, skips = self._encode(x, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h.to(x.dtype))


def load_adm_checkpoint(module: nn.Module, path: str | os.PathLike | None) -> nn.Module:
    """Load a guided-diffusion checkpoint (e.g. ``256x256_diffusion_uncond.pt``) from a local file.

    Keys and shapes must match ``module`` exactly, except ``module.checkpoint_optional_keys()`` (the
    added cross-attention), which may be missing and keep their zero-output initial values. Every
    problem raises :class:`~bundle.errors.BundleInputError` with one line naming the first bad key.
    """
    from .backbone import load_backbone_weights

    return load_backbone_weights(
        module,
        path,
        option="backbone_ckpt",
        what="ADM checkpoint",
        hint="Download 256x256_diffusion_uncond.pt from openai/guided-diffusion (docs/adm.md) and check the ADM "
        "settings (model_channels, channel_mult, attention_resolutions, num_head_channels, learn_sigma, "
        "resblock_updown, num_classes) match it.",
    )
