"""Check a dataset's images and masks up front, before any conversion output or training run.

Every image and mask is read once with the readers and checks of the training pipeline
(``bundle.transforms.LoadImageCheckedd``, MONAI ``EnsureChannelFirstd``, ``Ensure2Dd``,
``EnsureChannelsd``, ``BinaryMaskd``), without the resize and intensity transforms, and *all* problems
are returned as one list, one line each: unreadable or truncated files, empty (0-byte) files, 3D volumes,
NaN / Inf pixels, constant or zero-size images, images smaller than ``min_size``, non-binary masks,
masks whose size differs from their image, empty sentences, and the same image listed twice or in two
splits. The converters (``prepare_lvit.py``) run it before writing a datalist.

Example::

    python scripts/check_dataset.py --datalist /data/QaTa/datalist.json --min-size 64

Exit status: 0 when nothing is wrong, 1 with one ``ERROR:`` line per problem on stderr, 2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/check_dataset.py`: make `bundle` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data import SPLITS, check_modality, check_text, load_datalist  # noqa: E402
from bundle.errors import BundleInputError  # noqa: E402

__all__ = ["DEFAULT_MIN_SIZE", "check_items", "check_splits", "check_datalist", "report", "main"]

DEFAULT_MIN_SIZE = 32


class _Reader:
    """The training pipeline's reading and 2D / channel / mask checks, built once per check."""

    def __init__(self) -> None:
        from monai.transforms import EnsureChannelFirstd

        from bundle.transforms import BinaryMaskd, Ensure2Dd, EnsureChannelsd, LoadImageCheckedd

        self.image = [LoadImageCheckedd("image", image_only=True), EnsureChannelFirstd("image"), Ensure2Dd("image")]
        self.label = [LoadImageCheckedd("label", image_only=True), EnsureChannelFirstd("label"), Ensure2Dd("label")]
        self.channels = EnsureChannelsd("image", channels=3)
        self.levels = BinaryMaskd("label", image_key=None)
        self.size = BinaryMaskd("label", image_key="image")


def _problem(exc: BaseException) -> str:
    """The user-facing message of a failed check (the traceback too when ``LCPDN_TRACEBACK`` is set)."""
    if os.environ.get("LCPDN_TRACEBACK"):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return str(exc) if isinstance(exc, BundleInputError) else f"{type(exc).__name__}: {exc}"


def _read(transforms: Sequence[Any], key: str, path: str, what: str, problems: list[str]) -> Any | None:
    """Read one file through ``transforms``; None (and a problem line) when it is missing, empty or unreadable."""
    if not os.path.exists(path):
        problems.append(f"{what} file '{path}' does not exist")
        return None
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        problems.append(f"{what} file '{path}' is empty (0 bytes): re-export or re-download it")
        return None
    try:
        data = {key: path}
        for transform in transforms:
            data = transform(data)
        return data[key]
    except Exception as e:  # every reader failure is the file's problem, reported with the others
        problems.append(_problem(e))
        return None


def _plain(data: Any) -> Any:
    """The bare tensor of a MetaTensor: the checks below need no metadata, and it makes each operation cheaper."""
    return data.as_tensor() if hasattr(data, "as_tensor") else data


def _finite(data: Any, what: str, path: str, problems: list[str]) -> bool:
    """False (and a problem line) when a floating-point array holds NaN or Inf."""
    import torch

    data = _plain(data)
    if not data.is_floating_point() or bool(torch.isfinite(data).all()):
        return True
    nan, inf = int(torch.isnan(data).sum()), int(torch.isinf(data).sum())
    found = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)
    problems.append(
        f"{what} '{path}' has {found} pixel value(s): replace them (e.g. with the background value) and save it again"
    )
    return False


def _check_image(reader: _Reader, image: Any, path: str, min_size: int, problems: list[str]) -> bool:
    """Channel, size, finiteness and constant-image checks of a loaded (C, H, W) image; True if it passed."""
    before = len(problems)
    size = tuple(image.shape[1:])
    if image.numel() == 0:
        problems.append(f"image '{path}' has no pixels (size {size}): re-export it")
        return False
    try:
        rgb = _plain(reader.channels({"image": image})["image"])  # what the network gets: 3 channels
    except Exception as e:
        problems.append(_problem(e))
        rgb = None
    if min(size) < min_size:
        problems.append(
            f"image '{path}' has size {size}, smaller than {min_size} pixels on a side: the network resizes "
            f"every image to option image_size (256 x 256 by default), so it holds too little detail. Remove it, or "
            "pass --min-size to accept smaller images"
        )
    if _finite(image, "image", path, problems) and rgb is not None:
        flat = rgb.reshape(rgb.shape[0], -1)
        if bool((flat == flat[:, :1]).all()):
            values = list(dict.fromkeys(f"{v:g}" for v in flat[:, 0].tolist()))  # grey: one value, not three
            value = values[0] if len(values) == 1 else f"({', '.join(values)})"
            problems.append(
                f"image '{path}' is empty: every pixel has the value {value}. Remove it or replace it with the "
                "real image"
            )
    return len(problems) == before


def _check_mask(reader: _Reader, mask: Any, image: Any | None, path: str, problems: list[str]) -> None:
    """Finiteness, binary-level and image-size checks of a loaded (C, H, W) mask (messages from BinaryMaskd)."""
    if not _finite(mask, "mask", path, problems):
        return
    plain = _plain(mask)
    low, high = plain.min(), plain.max()
    # BinaryMaskd's unique() costs more than reading the file: call it only when the mask is not plainly binary
    if plain.shape[0] > 1 or not bool(((plain == low) | (plain == high)).all()):
        try:
            reader.levels({"label": mask})
        except Exception as e:
            problems.append(_problem(e))
    if image is not None and tuple(image.shape[1:]) != tuple(mask.shape[1:]):
        # an all-zero stand-in of the mask's size: BinaryMaskd words the size mismatch, nothing else can fail
        try:
            reader.size({"image": image, "label": mask[:1] * 0})
        except Exception as e:
            problems.append(_problem(e))


def _duplicates(found: Sequence[tuple[str, str, int]]) -> list[str]:
    """One line per image listed twice within a split, and per image found in two splits (a leak).

    Args:
        found: (image path, split, index of the item in its split) of every item.
    """
    where: dict[str, dict[str, list[int]]] = {}
    for path, split, index in found:
        where.setdefault(path, {}).setdefault(split, []).append(index)
    problems = []
    for path, splits in where.items():
        for split, indices in splits.items():
            if len(indices) > 1:
                problems.append(
                    f"image '{path}' is listed {len(indices)} times in {split} (items {', '.join(map(str, indices))}): "
                    "keep one item per image"
                )
        if len(splits) > 1:
            problems.append(
                f"image '{path}' is in {' and '.join(splits)}: an image must be in one split only (data leak); "
                "remove it from all but one"
            )
    return problems


def check_items(
    items: Sequence[Mapping[str, Any]],
    min_size: int = DEFAULT_MIN_SIZE,
    progress: bool = True,
    where: str = "datalist",
    splits: Sequence[str] | None = None,
) -> list[str]:
    """Read every image and mask of ``items`` once and return all problems found, one line each.

    Args:
        items: dicts with an ``image`` path and optionally a ``label`` (mask) path, ``text`` and ``modality``;
            relative paths are taken relative to the current folder.
        min_size: smallest accepted image height and width, in pixels.
        progress: show a progress bar on stderr (only when stderr is a terminal).
        where: name of the collection for messages, e.g. "datalist" or "training".
        splits: the split of each item (same length as ``items``) to find images in two splits; None: all
            items are in ``where``.

    Returns:
        human-readable problems, each naming the file and the fix; empty when the items are fine.
    """
    import torch

    if splits is not None and len(splits) != len(items):
        raise ValueError(f"splits has {len(splits)} entries for {len(items)} items")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-image tensors are small: extra threads only wait on each other (10x slower)
    try:
        return _check_items(items, min_size, progress, splits if splits is not None else [where] * len(items))
    finally:
        torch.set_num_threads(threads)


def _check_items(items: Sequence[Mapping[str, Any]], min_size: int, progress: bool, splits: Sequence[str]) -> list[str]:
    """:func:`check_items` with one split name per item."""
    from collections import Counter

    from tqdm import tqdm

    reader = _Reader()
    problems: list[str] = []
    found: list[tuple[str, str, int]] = []
    counts: dict[str, int] = {}
    done: set[tuple[str, str | None]] = set()
    repeats = Counter(
        os.path.abspath(item["image"])
        for item in items
        if isinstance(item, Mapping) and isinstance(item.get("image"), str) and item["image"]
    )
    seen: dict[str, Any] = {}  # checked images listed more than once (read once, kept for their masks)
    bar = tqdm(items, desc="checking", unit="item", disable=None if progress else True)
    for item, split in zip(bar, splits):
        index = counts[split] = counts.get(split, -1) + 1
        if not isinstance(item, Mapping) or not isinstance(item.get("image"), str) or not item["image"]:
            problems.append(f"item {index} of {split} has no 'image' path: each item needs an image file")
            continue
        path = os.path.abspath(item["image"])
        label = item.get("label")
        if label is not None and (not isinstance(label, str) or not label):
            problems.append(f"image '{path}' has an invalid 'label' entry {label!r}; expected a mask file path")
        label = os.path.abspath(label) if isinstance(label, str) and label else None
        found.append((path, split, index))
        try:
            if "modality" in item:
                check_modality(item["modality"], f"image '{path}'")
            if "text" in item:
                check_text(item["text"], f"image '{path}'")
        except BundleInputError as e:
            problems.append(str(e))
        if (path, label) in done:  # a duplicate (reported below): its files were checked already
            continue
        done.add((path, label))
        if path in seen:
            image = seen[path]
        else:
            image = _read(reader.image, "image", path, "image", problems)
            if image is not None and not _check_image(reader, image, path, min_size, problems):
                image = None  # a broken image: do not compare its mask's size with it
            if repeats[path] > 1:
                seen[path] = image
        if label is not None:
            mask = _read(reader.label, "label", label, "mask", problems)
            if mask is not None:
                _check_mask(reader, mask, image, label, problems)
    return list(dict.fromkeys(problems)) + _duplicates(found)  # a mask shared by two items: one line


def check_splits(
    datalist: Mapping[str, Any], min_size: int = DEFAULT_MIN_SIZE, progress: bool = True
) -> list[str]:
    """:func:`check_items` over every split of ``{split: [items]}``, so that an image in two splits is found too.

    Entries other than training / validation / testing that are not lists of items (``"ct_window": [-1000, 400]``)
    are skipped.
    """
    items, splits = [], []
    for split, entries in datalist.items():
        if isinstance(entries, list) and (split in SPLITS or entries and all(isinstance(e, Mapping) for e in entries)):
            items += entries
            splits += [split] * len(entries)
    return check_items(items, min_size, progress, splits=splits)


def _load_split(path: str, split: str, modality: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Items of one split via :func:`bundle.data.load_datalist`; on an error, item by item so all are found."""
    try:
        return load_datalist(path, split, modality), []
    except BundleInputError as e:
        error = str(e)
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)[split]
    if not isinstance(entries, list) or not entries:
        return [], [error]
    where = f"datalist '{path}'"
    base = os.path.dirname(os.path.abspath(path))
    items, problems = [], []
    data_log = logging.getLogger("bundle.data")
    level = data_log.level
    data_log.setLevel(logging.ERROR)  # not one "no text: default sentence" warning per item
    try:
        for i, entry in enumerate(entries):
            try:
                items += load_datalist({split: [entry]}, split, modality, base_dir=base)
            except BundleInputError as e:  # its message says "item 0 of ... in datalist": give the real place
                problems.append(str(e).replace(f"item 0 of '{split}' in datalist", f"item {i} of '{split}' in {where}"))
    finally:
        data_log.setLevel(level)
    return items, problems or [error]


def check_datalist(
    path: str | os.PathLike,
    splits: Sequence[str] | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    progress: bool = True,
    modality: str = "he",
) -> list[str]:
    """Check every item of a datalist JSON file (see :func:`check_items`); returns all problems, one line each.

    Args:
        path: datalist file; relative image paths are resolved against its folder.
        splits: the splits to check (None: every one of training / validation / testing present).
        min_size: smallest accepted image height and width, in pixels.
        progress: show a progress bar on stderr (only when stderr is a terminal).
        modality: modality of items that name none (the training option ``modality``).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return [f"datalist '{path}' does not exist (option --datalist)"]
    except (OSError, ValueError) as e:
        return [f"datalist '{path}' is not a readable JSON file ({type(e).__name__}: {e})"]
    if not isinstance(data, Mapping):
        return [f"datalist '{path}' must be a JSON object with lists under {', '.join(SPLITS)}"]
    wanted = list(splits) if splits else [s for s in SPLITS if s in data]
    keys = ", ".join(map(str, data)) or "nothing"
    if not wanted:
        return [f"datalist '{path}' has none of the splits {', '.join(SPLITS)} (it has: {keys})"]
    problems: list[str] = []
    items: dict[str, list[dict[str, Any]]] = {}
    for split in wanted:
        if split not in data:
            problems.append(f"datalist '{path}' has no '{split}' list (it has: {keys})")
            continue
        items[split], found = _load_split(path, split, modality)
        problems += found
    return problems + check_splits(items, min_size, progress)


def report(problems: Sequence[str], what: str = "nothing was written") -> int:
    """Print one ``ERROR:`` line per problem and a count on stderr; return the exit status (1, or 0 if none)."""
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found; {what}", file=sys.stderr)
    return 1 if problems else 0


def _min_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"give at least 1 pixel, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description="Check every image and mask of a datalist (readable, 2D, finite, not constant, large enough, "
        "binary masks of their image's size, no duplicates or split leaks) and list all problems.",
    )
    p.add_argument("--datalist", required=True, help="datalist JSON file")
    p.add_argument(
        "--split", action="append", choices=SPLITS, default=None,
        help="split to check (repeat for several; default: every split present)",
    )
    p.add_argument(
        "--min-size", type=_min_size, default=DEFAULT_MIN_SIZE,
        help=f"smallest accepted image height / width in pixels (default {DEFAULT_MIN_SIZE})",
    )
    p.add_argument(
        "--modality", default="he", help="modality of items that name none (default he, as the training option)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    problems = check_datalist(args.datalist, args.split, args.min_size, modality=args.modality)
    if problems:
        return report(problems, "fix them and run the check again")
    with open(args.datalist, encoding="utf-8") as f:
        data = json.load(f)
    entries = [e for s in (args.split or SPLITS) for e in data.get(s, []) if isinstance(e, Mapping)]
    images = len({e["image"] for e in entries})
    masks = len({e["label"] for e in entries if e.get("label")})
    print(f"checked {images} images and {masks} masks in {time.perf_counter() - start:.1f} s: no problems")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
