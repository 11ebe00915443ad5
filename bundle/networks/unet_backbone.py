"""A diffusion UNet built of MONAI ``BasicUNet``'s blocks, with the prompt P in every block (issue 13).

LCPDN trained from scratch on MONAI's ``DiffusionModelUNet`` stays below a plain ``BasicUNet`` on MoNuSeg
(docs/benchmarks.md sections 2 and 12). This backbone is that BasicUNet (two 3x3 convolutions per level,
affine instance norm, LeakyReLU, max-pool down, transposed-convolution up, features 32-32-64-128-256-32)
made a diffusion UNet in the paper's sense (section 3.3: "conditional prompts for each UNet block"):

    x_t ─► TwoConv(P) ─► Down(P) x4 ─► SpatialTransformer(Q*)                     stride 1 ... 16
        ─► UpCat(P) [+ SpatialTransformer(Q*)] x4                                   decoder blocks 0..3

Every two-convolution block takes the embedding P = M(t) + TextProj(E) of Eq. 5 as a scale and shift of its
first normalised convolution (ADM's scale-shift norm: ``IN(conv x) * (1 + s) + b`` before the activation;
an added per-channel constant alone would be removed again by the instance norm that follows). The
transformers' cross-attention reads Q* (padding tokens are no keys). Decoder block ``j`` is ``upcat_{4-j}``,
at strides 8, 4, 2, 1. The scale-shift layers and the transformers' output projections start at zero, so
an untrained backbone computes exactly a BasicUNet's decoder features. :meth:`forward` predicts the noise,
so stage 1 (``configs/pretrain_diffusion.json``) can denoising-pretrain it on unlabelled images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from monai.networks.nets.basic_unet import TwoConv, UpCat
from monai.networks.nets.diffusion_model_unet import SpatialTransformer
from torch import nn

from ..errors import BundleInputError
from ..utils import as_bool
from .backbone import BlockwiseBackbone, transformer_cross_attention
from .masked_attention import mask_cross_attention

__all__ = ["PromptedTwoConv", "PromptedUpCat", "BasicUNetBackbone"]

ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})  # BasicUNet's defaults
NORM = ("instance", {"affine": True})


class PromptedTwoConv(TwoConv):
    """MONAI's ``TwoConv`` whose first convolution is scaled and shifted by the embedding P (Eq. 5).

    ``conv_0``: conv -> instance norm -> ``* (1 + s) + b`` with ``(s, b) = Linear(SiLU(P))`` -> LeakyReLU;
    ``conv_1`` as in MONAI. The state-dict keys of ``TwoConv`` are kept (plus ``emb_proj``).

    Args:
        in_chns: input channels.
        out_chns: output channels.
        emb_dim: width of P (the timestep embedding).
    """

    def __init__(self, in_chns: int, out_chns: int, emb_dim: int) -> None:
        super().__init__(2, in_chns, out_chns, act=ACT, norm=NORM, bias=True)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_chns))
        nn.init.zeros_(self.emb_proj[1].weight)  # starts as a plain TwoConv
        nn.init.zeros_(self.emb_proj[1].bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x (B, in_chns, H, W), emb (B, emb_dim) -> (B, out_chns, H, W)."""
        first = self.conv_0
        h = first.adn.N(first.conv(x))
        scale, shift = self.emb_proj(emb)[:, :, None, None].to(h.dtype).chunk(2, dim=1)  # (B, C, 1, 1) each
        h = first.adn.A(h * (1 + scale) + shift)
        return self.conv_1(h)


class PromptedUpCat(UpCat):
    """MONAI's ``UpCat`` (transposed-convolution up, concatenation with the skip) with a :class:`PromptedTwoConv`.

    Args:
        in_chns: channels to upsample.
        cat_chns: channels of the skip connection.
        out_chns: output channels.
        emb_dim: width of P.
        halves: halve the channels while upsampling (BasicUNet: all but the last decoder level).
    """

    def __init__(self, in_chns: int, cat_chns: int, out_chns: int, emb_dim: int, halves: bool = True) -> None:
        super().__init__(2, in_chns, cat_chns, out_chns, act=ACT, norm=NORM, bias=True, halves=halves)
        up_chns = in_chns // 2 if halves else in_chns
        self.convs = PromptedTwoConv(cat_chns + up_chns, out_chns, emb_dim)

    def forward(self, x: torch.Tensor, x_e: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x (B, in_chns, h, w) upsampled to the skip x_e (B, cat_chns, 2h, 2w) -> (B, out_chns, 2h, 2w)."""
        return self.convs(torch.cat([x_e, self.upsample(x)], dim=1), emb)


class BasicUNetBackbone(BlockwiseBackbone):
    """Diffusion UNet of ``BasicUNet`` blocks that take P, with cross-attention to Q* (decoder-feature contract).

    Args:
        in_channels: image channels.
        features: BasicUNet's six widths: levels at strides 1, 2, 4, 8, 16, then the last decoder level.
        attention: after the stride-16 bottleneck and after decoder blocks 0..3, whether a SpatialTransformer
            (self-attention, and cross-attention to the prompt tokens when ``cross_attention_dim`` is set) runs
            there: five booleans.
        cross_attention_dim: width of the context tokens; None builds no cross-attention (self-attention only).
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups of the transformers' pre-norm.
    """

    def __init__(
        self,
        in_channels: int = 3,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        attention: Sequence[bool] = (True, False, False, False, False),
        cross_attention_dim: int | None = None,
        num_head_channels: int = 32,
        norm_num_groups: int = 16,
    ) -> None:
        super().__init__()
        f = [int(c) for c in features]
        attention = [as_bool(a, "backbone#attention") for a in attention]
        if len(f) != 6 or len(attention) != 5:
            raise BundleInputError(
                f"backbone features needs 6 widths (BasicUNet's) and attention 5 booleans (bottleneck, decoder blocks "
                f"0-3), got {len(f)} and {len(attention)}"
            )
        self.in_channels = int(in_channels)
        self.cross_attention_dim = cross_attention_dim
        self.time_embed_dim = d = 4 * f[0]
        self.sinusoid_dim = f[0]
        self.time_embed = nn.Sequential(nn.Linear(f[0], d), nn.SiLU(), nn.Linear(d, d))  # M(t)
        self.conv_0 = PromptedTwoConv(in_channels, f[0], d)
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(PromptedTwoConv(f[i], f[i + 1], d) for i in range(4))  # strides 2, 4, 8, 16
        # decoder block j: upcat from stride 2^(4-j) to 2^(3-j); the last keeps its channels (BasicUNet's upcat_1)
        self.up = nn.ModuleList([
            PromptedUpCat(f[4], f[3], f[3], d),
            PromptedUpCat(f[3], f[2], f[2], d),
            PromptedUpCat(f[2], f[1], f[1], d),
            PromptedUpCat(f[1], f[0], f[5], d, halves=False),
        ])
        self._channels = [f[3], f[2], f[1], f[5]]
        widths = [f[4], *self._channels]  # bottleneck, then decoder blocks 0..3

        def transformer(c: int) -> nn.Module:
            if c % num_head_channels or c % norm_num_groups:
                raise BundleInputError(
                    f"attention on {c} channels needs num_head_channels ({num_head_channels}) and norm_num_groups "
                    f"({norm_num_groups}) dividing {c}"
                )
            return SpatialTransformer(2, c, c // num_head_channels, num_head_channels, norm_num_groups=norm_num_groups,
                                      cross_attention_dim=cross_attention_dim)

        # ModuleDict keys "0".."4": position 0 after the bottleneck, position j + 1 after decoder block j
        self.attentions = nn.ModuleDict(
            {str(i): transformer(c) for i, (c, a) in enumerate(zip(widths, attention)) if a}
        )
        self.out = nn.Conv2d(f[5], in_channels, 3, padding=1)  # stage 1's noise prediction
        if cross_attention_dim is not None:
            mask_cross_attention(self)  # padding tokens of the prompt are no keys

    def decoder_block_channels(self) -> list[int]:
        return list(self._channels)

    def decoder_block_strides(self) -> list[int]:
        return [8, 4, 2, 1]

    def cross_attention_modules(self) -> list[nn.Module]:
        return transformer_cross_attention(self)

    def modules_after(self, block: int) -> list[nn.Module]:
        later = [self.attentions[k] for k in self.attentions if int(k) > block + 1]
        return [self.out, *self.up[block + 1 :], *later]

    def _attend(self, position: int, h: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        key = str(position)
        if key not in self.attentions:
            return h
        return self.attentions[key](h, context=ctx)

    def _run(self, x_t: torch.Tensor, emb: torch.Tensor, ctx: torch.Tensor | None, last: int) -> Iterator[torch.Tensor]:
        """Yield the outputs of decoder blocks 0..``last``; ``emb`` is P (Eq. 5), ``ctx`` the packed Q*."""
        skips = [self.conv_0(x_t, emb)]  # strides 1, 2, 4, 8
        for down in self.down:
            skips.append(down(self.pool(skips[-1]), emb))
        h = self._attend(0, skips.pop(), ctx)  # stride 16
        for j in range(last + 1):
            h = self._attend(j + 1, self.up[j](h, skips.pop(), emb), ctx)
            yield h
