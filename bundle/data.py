"""The data model: MONAI datalist JSON files whose items carry an image, a mask, a sentence and a modality.

A datalist is ``{"training": [...], "validation": [...], "testing": [...]}``; each item is
``{"image": path, "label": path, "text": "sentence", "modality": "he" | "cxr" | "ct"}``. ``label`` is
absent for unlabelled / inference items; ``text`` may be absent (the modality's default sentence is
used); paths relative to the datalist file are resolved against its folder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import BundleInputError
from .utils import atomic_write

__all__ = [
    "MODALITIES",
    "DEFAULT_TEXT",
    "SPLITS",
    "RASTER_SUFFIXES",
    "IMAGE_SUFFIXES",
    "check_modality",
    "check_text",
    "load_datalist",
    "unlabelled_items",
    "folder_items",
    "write_datalist",
]

logger = logging.getLogger(__name__)

MODALITIES = ("he", "cxr", "ct")
SPLITS = ("training", "validation", "testing")

#: Sentences used when an item has no text: written in the style of each dataset's annotations
#: (MoNuSeg / QaTa-COV19 / MosMedData+ as distributed with LViT).
DEFAULT_TEXT: dict[str, str] = {
    "he": "The nuclei are evenly distributed.",
    "cxr": "Pulmonary infection in the lungs.",
    "ct": "Lesion in the lungs.",
}


def check_modality(modality: Any, where: str = "") -> str:
    """Return ``modality`` if it is one of :data:`MODALITIES`, else raise a clear error."""
    if modality not in MODALITIES:
        where = f" ({where})" if where else ""
        raise BundleInputError(f"unknown modality {modality!r}{where}; expected one of {', '.join(MODALITIES)}")
    return str(modality)


def check_text(text: Any, where: str) -> str:
    """Return the stripped sentence; empty, whitespace-only or non-string text is an error."""
    if not isinstance(text, str) or not text.strip():
        raise BundleInputError(
            f"text for {where} is {text!r}: give a non-empty sentence, or leave the 'text' key out to use "
            "the modality's default sentence"
        )
    return text.strip()


def _resolve(path: Any, base_dir: str, what: str, where: str) -> str:
    if not isinstance(path, str) or not path:
        raise BundleInputError(f"{where} has an invalid '{what}' entry {path!r}; expected a file path")
    full = path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))
    if not os.path.exists(full):
        raise BundleInputError(f"{what} file '{full}' of {where} does not exist")
    return full


def load_datalist(
    datalist: str | Mapping[str, Any],
    split: str = "training",
    modality: str | None = None,
    require_label: bool = False,
    base_dir: str | None = None,
    max_items: int | None = None,
) -> list[dict[str, Any]]:
    """Read and validate one split of a datalist.

    Args:
        datalist: path of the datalist JSON file, or the already-parsed mapping.
        split: key of the list to return ("training", "validation", "testing", or any other key).
        modality: modality for items that do not name one (None: every item must name one).
        require_label: every item must have a ``label`` (training / evaluation).
        base_dir: folder relative paths are resolved against (default: the datalist file's folder).
        max_items: keep only the first ``max_items`` items (quick runs); None keeps all.

    Returns:
        items with absolute ``image`` / ``label`` paths, a non-empty ``text`` and a ``modality``.
    """
    if isinstance(datalist, (str, os.PathLike)):
        path = os.fspath(datalist)
        if not os.path.isfile(path):
            raise BundleInputError(f"datalist '{path}' does not exist (option datalist)")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleInputError(f"datalist '{path}' is not valid JSON: {e}") from e
        base = base_dir or os.path.dirname(os.path.abspath(path))
        name = f"datalist '{path}'"
    else:
        data, base, name = datalist, base_dir or os.getcwd(), "datalist"
    if not isinstance(data, Mapping):
        raise BundleInputError(f"{name} must be a JSON object with lists under {', '.join(SPLITS)}")
    if split not in data:
        raise BundleInputError(f"{name} has no '{split}' list (it has: {', '.join(map(str, data)) or 'nothing'})")
    items = data[split]
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise BundleInputError(f"'{split}' in {name} must be a non-empty list of items")
    if modality is not None:
        check_modality(modality, f"option modality for {name}")

    out: list[dict[str, Any]] = []
    defaults = 0
    for i, item in enumerate(items[:max_items] if max_items else items):
        where = f"item {i} of '{split}' in {name}"
        if not isinstance(item, Mapping) or "image" not in item:
            raise BundleInputError(f"{where} has no 'image' key: each item needs at least an image path")
        new = dict(item)
        new["image"] = _resolve(item["image"], base, "image", where)
        where = f"image '{new['image']}' ({where})"
        if item.get("label") is not None:
            new["label"] = _resolve(item["label"], base, "label", where)
        elif require_label:
            raise BundleInputError(f"{where} has no 'label': training and evaluation need a mask for every item")
        new["modality"] = check_modality(item.get("modality", modality), where)
        if "text" in item:
            new["text"] = check_text(item["text"], where)
        else:
            new["text"] = DEFAULT_TEXT[new["modality"]]
            defaults += 1
        out.append(new)
    if defaults:
        logger.warning("%d of %d '%s' items have no text: using the modality default sentence", defaults, len(out), split)
    return out


def write_datalist(path: str, datalist: Mapping[str, Any], relative: bool = True) -> str:
    """Write a datalist atomically; paths become relative to the file's folder when ``relative``.

    Top-level entries that are not lists of items (e.g. ``"ct_window": [-1000, 400]``) are written as given.
    """
    base = os.path.dirname(os.path.abspath(path))
    data: dict[str, Any] = {}
    for split, items in datalist.items():
        if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
            data[split] = items
            continue
        data[split] = []
        for item in items:
            new = dict(item)
            for key in ("image", "label"):
                if relative and isinstance(new.get(key), str) and os.path.isabs(new[key]):
                    new[key] = os.path.relpath(new[key], base)
            data[split].append(new)
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    return path


#: 2D picture formats (read with PIL / tifffile; predictions for them are written as PNG)
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: every image format an item may have
IMAGE_SUFFIXES = (*RASTER_SUFFIXES, ".dcm", ".nii", ".nii.gz", ".nrrd", ".mha")


def unlabelled_items(datalist: str, splits: Sequence[str], modality: str | None = None) -> list[dict[str, Any]]:
    """Images of every listed split that the datalist has, labels dropped (diffusion pretraining data)."""
    if not os.path.isfile(datalist):
        raise BundleInputError(f"datalist '{datalist}' does not exist (option datalist)")
    with open(datalist, encoding="utf-8") as f:
        keys = set(json.load(f))
    present = [s for s in splits if s in keys]
    if not present:
        raise BundleInputError(f"datalist '{datalist}' has none of the splits {list(splits)}")
    items = [item for split in present for item in load_datalist(datalist, split, modality)]
    return [{k: v for k, v in item.items() if k != "label"} for item in items]


def folder_items(folder: str, modality: str) -> list[dict[str, Any]]:
    """One unlabelled item per image file in ``folder`` (not recursive), sorted by name."""
    if not os.path.isdir(folder):
        raise BundleInputError(f"image folder '{folder}' does not exist (option image_folder)")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise BundleInputError(f"image folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    check_modality(modality, "option modality")
    return [{"image": os.path.join(folder, f), "modality": modality, "text": DEFAULT_TEXT[modality]} for f in files]
