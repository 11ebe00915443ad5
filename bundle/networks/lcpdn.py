"""LCPDN: lightweight cross-text-vision prompting diffusion network (paper Fig. 1).

    text ──TextEncoder──► F^T ─┬──────────────────────────────┐
    image ─ImageEncoder─► F^I ─┴► AlignmentPrompt (Eq. 1-5) ─► P, Q*
    image ─(noise at t ∈ T)──► DiffusionFeatureExtractor(P, Q*) (Eq. 6) ─► F_img per block
    [optional: the image encoder's own feature maps, ``encoder_scales``, as extra F_img scales]
    F_img, F^T ─► LTFR per scale (Eq. 7-10) ─► upsample + concat (Eq. 11) ─► PixelClassifier ─► logits
    [optional: the lungs and zones the sentence names as maps beside H, ``location_prompt``]

Ablations of the paper's Table 2 and the TextDiff-style variant are constructor switches:
``cprfl=False`` (P = timestep embedding only, no cross-attention, no image encoder),
``fusion="cross_attention"`` (LTFR replaced by standard cross-attention), ``fusion="textdiff"``
(TextDiff's head; use with ``cprfl=False`` for TextDiff itself).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Union

import torch
from monai.data import MetaTensor
from torch import nn

from ..data import DEFAULT_TEXT, check_modality
from ..errors import BundleInputError
from ..utils import count_trainable_parameters
from .alignment_prompt import AlignmentPrompt
from .backbone import DiffusionFeatureExtractor
from .cross_attention_fusion import CrossAttentionFusion
from .head import PixelClassifier
from .image_encoder import ImageEncoder, build_image_encoder
from .location_prompt import LocationPrompt
from .ltfr import LTFR, MultiScaleFusion
from .text_encoder import TextEncoder
from .textdiff_head import TextDiffHead

__all__ = ["LCPDN", "FUSIONS", "TextInput"]

logger = logging.getLogger(__name__)

FUSIONS = ("ltfr", "cross_attention", "textdiff")
#: ``None`` (default sentence), one sentence for the batch, one per image, or pre-encoded (tokens, mask).
TextInput = Union[None, str, Sequence[str], tuple[torch.Tensor, torch.Tensor]]


class LCPDN(nn.Module):
    """Text-guided diffusion segmentation network.

    Args:
        backbone: a diffusion UNet implementing ``DecoderFeatureBackbone`` (e.g.
            :class:`~bundle.networks.backbone.MonaiDiffusionBackbone`); with ``cprfl`` it needs
            cross-attention of width ``cross_attention_dim`` = the prompt width D.
        text_encoder: frozen text encoder (None: the offline default, all-MiniLM-L6-v2).
        image_encoder: frozen image encoder, used by CPRFL only (None: the offline default).
        timesteps: diffusion steps whose features are used (paper: 50, 150, 250).
        blocks: decoder blocks hooked in the backbone.
        cprfl: use the alignment prompt (P into the time embedding, Q* into cross-attention).
        fusion: ``"ltfr"`` (paper), ``"cross_attention"`` (Table 2 ablation) or ``"textdiff"``.
        fusion_dim: channels per scale after the 1x1 reduction in LTFR / cross-attention fusion.
        fusion_norm: GroupNorm after that reduction, so F_img enters Eq. 10's product at unit scale (default;
            without it LCPDN can stay stuck predicting background: docs/benchmarks.md section 10).
        classifier_hidden: hidden widths of the pixel classifier.
        textdiff_width: width of the TextDiff head (768 in TextDiff).
        out_channels: classes (2 = background / foreground).
        modality: ``he``, ``cxr`` or ``ct``; picks the default sentence for images without text.
        default_text: overrides the modality's default sentence.
        backbone_trainable: fine-tune the backbone (True) or keep it frozen (False).
        backbone_ckpt: local checkpoint of the backbone (e.g. from configs/pretrain_diffusion.json).
        noise_seed: seed of the shared noise eps.
        training_noise: ``"shared"`` or ``"fresh"`` eps in training (see :class:`DiffusionFeatureExtractor`).
        channels_last: keep weights and activations channels-last (faster convolutions on CPU and GPU).
        encoder_scales: stages of the frozen image encoder whose feature maps join the diffusion
            features as extra LTFR scales (not in the paper; ``()`` = the paper). For EfficientNet-Lite0
            stage k is at stride 2^(k+1). Needs a convolutional image encoder; built also without CPRFL.
        location_prompt: give the pixel classifier the side and zone maps of the lungs each sentence
            names (:class:`~bundle.networks.location_prompt.LocationPrompt`; not in the paper) beside H.
    """

    def __init__(
        self,
        backbone: nn.Module,
        text_encoder: TextEncoder | None = None,
        image_encoder: ImageEncoder | None = None,
        timesteps: Sequence[int] = (50, 150, 250),
        blocks: Sequence[int] = (2, 4, 6, 8),
        cprfl: bool = True,
        fusion: str = "ltfr",
        fusion_dim: int = 32,
        fusion_norm: bool = True,
        classifier_hidden: Sequence[int] = (128, 32),
        textdiff_width: int = 768,
        out_channels: int = 2,
        modality: str = "he",
        default_text: str | None = None,
        backbone_trainable: bool = True,
        backbone_ckpt: str | None = None,
        noise_seed: int = 0,
        training_noise: str = "shared",
        channels_last: bool = True,
        encoder_scales: Sequence[int] = (),
        location_prompt: bool = False,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise BundleInputError(f"unknown fusion {fusion!r} (option fusion); use one of {', '.join(FUSIONS)}")
        self.modality = check_modality(modality, "option modality")
        self.default_text = default_text or DEFAULT_TEXT[self.modality]
        self.cprfl = bool(cprfl)
        self.fusion_kind = fusion
        # frozen encoders are plain attributes: outside state_dict, never trained
        self.text_encoder = text_encoder if text_encoder is not None else TextEncoder()
        self.extractor = DiffusionFeatureExtractor(
            backbone,
            timesteps,
            blocks,
            noise_seed=noise_seed,
            training_noise=training_noise,
            trainable=backbone_trainable,
            checkpoint=backbone_ckpt,
        )
        cross_dim = getattr(backbone, "cross_attention_dim", None)
        if self.cprfl and not cross_dim:
            raise BundleInputError(
                "CPRFL feeds the aligned prompt to cross-attention: build the backbone with cross_attention_dim "
                "(= the prompt width), or set cprfl false"
            )
        if not self.cprfl and cross_dim:
            raise BundleInputError("with cprfl false the backbone must have no cross-attention (cross_attention_dim null)")
        # the frozen image encoder gives CPRFL its tokens and the encoder scales their feature maps
        self.image_encoder = None
        if self.cprfl or encoder_scales:
            self.image_encoder = image_encoder if image_encoder is not None else build_image_encoder()
        self.alignment = (
            AlignmentPrompt(self.text_encoder.dim, self.image_encoder.dim, cross_dim, backbone.time_embed_dim)
            if self.cprfl
            else None
        )
        self.encoder_scales = self.image_encoder.check_scales(encoder_scales) if encoder_scales else []
        in_channels = self.extractor.out_channels + [self.image_encoder.map_channels[s] for s in self.encoder_scales]
        text_dim = self.text_encoder.dim
        convention = "image" if self.modality == "he" else "radiological"
        self.location_prompt = LocationPrompt(convention) if location_prompt else None
        if self.location_prompt is not None and fusion == "textdiff":
            raise BundleInputError("location_prompt feeds the pixel classifier, which fusion textdiff does not have")
        extra = self.location_prompt.channels if self.location_prompt is not None else 0
        if fusion == "textdiff":
            self.fusion = None
            self.classifier = TextDiffHead(in_channels, text_dim, textdiff_width, out_channels=out_channels)
        else:
            module = LTFR if fusion == "ltfr" else CrossAttentionFusion
            self.fusion = MultiScaleFusion([module(c, text_dim, fusion_dim, fusion_norm) for c in in_channels])
            self.classifier = PixelClassifier(fusion_dim * len(in_channels) + extra, out_channels, classifier_hidden)
        self._multiple = max(self.extractor.backbone.decoder_block_strides())
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @staticmethod
    def _is_encoded(text: TextInput) -> bool:
        return isinstance(text, tuple) and len(text) == 2 and all(isinstance(t, torch.Tensor) for t in text)

    def sentences(self, text: TextInput, batch: int) -> list[str]:
        """Text input (not pre-encoded) -> one sentence per image, the default one where there is none."""
        if text is None:
            text = [self.default_text] * batch
        elif isinstance(text, str):
            text = [text] * batch
        text = [t if isinstance(t, str) and t.strip() else self.default_text for t in text]
        if len(text) != batch:
            raise ValueError(f"got {len(text)} sentences for {batch} images")
        return text

    def encode_text(self, text: TextInput, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Text input -> tokens (B, N, D_t) and mask (B, N) on ``device``."""
        if self._is_encoded(text):
            tokens, mask = text
            return tokens.to(device), mask.to(device).bool()
        return self.text_encoder(self.sentences(text, batch), device=device)

    def forward(
        self, image: torch.Tensor, text: TextInput = None, orientation: str | Sequence[str | None] | None = None
    ) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1], text, the items' stored orientation -> logits (B, out_channels, H, W).

        ``orientation`` matters only to the location prompt; pre-encoded text gives it no places.
        """
        if image.ndim != 4:
            raise ValueError(f"LCPDN expects images of shape (B, C, H, W), got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % self._multiple or w % self._multiple:
            raise BundleInputError(f"image size {h}x{w} must be a multiple of {self._multiple} (option image_size)")
        if isinstance(image, MetaTensor):  # plain tensors: MetaTensor dispatch costs ~every op of the network
            image = image.as_tensor()
        tokens, mask = self.encode_text(text, image.shape[0], image.device)  # (B, N, D_t), (B, N)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        maps: list[torch.Tensor] = []
        if self.image_encoder is not None:  # one frozen pass: tokens for CPRFL, maps for the encoder scales
            image_tokens, maps = self.image_encoder.encode(image, self.encoder_scales)
        if self.cprfl:
            prompt = self.alignment(tokens, mask, image_tokens)  # Eq. 1-5
            feats = self.extractor(image, emb_offset=prompt.offset, context=prompt.tokens, context_mask=mask)  # Eq. 6
        else:
            feats = self.extractor(image)
        feats = [*feats, *maps]
        if self.fusion is None:
            return self.classifier(feats, tokens, mask, (h, w))
        fused = self.fusion(feats, tokens, mask, (h, w))  # Eq. 7-11
        if self.location_prompt is not None:
            texts = [""] * image.shape[0] if self._is_encoded(text) else self.sentences(text, image.shape[0])
            places = self.location_prompt(texts, (h, w), orientation, fused.device).to(fused.dtype)
            if self.channels_last:  # cat keeps channels-last only when every input has it
                places = places.contiguous(memory_format=torch.channels_last)
            fused = torch.cat([fused, places], dim=1)
        return self.classifier(fused)

    def parameter_report(self) -> dict[str, int]:
        """Trainable parameters per component and in total (frozen encoders are not counted)."""
        parts = {
            "alignment_prompt": self.alignment,
            "backbone": self.extractor,
            "fusion": self.fusion,
            "classifier": self.classifier,
        }
        report = {name: count_trainable_parameters(m) if m is not None else 0 for name, m in parts.items()}
        report["total"] = count_trainable_parameters(self)
        return report
