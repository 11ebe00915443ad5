"""Dictionary transforms MONAI does not have: input checks with actionable errors and modality quirks.

Everything else (reading, resizing, intensity windows, augmentation) is stock MONAI, wired in
``configs/``. Each check names the offending file and says what to do.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform

from .data import DEFAULT_TEXT, check_modality, check_text
from .errors import BundleInputError

__all__ = [
    "LoadImageCheckedd",
    "Ensure2Dd",
    "EnsureChannelsd",
    "InvertMonochrome1d",
    "BinaryMaskd",
    "EnsureTextd",
]


def _name(img: Any, fallback: str = "input") -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", fallback))


class LoadImageCheckedd(LoadImaged):
    """:class:`monai.transforms.LoadImaged` whose read failures name the file and say what to do."""

    def __call__(self, data: Mapping[Hashable, Any], reader=None) -> dict[Hashable, Any]:
        try:
            return super().__call__(data, reader)
        except Exception as e:
            for key in self.key_iterator(dict(data)):  # find the file that fails, name it
                try:
                    self._loader(data[key], reader)
                except Exception as err:
                    raise BundleInputError(
                        f"cannot read {key} file '{data[key]}' ({type(err).__name__}: {err}). Check that it is a "
                        "complete PNG, JPEG, TIFF, DICOM, NIfTI, NRRD or MHA file (re-export or re-download it)"
                    ) from err
            raise e


class Ensure2Dd(MapTransform):
    """Channel-first 2D check: drop singleton extra spatial axes, reject real 3D volumes.

    Expects (C, H, W) after ``EnsureChannelFirstd``; (C, H, W, 1) (single-frame DICOM / 2D NIfTI
    saved as 3D) becomes (C, H, W).
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            kept = list(range(img.ndim - 1))  # spatial axes still present
            while img.ndim > 3 and img.shape[-1] == 1:
                img, kept = img[..., 0], kept[:-1]
            while img.ndim > 3 and img.shape[1] == 1:
                img, kept = img[:, 0], kept[1:]
            if img.ndim != 3:
                raise BundleInputError(
                    f"{key} '{_name(d[key])}' is a {img.ndim - 1}D volume of shape {tuple(img.shape[1:])}; this "
                    "bundle segments 2D images: cut it into slices with scripts/slice_ct.py"
                )
            if isinstance(img, MetaTensor) and img.affine.shape[-1] != 3:
                # readers disagree on 2D affines (PIL 4x4, tifffile 3x3): keep the in-plane part, 3x3, so
                # items from different formats collate into one batch
                rows = [*kept, img.affine.shape[-1] - 1]
                img.affine = img.affine[rows][:, rows]
            d[key] = img
        return d


class EnsureChannelsd(MapTransform):
    """Give images exactly ``channels`` channels: greyscale is repeated, an alpha channel is dropped.

    Args:
        keys: image keys (channel-first).
        channels: 3 for the RGB encoders used by default.
    """

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img, c = d[key], d[key].shape[0]
            if c == 4 and self.channels == 3:  # RGBA -> RGB
                img = img[:3]
            elif c == 2 and self.channels in (1, 3):  # grey + alpha
                img = img[:1]
            if img.shape[0] == 3 and self.channels == 1:
                img = img.float().mean(0, keepdim=True)
            if img.shape[0] == 1 and self.channels > 1:
                img = img.repeat(self.channels, *([1] * (img.ndim - 1)))
            if img.shape[0] != self.channels:
                raise BundleInputError(
                    f"{key} '{_name(d[key])}' has {c} channels; expected greyscale, RGB or RGBA "
                    f"(converted to {self.channels})"
                )
            d[key] = img
        return d


class InvertMonochrome1d(MapTransform):
    """Invert DICOM images stored as MONOCHROME1 (white = low values) so bright = dense for every input.

    Reads the photometric interpretation that MONAI's ITK reader puts in the metadata (tag 0028|0004);
    other images pass unchanged.
    """

    TAG = "0028|0004"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = getattr(img, "meta", {}) or {}
            if str(meta.get(self.TAG, "")).strip().upper() == "MONOCHROME1":
                img = img.max() + img.min() - img
                img.meta[self.TAG] = "MONOCHROME2"
                d[key] = img
        return d


class BinaryMaskd(MapTransform):
    """Check a mask against its image and map it to {0, 1}.

    The mask must be single-channel (or identical channels), have the image's spatial size and hold
    at most two levels (0/255, 0/1, ...): the higher level becomes 1. An empty mask is allowed.

    Args:
        keys: mask keys.
        image_key: the image the mask must match in size (None: no size check).
    """

    def __init__(self, keys: KeysCollection, image_key: str | None = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask, name = d[key], _name(d[key], key)
            if mask.shape[0] > 1:
                if not bool((mask == mask[:1]).all()):
                    raise BundleInputError(f"mask '{name}' has {mask.shape[0]} different channels; expected one")
                mask = mask[:1]
            if self.image_key is not None and self.image_key in d:
                image = d[self.image_key]
                if tuple(image.shape[1:]) != tuple(mask.shape[1:]):
                    raise BundleInputError(
                        f"mask '{name}' is {tuple(mask.shape[1:])} but image '{_name(image)}' is "
                        f"{tuple(image.shape[1:])}: a mask must have its image's size"
                    )
            levels = torch.unique(torch.as_tensor(mask))
            if len(levels) > 2:
                shown = ", ".join(f"{v:g}" for v in levels[:8].tolist()) + (", ..." if len(levels) > 8 else "")
                raise BundleInputError(
                    f"mask '{name}' has values {{{shown}}}; expected a binary mask (two levels such as 0/255 or 0/1)"
                )
            low = levels.min() if len(levels) == 2 else torch.zeros((), dtype=levels.dtype)
            out = (mask > low).to(torch.float32)
            if isinstance(mask, MetaTensor) and not isinstance(out, MetaTensor):
                out = MetaTensor(out, meta=mask.meta)
            d[key] = out
        return d


class EnsureTextd(MapTransform):
    """Make sure every item has a sentence and a modality.

    Items from MONAI Label or hand-written datalists may carry neither: the modality falls back to
    ``modality`` and the text to that modality's default sentence (or ``default_text``).
    An empty or whitespace-only sentence is an error, never silently replaced.

    Args:
        keys: the text key (default "text").
        modality: modality for items without one.
        default_text: sentence for items without text (None: the modality's default).
        override: if not None/empty, replaces every item's text (the ``--text`` option of inference).
    """

    def __init__(
        self,
        keys: KeysCollection = "text",
        modality: str = "he",
        default_text: str | None = None,
        override: str | None = None,
        modality_key: str = "modality",
        image_key: str = "image",
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.modality = check_modality(modality, "option modality")
        self.default_text = default_text
        self.override = override.strip() if isinstance(override, str) and override.strip() else None
        self.modality_key = modality_key
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        where = f"image '{_name(d.get(self.image_key), str(d.get(self.image_key, '?')))}'"
        modality = check_modality(d.get(self.modality_key) or self.modality, where)
        d[self.modality_key] = modality
        for key in self.keys:
            if self.override is not None:
                d[key] = self.override
            elif d.get(key) is None:
                d[key] = self.default_text or DEFAULT_TEXT[modality]
            else:
                d[key] = check_text(d[key], where)
        return d
