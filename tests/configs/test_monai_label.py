"""The contract MONAI Label 0.8.5's ``monaibundle`` app holds the bundle to, replayed with MONAI's ConfigParser.

:class:`MonaiLabelBundle` performs, step by step, what ``monailabel.tasks.infer.bundle.BundleInferTask``
(+ ``BasicInferTask``) and ``monailabel.tasks.train.bundle.BundleTrainTask`` do with a bundle folder
(monailabel itself pins numpy < 2 and is not installed here; tests/configs/test_monai_label_server.py
runs the real server). Keys read: ``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``,
``displayable_configs``, ``device``, ``bundle_root``; training runs ``run`` of train.json with MONAI
Label's overrides.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import monai.bundle
import pytest
import torch
from monai.bundle import ConfigItem, ConfigParser
from monai.data import partition_dataset
from monai.handlers import CheckpointLoader
from monai.transforms import Compose, LoadImaged, SaveImaged

from bundle.data import DEFAULT_TEXT
from bundle.engine import TextInferer
from bundle_cli import ROOT

pytestmark = pytest.mark.slow

PROMPT = "two infected areas in the lower left lung."


def make_label_bundle(dest: Path, options: dict, model: Path) -> Path:
    """Copy the bundle as a MONAI Label user installs it (configs, ``bundle`` package, demo data,
    ``models/model.pt``), with ``options`` written into inference.json and train.json: MONAI Label
    passes no command-line overrides, so a non-default network must be set in the configs."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "configs", dest / "configs", ignore=ignore)
    shutil.copytree(ROOT / "bundle", dest / "bundle", ignore=ignore)
    shutil.copytree(ROOT / "docs" / "demo_data", dest / "docs" / "demo_data")
    for name in ("inference.json", "train.json"):
        path = dest / "configs" / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **options}, indent=4))
    (dest / "models").mkdir()
    shutil.copy(model, dest / "models" / "model.pt")
    return dest


class MonaiLabelBundle:
    """MONAI Label 0.8.5's view of a bundle folder (monailabel/tasks/infer/bundle.py + basic_infer.py,
    monailabel/tasks/train/bundle.py)."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        # BundleInferTask.__init__ (tasks/infer/bundle.py)
        self.path, self.device = str(path), device
        sys.path.insert(0, self.path)
        self.config = ConfigParser()
        self.config.read_config(str(path / "configs" / "inference.json"))
        self.config.config.update({"bundle_root": self.path})
        self.config.config["use_click"] = False
        self.network = self.config.get_parsed_content("network_def", instantiate=True)  # model.pt exists
        metadata = json.loads((path / "configs" / "metadata.json").read_text())
        self.key_image, image = next(iter(metadata["network_data_format"]["inputs"].items()))
        self.key_pred, pred = next(iter(metadata["network_data_format"]["outputs"].items()))
        self.labels = {v.lower(): int(k) for k, v in pred.get("channel_def", {}).items() if v.lower() != "background"}
        spatial_shape = image.get("spatial_shape")
        self.dimension = len(spatial_shape) if spatial_shape else 3
        self.displayable_configs: dict = {}
        self._config: dict[str, Any] = {"device": [device], "model_filename": ["model.pt"]}
        if self.config.get("displayable_configs"):
            self.displayable_configs = self.config.get_parsed_content("displayable_configs", instantiate=True)
            self._config.update(self.displayable_configs)
        sys.path.remove(self.path)

    def _update_device(self, data: dict) -> None:
        device = data.get("device")
        if device:
            self.config.config.update({"device": device})
            if self.config.ref_resolver.items.get("device"):
                self.config.ref_resolver.items["device"] = ConfigItem(config=device, id="device")

    def _transforms(self, key: str) -> list:
        c = self.config.get_parsed_content(key, instantiate=True)
        return list(c.transforms) if isinstance(c, Compose) else c

    def infer(self, request: dict) -> tuple[dict, torch.Tensor]:
        """BasicInferTask.__call__: the post-processed data and the logits the network returned."""
        req = copy.deepcopy(self._config)
        req.update(request)
        req["device"] = self.device
        data = copy.deepcopy(req)
        data["image_path"] = req["image"]
        # pre_transforms: the user's options go into displayable_configs, then the config is re-parsed
        if self.config.get("displayable_configs"):
            self.config["displayable_configs"].update({c: data[c] for c in self.displayable_configs})
            self.config.parse()
        self._update_device(data)
        pre = self._transforms("preprocessing")
        for t in pre:
            if isinstance(t, LoadImaged):  # then wrapped in LoadImageTensord, which calls it for file paths
                t._loader.image_only = False
        for t in pre:
            data = t(data)
        # run_inferer: a copy of network_def with model.pt loaded (checkpoint.get("model", checkpoint))
        inferer = self.config.get_parsed_content("inferer", instantiate=True)
        network = copy.deepcopy(self.network).to(torch.device(self.device))
        checkpoint = torch.load(Path(self.path) / "models" / "model.pt", map_location=torch.device(self.device))
        state = checkpoint.get("model", checkpoint)
        assert set(self.network.state_dict()) == set(state), "MONAI Label would load model.pt with strict=False"
        network.load_state_dict(state, strict=False)
        network.eval()
        with torch.no_grad():
            logits = inferer(data[self.key_image][None].to(self.device), network)
        data[self.key_pred] = logits[0]
        # post_transforms: SaveImaged subclasses dropped. MONAI Label then appends its Restored, which resizes
        # `pred` to the image's meta spatial_shape when they differ: the tests check they never do
        post = [t for t in self._transforms("postprocessing") if not isinstance(t, SaveImaged)]
        for t in post:
            data = t(data)
        return data, logits

    def train(self, datalist: list[dict], max_epochs: int = 1, val_split: float = 0.2) -> None:
        """BundleTrainTask.__call__ on one device: train.json's ``run`` with MONAI Label's overrides."""
        config_path = str(Path(self.path) / "configs" / "train.json")
        config = ConfigParser()
        config.read_config(config_path)
        config.config.update({"bundle_root": self.path})
        data = [{"image": d["image"], "label": d["label"]} for d in datalist]  # _fetch_datalist
        train_ds, val_ds = partition_dataset(data, ratios=[(1 - val_split), val_split], shuffle=False)
        train_handlers = config.get("train#handlers", [])
        model = Path(self.path) / "models" / "model.pt"
        if model.exists() and not [t for t in train_handlers if t.get("_target_") == CheckpointLoader.__name__]:
            train_handlers.insert(0, {"_target_": CheckpointLoader.__name__, "load_path": str(model),
                                      "load_dict": {"model": "$@network"}, "strict": False})
        overrides = {"bundle_root": self.path, "train#trainer#max_epochs": max_epochs, "train#dataset#data": train_ds,
                     "device": self.device, "train#handlers": train_handlers, "validate#dataset#data": val_ds}
        if config.get("displayable_configs"):
            overrides["displayable_configs"] = dict(config.get_parsed_content("displayable_configs", instantiate=True))
        sys.path.insert(0, self.path)
        try:
            monai.bundle.run(run_id="run", init_id=None, final_id=None, config_file=config_path,
                             meta_file=str(Path(self.path) / "configs" / "metadata.json"), **overrides)
        finally:
            sys.path.remove(self.path)


@pytest.fixture(scope="module")
def label_bundle(trained, tmp_path_factory, tiny_network_options) -> MonaiLabelBundle:
    """The tiny trained model installed as a MONAI Label bundle and loaded as BundleInferTask does."""
    path = make_label_bundle(tmp_path_factory.mktemp("app") / "lcpdn", tiny_network_options,
                             Path(trained["ckpt_dir"]) / "model.pt")
    return MonaiLabelBundle(path)


@pytest.fixture(scope="module")
def image(data_dir) -> str:
    return str(sorted((data_dir / "lvit_tiny" / "Val_Folder" / "img").iterdir())[0])


def test_info_labels_dimension_and_text_prompt_option(label_bundle):
    assert label_bundle.labels == {"foreground": 1}  # channel_def minus background
    assert label_bundle.dimension == 2  # from metadata spatial_shape: a 2D model
    assert label_bundle._config["text_prompt"] == ""
    assert (label_bundle.key_image, label_bundle.key_pred) == ("image", "pred")


def label_inputs(label_bundle: MonaiLabelBundle, image: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The trained network and the input MONAI Label's pre-transforms make from ``image`` (batch of one)."""
    net = copy.deepcopy(label_bundle.network).eval()
    net.load_state_dict(torch.load(Path(label_bundle.path) / "models" / "model.pt", weights_only=True))
    data = {"image": image}
    for t in label_bundle._transforms("preprocessing"):
        data = t(data)
    return net, data["image"][None]


def test_text_prompt_reaches_the_network(label_bundle, image):
    result, logits = label_bundle.infer({"image": image, "text_prompt": PROMPT})
    _, default_logits = label_bundle.infer({"image": image, "text_prompt": ""})
    assert not torch.allclose(logits, default_logits, atol=1e-5)  # the prompt changes the prediction
    net, x = label_inputs(label_bundle, image)
    with torch.no_grad():
        # exactly the prompt, not another sentence, averaged over the H&E training symmetries (inference.json's tta)
        torch.testing.assert_close(logits, TextInferer(symmetries="reflections")(x, net, text=PROMPT))
    assert not list(Path(label_bundle.path).rglob("*_seg.png"))  # SavePredictiond was filtered out
    # what MONAI Label's Restored + Writer need: a 2D model's label map without channel axis, at the input's
    # size (Restored has nothing to resize), as integers (its ITK writer saves PNG / JPEG only as uint8 / uint16)
    pred = result["pred"]
    assert tuple(pred.shape) == tuple(result["image"].meta["spatial_shape"]), pred.shape
    assert pred.dtype in (torch.uint8, torch.uint16) and set(torch.unique(pred).tolist()) <= {0, 1}, pred.dtype


def test_requests_without_text_use_the_modality_default(label_bundle, image):
    _, logits = label_bundle.infer({"image": image})  # text_prompt keeps its default ""
    net, x = label_inputs(label_bundle, image)
    with torch.no_grad():
        torch.testing.assert_close(logits, TextInferer(symmetries="reflections")(x, net, text=DEFAULT_TEXT["he"]))


def test_monai_label_training_run_with_its_overrides(label_bundle, data_dir):
    lvit = data_dir / "lvit_tiny"
    pairs = [pair for split in ("Train_Folder", "Val_Folder", "Test_Folder")
             for pair in zip(sorted((lvit / split / "img").iterdir()), sorted((lvit / split / "labelcol").iterdir()))]
    items = [{"image": str(img), "label": str(lab), "spacing": [1, 1]} for img, lab in pairs]  # only image/label kept
    model = Path(label_bundle.path) / "models" / "model.pt"
    before = torch.load(model, weights_only=True)
    label_bundle.train(items, max_epochs=1)
    after = torch.load(model, weights_only=True)
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # trained one epoch from the loaded weights
    assert (Path(label_bundle.path) / "models" / "checkpoint_epoch=1.pt").is_file()
