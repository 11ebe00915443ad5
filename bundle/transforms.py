"""Dictionary transforms MONAI does not have: input checks with actionable errors and modality quirks.

Everything else (reading, resizing, intensity windows, augmentation) is stock MONAI, wired in
``configs/``. Each check names the offending file and says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform, RandomizableTransform

from . import dihedral
from .data import DEFAULT_TEXT, RASTER_SUFFIXES, check_modality, check_text
from .errors import BundleInputError

__all__ = [
    "LoadImageCheckedd",
    "Ensure2Dd",
    "EnsureChannelsd",
    "InvertMonochrome1d",
    "BinaryMaskd",
    "EnsureTextd",
    "RandDihedralTextd",
    "CTWindowd",
]


def _name(img: Any, fallback: str = "input") -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", fallback))


class LoadImageCheckedd(LoadImaged):
    """:class:`monai.transforms.LoadImaged` whose read failures name the file and say what to do."""

    def __call__(self, data: Mapping[Hashable, Any], reader=None) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            if isinstance(data[key], (str, os.PathLike)) and os.path.isdir(data[key]):
                raise BundleInputError(
                    f"{key} '{data[key]}' is a folder: give an image file (a DICOM series or CT volume is cut "
                    "into 2D slices with scripts/slice_ct.py)"
                )
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
    saved as 3D) becomes (C, H, W). Pictures smaller than ``min_size`` pixels on a side are rejected:
    nothing can be segmented in them, and a 1x1 mask cannot even be written as PNG.

    Args:
        keys: image / mask keys.
        min_size: smallest accepted side in pixels.
    """

    def __init__(self, keys: KeysCollection, min_size: int = 8, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_size = int(min_size)

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
            if min(img.shape[1:]) < self.min_size:
                size = "x".join(str(int(n)) for n in img.shape[1:])
                raise BundleInputError(
                    f"{key} '{_name(d[key])}' is {size} pixels; images must be at least {self.min_size} pixels on "
                    "each side: give the full-resolution picture"
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


class RandDihedralTextd(RandomizableTransform, MapTransform):
    """Flip / quarter-turn image and mask together and rewrite the sentence's location words to match.

    Each call draws one symmetry uniformly from ``symmetries`` (a set of :data:`bundle.dihedral.SYMMETRY_SETS`),
    as seen on the standard display, restricted to those the item's sentence can follow
    (:func:`bundle.dihedral.allowed`: lung sentences keep their left/right and upper/lower axes, and a
    non-square picture is never transposed). It is applied to the stored arrays through the item's
    ``orientation`` (default ``"standard"``), and the location words of the item's text move with it, so
    "density in the upper right is high" stays true of the augmented tile and "lower left lung" of the
    mirrored radiograph.

    Args:
        keys: image and mask keys (channel-first, MONAI layout ``(C, X, Y)``).
        symmetries: ``"dihedral"`` (all eight), ``"mirror"`` (identity or left-right) or ``"none"``.
        text_key: the sentence key.
        modality_key: picks the location convention: "he" -> viewer's sides, "cxr" / "ct" -> patient's sides.
        orientation_key: per-item orientation of the stored arrays (see :mod:`bundle.dihedral`).
        prob: probability of drawing at all (otherwise identity).
    """

    def __init__(
        self,
        keys: KeysCollection,
        symmetries: str = "dihedral",
        text_key: str = "text",
        modality_key: str = "modality",
        orientation_key: str = "orientation",
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.symmetries = dihedral.symmetry_set(symmetries)
        self.text_key, self.modality_key, self.orientation_key = text_key, modality_key, orientation_key
        self.drawn = "identity"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        keys = list(self.key_iterator(d))
        if not self._do_transform or not keys:
            self.drawn = "identity"
            return d
        text = d.get(self.text_key) if isinstance(d.get(self.text_key), str) else ""
        convention = "image" if d.get(self.modality_key, "he") == "he" else "radiological"
        shape = d[keys[0]].shape[1:]
        names = dihedral.allowed(self.symmetries, text, convention, square=shape[0] == shape[1])
        self.drawn = names[self.R.randint(len(names))]
        display = dihedral.SYMMETRIES[self.drawn]
        stored = dihedral.to_stored(display, d.get(self.orientation_key) or "standard")
        for key in keys:
            d[key] = dihedral.apply(d[key], stored)
        if text:
            d[self.text_key] = dihedral.rewrite_locations(text, display, convention)
        return d


class CTWindowd(MapTransform):
    """CT intensities to [-1, 1]: a Hounsfield window for HU data, a plain rescale for pictures already windowed.

    CT slices come two ways: in Hounsfield units (NIfTI / NRRD / MHA / DICOM, e.g. from
    ``scripts/slice_ct.py``), and as 8-bit pictures that were lung-windowed before they were saved
    (PNG / JPEG, e.g. MosMedData+, the MedSeg / Inf-Net slices). The HU window would squeeze 0..255 into
    a narrow grey band, so a raster file whose values lie in 0..255 is scaled from 0..255 instead; a
    raster file with larger values (16-bit, HU plus an unknown offset) is refused.

    Args:
        keys: image keys.
        window: (a_min, a_max) Hounsfield window for HU data.
        b_min, b_max: output range.
    """

    def __init__(
        self, keys: KeysCollection, window: tuple[float, float] = (-1000.0, 400.0), b_min: float = -1.0,
        b_max: float = 1.0, allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(window) != 2 or window[0] >= window[1]:
            raise BundleInputError(f"option ct_window {list(window)} must be [low, high] with low < high")
        self.window = (float(window[0]), float(window[1]))
        self.b_min, self.b_max = float(b_min), float(b_max)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img, name = d[key], _name(d[key])
            low, high = self.window
            if name.lower().endswith(RASTER_SUFFIXES):
                top = float(img.max())
                if top > 255 or float(img.min()) < 0:
                    raise BundleInputError(
                        f"CT picture '{name}' holds values {float(img.min()):g}..{top:g}: only 8-bit windowed "
                        "pictures (0..255) are read as PNG / JPEG / TIFF; save HU slices as NIfTI with "
                        "scripts/slice_ct.py"
                    )
                low, high = 0.0, 255.0
            scaled = (img.float() - low) / (high - low)
            d[key] = scaled.clamp(0.0, 1.0) * (self.b_max - self.b_min) + self.b_min
        return d
