"""LCPDN network modules, one per concept of the paper (section 3)."""

from .adm import ADMUNet, load_adm_checkpoint
from .alignment_prompt import AlignmentPrompt, masked_mean
from .backbone import (
    BlockwiseBackbone,
    DecoderFeatureBackbone,
    DiffusionFeatureExtractor,
    MonaiDiffusionBackbone,
    load_backbone_weights,
)
from .cross_attention_fusion import CrossAttentionFusion
from .efficientnet import EfficientNetLiteEncoder, efficientnet_lite0
from .encoder_backbone import PretrainedEncoderBackbone
from .head import PixelClassifier
from .image_encoder import ImageEncoder, build_image_encoder
from .lcpdn import FUSIONS, LCPDN
from .location_prompt import LocationPrompt
from .ltfr import LTFR, MultiScaleFusion, tile_text
from .text_encoder import TextEncoder, clear_text_cache, default_text_encoder_path
from .textdiff_head import TextDiffHead
from .unet_backbone import BasicUNetBackbone, PromptedTwoConv, PromptedUpCat

__all__ = [
    "ADMUNet",
    "AlignmentPrompt",
    "BasicUNetBackbone",
    "BlockwiseBackbone",
    "CrossAttentionFusion",
    "DecoderFeatureBackbone",
    "DiffusionFeatureExtractor",
    "EfficientNetLiteEncoder",
    "FUSIONS",
    "ImageEncoder",
    "LCPDN",
    "LTFR",
    "LocationPrompt",
    "MonaiDiffusionBackbone",
    "MultiScaleFusion",
    "PixelClassifier",
    "PromptedTwoConv",
    "PromptedUpCat",
    "PretrainedEncoderBackbone",
    "TextDiffHead",
    "TextEncoder",
    "build_image_encoder",
    "clear_text_cache",
    "default_text_encoder_path",
    "efficientnet_lite0",
    "load_adm_checkpoint",
    "load_backbone_weights",
    "masked_mean",
    "tile_text",
]
