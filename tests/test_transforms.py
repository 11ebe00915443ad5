"""bundle/transforms.py: per-modality MONAI pipelines on real fixtures, and an actionable error for each bad input."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    LoadImage,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)
from PIL import Image

from bundle.data import DEFAULT_TEXT
from bundle.errors import find_input_error
from bundle.transforms import (
    BinaryMaskd,
    Ensure2Dd,
    EnsureChannelsd,
    EnsureTextd,
    InvertMonochrome1d,
    LoadImageCheckedd,
)

TRAIN = Path(__file__).resolve().parent / "data" / "lvit_tiny" / "Train_Folder"
HE_IMAGE, HE_MASK = TRAIN / "img" / "TCGA-21-5784-01Z-00-DX1.png", TRAIN / "labelcol" / "TCGA-21-5784-01Z-00-DX1.png"


@contextlib.contextmanager
def input_error(pattern: str) -> Iterator[None]:
    """Expect a BundleInputError matching ``pattern``, possibly wrapped by Compose's RuntimeError."""
    with pytest.raises(Exception) as info:
        yield
    message = find_input_error(info.value)
    assert message is not None, f"no BundleInputError in {info.value!r}"
    assert re.search(pattern, message), message


def load(keys: list[str]) -> list:
    """Read + channel-first + 2D check, as every modality's config starts."""
    return [LoadImageCheckedd(keys, image_only=True), EnsureChannelFirstd(keys), Ensure2Dd(keys)]


def mask_pipeline(label_mode: str) -> Compose:
    """Mask to {0, 1} at 256 px: nearest, or TextDiff's bilinear-then->0 (slightly dilating)."""
    threshold = 0.5 if label_mode == "nearest" else 1e-6
    return Compose(
        [
            *load(["image", "label"]),
            BinaryMaskd("label", image_key="image"),
            Resized(["image", "label"], (256, 256), mode=["bilinear", label_mode], anti_aliasing=[True, False]),
            AsDiscreted("label", threshold=threshold),
        ]
    )


def test_he_png_pipeline() -> None:
    pipeline = Compose(
        [
            *load(["image"]),
            ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=-1.0, b_max=1.0, clip=True),
            EnsureChannelsd("image", channels=3),
            Resized("image", (256, 256), mode="bilinear", anti_aliasing=True),
        ]
    )
    image = pipeline({"image": str(HE_IMAGE)})["image"]
    assert tuple(image.shape) == (3, 256, 256)
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.max() - image.min() > 1.0
    assert not torch.equal(image[0], image[2])  # real RGB, not a repeated grey channel
    tif = next((TRAIN.parent / "Test_Folder" / "img").iterdir())
    assert tuple(pipeline({"image": str(tif)})["image"].shape) == (3, 256, 256)  # MoNuSeg test images are .tif


def test_dicom_monochrome1_pipeline(data_dir: Path) -> None:
    path = str(data_dir / "cxr_monochrome1.dcm")
    raw = LoadImage(image_only=True)(path)
    assert raw.meta["0028|0004"].strip() == "MONOCHROME1" and raw.max() > 255  # 16-bit values
    pipeline = Compose(
        [
            *load(["image"]),
            InvertMonochrome1d("image"),
            ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=-1.0, b_max=1.0, clip=True),
            EnsureChannelsd("image", channels=3),
        ]
    )
    image = pipeline({"image": path})["image"]
    assert tuple(image.shape) == (3, 60, 64) and torch.equal(image[0], image[2])
    assert image.min() == -1.0 and image.max() == 1.0
    r = np.corrcoef(raw.numpy().ravel(), image[0].numpy().ravel())[0, 1]
    assert r < -0.95  # inverted: the stored brightest value (MONOCHROME1 = black) is now the darkest
    assert image.meta["0028|0004"] == "MONOCHROME2"


def test_monochrome2_passes_unchanged() -> None:
    data = load(["image"])[0]({"image": str(HE_MASK)})
    out = InvertMonochrome1d("image")(data)
    assert torch.equal(out["image"], data["image"])


@pytest.fixture(scope="module")
def ct_slice(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One lesion slice of the CT fixture, made by scripts/slice_ct.py."""
    from scripts.slice_ct import slice_ct

    data = Path(__file__).resolve().parent / "data" / "ct_tiny"
    out = tmp_path_factory.mktemp("ct")
    datalist = slice_ct(str(data / "lung2_image.nrrd"), str(data / "lung2_label.nrrd"), str(out), only_lesion=True)
    return datalist["testing"][0]


def test_ct_slice_pipeline(ct_slice: dict[str, str]) -> None:
    hu = Compose(load(["image"]))({"image": ct_slice["image"]})["image"]
    pipeline = Compose(
        [
            *load(["image", "label"]),
            BinaryMaskd("label", image_key="image"),
            ScaleIntensityRanged("image", a_min=-1000, a_max=400, b_min=-1.0, b_max=1.0, clip=True),
            EnsureChannelsd("image", channels=3),
        ]
    )
    d = pipeline(dict(ct_slice))
    image = d["image"]
    assert tuple(image.shape) == (3, 64, 64) and image.min() >= -1.0 and image.max() <= 1.0
    expected = np.clip((hu[0].numpy() + 1000) / 1400 * 2 - 1, -1, 1)
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-5)
    assert (image[0][hu[0] <= -1000] == -1).all() and (image[0][hu[0] >= 400] == 1).all()
    assert set(torch.unique(d["label"]).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("path", [HE_MASK, TRAIN / "labelcol" / "TCGA-21-5786-01Z-00-DX1.png"])
def test_mask_binarised_and_resize_modes(path: Path) -> None:
    item = {"image": str(TRAIN / "img" / path.name), "label": str(path)}
    nearest = mask_pipeline("nearest")(item)["label"]
    bilinear = mask_pipeline("bilinear")(item)["label"]
    assert tuple(nearest.shape) == (1, 256, 256)
    assert set(torch.unique(nearest).tolist()) == {0.0, 1.0} == set(torch.unique(bilinear).tolist())
    assert bilinear.sum() >= nearest.sum()  # bilinear then > 0 dilates slightly
    assert bool((bilinear >= nearest).all())  # ... and contains the nearest mask


def test_binary_mask_levels() -> None:
    meta_mask = torch.tensor([[[0, 0], [255, 255]]], dtype=torch.float32)
    out = BinaryMaskd("label", image_key=None)({"label": meta_mask})["label"]
    assert out.tolist() == [[[0.0, 0.0], [1.0, 1.0]]]
    assert BinaryMaskd("label", image_key=None)({"label": torch.zeros(1, 2, 2)})["label"].sum() == 0  # empty is fine
    rgb_mask = meta_mask.repeat(3, 1, 1)
    assert tuple(BinaryMaskd("label", image_key=None)({"label": rgb_mask})["label"].shape) == (1, 2, 2)


def test_text_defaults_and_override() -> None:
    t = EnsureTextd(modality="ct")
    assert t({"image": "a.png"}) == {"image": "a.png", "text": DEFAULT_TEXT["ct"], "modality": "ct"}
    assert t({"image": "a.png", "text": " Left. ", "modality": "cxr"})["text"] == "Left."
    assert (
        EnsureTextd(override="Lesion in the upper right lung.")({"text": "x"})["text"]
        == "Lesion in the upper right lung."
    )


# ---- every bad input: a BundleInputError that names the file ---------------------------------------


def test_truncated_png(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    data = HE_IMAGE.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with input_error(r"cannot read image file '.*broken\.png'.*complete PNG"):
        Compose(load(["image"]))({"image": str(broken)})


def test_unreadable_mask_named(tmp_path: Path) -> None:
    (tmp_path / "m.png").write_bytes(b"not an image at all")
    with input_error(r"cannot read label file '.*m\.png'"):
        Compose(load(["image", "label"]))({"image": str(HE_IMAGE), "label": str(tmp_path / "m.png")})


def test_mask_with_three_levels(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:20, 10:20], mask[30:40, 30:40] = 1, 7
    Image.fromarray(mask).save(tmp_path / "three.png")
    with input_error(r"mask '.*three\.png' has values \{0, 1, 7\}; expected a binary mask"):
        mask_pipeline("nearest")({"image": str(HE_IMAGE), "label": str(tmp_path / "three.png")})


def test_mask_image_size_mismatch(tmp_path: Path) -> None:
    Image.open(HE_MASK).resize((32, 48)).save(tmp_path / "small.png")
    with input_error(r"mask '.*small\.png' is \(32, 48\) but image '.*5784.*png' is \(64, 64\)"):
        mask_pipeline("nearest")({"image": str(HE_IMAGE), "label": str(tmp_path / "small.png")})


def test_mask_with_different_channels(tmp_path: Path) -> None:
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    rgb[:10, :, 0] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with input_error(r"mask '.*rgb\.png' has 3 different channels"):
        mask_pipeline("nearest")({"image": str(HE_IMAGE), "label": str(tmp_path / "rgb.png")})


def test_3d_volume_where_a_slice_is_expected(data_dir: Path) -> None:
    with input_error(r"image '.*lung2_image\.nrrd' is a 3D volume .*scripts/slice_ct\.py"):
        Compose(load(["image"]))({"image": str(data_dir / "ct_tiny" / "lung2_image.nrrd")})


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text(text: str) -> None:
    with input_error(r"text for image '.*5784.*\.png' is .*non-empty sentence"):
        EnsureTextd()({"image": str(HE_IMAGE), "text": text, "modality": "he"})


def test_unknown_modality() -> None:
    with input_error(r"unknown modality 'mri' \(image '.*5784.*\.png'\)"):
        EnsureTextd()({"image": str(HE_IMAGE), "modality": "mri"})
    with input_error(r"unknown modality 'xray' \(option modality\)"):
        EnsureTextd(modality="xray")


def test_too_many_channels(tmp_path: Path) -> None:
    img = torch.zeros(5, 8, 8)
    with input_error(r"has 5 channels; expected greyscale, RGB or RGBA"):
        EnsureChannelsd("image")({"image": img})
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = Compose([*load(["image"]), EnsureChannelsd("image")])({"image": str(tmp_path / "rgba.png")})
    assert out["image"].shape[0] == 3


def test_datalist_items_feed_the_pipeline(tmp_path: Path) -> None:
    """A converted datalist (relative paths) runs through load + checks end to end."""
    from bundle.data import load_datalist, write_datalist
    from scripts.prepare_lvit import convert_lvit

    shutil.copytree(TRAIN.parent, tmp_path / "lvit")
    write_datalist(str(tmp_path / "dl.json"), convert_lvit(tmp_path / "lvit", log=None))
    assert json.loads((tmp_path / "dl.json").read_text())["training"][0]["image"].startswith("lvit/")
    for item in load_datalist(str(tmp_path / "dl.json"), "training", require_label=True):
        d = Compose([*load(["image", "label"]), EnsureTextd(), BinaryMaskd("label")])(item)
        assert tuple(d["label"].shape) == (1, 64, 64) and d["text"] == item["text"]


def test_images_too_small_for_anything_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "one.png")
    with input_error(r"one.png' is 1x1 pixels; images must be at least 8 pixels"):
        Compose(load(["image"]))({"image": str(tmp_path / "one.png")})


def test_a_folder_given_as_image_is_named(tmp_path: Path) -> None:
    with input_error(r"is a folder: give an image file"):
        LoadImageCheckedd("image", image_only=True)({"image": str(tmp_path)})


def test_ct_window_keeps_hounsfield_data_and_rescales_8_bit_pictures(tmp_path: Path, ct_slice: dict[str, str]) -> None:
    from bundle.transforms import CTWindowd

    window = CTWindowd("image", window=(-1000, 400))
    hu = Compose(load(["image"]))({"image": ct_slice["image"]})
    expected = ScaleIntensityRanged("image", -1000, 400, -1.0, 1.0, clip=True)(dict(hu))["image"]
    assert torch.allclose(window(dict(hu))["image"], expected)  # NIfTI in HU: the Hounsfield window

    picture = np.tile(np.arange(256, dtype=np.uint8), (16, 1))  # an 8-bit lung-windowed slice
    Image.fromarray(picture).save(tmp_path / "windowed.png")
    out = window(Compose(load(["image"]))({"image": str(tmp_path / "windowed.png")}))["image"]
    assert float(out.min()) == -1.0 and float(out.max()) == 1.0  # the full range, not a narrow grey band
    assert len(torch.unique(out)) == 256

    Image.fromarray((picture.astype(np.uint16) * 40)).save(tmp_path / "sixteen.png")
    with input_error(r"only 8-bit windowed pictures"):
        window(Compose(load(["image"]))({"image": str(tmp_path / "sixteen.png")}))
