"""Write an LViT / QaTa-COV19-style sentence for every lesion mask of a folder into a CSV or xlsx table.

Each mask (and its lung mask, matched by file stem, when ``--lungs`` is given) is described with
:func:`bundle.sentences.describe_mask`, e.g. "Bilateral pulmonary infection, two infected areas, upper
left lung and lower right lung." Left / right are the patient's sides (radiological convention: the
patient's left is on the image's right); see ``docs/data_preparation.md``.

The table has one row per mask: the mask file name and its sentence. A ``.csv`` output has the header
``image,sentence``; an ``.xlsx`` output is an LViT text table (header ``Image``, ``Description``), so it
can sit beside LViT-layout folders as ``<Split>_text.xlsx``.

Example::

    python scripts/make_sentences.py --masks cxr_covid/lesion --lungs cxr_covid/lungs --out cxr_text.xlsx
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python scripts/make_sentences.py`: make `bundle` and `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.errors import BundleInputError  # noqa: E402
from bundle.sentences import ORIENTATIONS, SENTENCE_MODALITIES, describe_mask  # noqa: E402
from bundle.utils import atomic_write  # noqa: E402
from scripts.common import list_images, listing, run_cli, write_text_table  # noqa: E402

__all__ = ["read_mask", "files_by_stem", "sentences_for_folder", "write_sentence_table", "add_sentence_options", "main"]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as a 2D bool array (any value > 0, in any channel, is foreground)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise BundleInputError(
            f"cannot read mask '{path}' ({type(e).__name__}: {e}); give a PNG / TIFF / BMP mask"
        ) from e
    if arr.ndim == 3:
        arr = (arr[..., :3] > 0).any(axis=-1) if arr.shape[-1] in (2, 4) else (arr > 0).any(axis=-1)
    if arr.ndim != 2:
        raise BundleInputError(f"mask '{path}' has shape {arr.shape}; expected a 2D picture")
    return arr > 0


def files_by_stem(folder: str | os.PathLike, what: str) -> dict[str, Path]:
    """File stem -> path of the images in ``folder``; a missing or empty folder or a repeated stem is an error.

    Args:
        folder: the folder to list (not recursive).
        what: its role for messages, e.g. "mask folder (option --masks)".
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleInputError(f"{what} '{folder}' does not exist")
    out: dict[str, Path] = {}
    for name in list_images(folder):
        stem = Path(name).stem
        if stem in out:
            raise BundleInputError(
                f"{what} '{folder}' holds '{out[stem].name}' and '{name}' with the same stem: files are matched by "
                "stem, keep one of them"
            )
        out[stem] = folder / name
    if not out:
        raise BundleInputError(f"{what} '{folder}' holds no image files (.png, .jpg, .tif, .bmp)")
    return out


def sentences_for_folder(
    masks: str | os.PathLike,
    lungs: str | os.PathLike | None = None,
    modality: str = "cxr",
    orientation: str = "standard",
    min_area: float | None = None,
    log: Callable[[str], Any] | None = None,
) -> list[tuple[str, str]]:
    """(mask file name, sentence) for every mask of a folder, in file-name order.

    Args:
        masks: folder of lesion masks.
        lungs: folder of lung masks with the same stems (every lesion mask needs one), or None.
        modality, orientation, min_area: see :func:`bundle.sentences.describe_mask`.
        log: called with a progress note every 100 masks (None: quiet).
    """
    lesion_files = files_by_stem(masks, "mask folder (option --masks)")
    lung_files = files_by_stem(lungs, "lung-mask folder (option --lungs)") if lungs is not None else None
    if lung_files is not None:
        missing = sorted(set(lesion_files) - set(lung_files))
        if missing:
            raise BundleInputError(
                f"{len(missing)} mask(s) have no lung mask (same stem) in '{lungs}': {listing(missing)}"
            )
    rows = []
    for i, (stem, path) in enumerate(sorted(lesion_files.items(), key=lambda kv: kv[1].name)):
        lesion = read_mask(path)
        lung = None
        if lung_files is not None:
            lung = read_mask(lung_files[stem])
            if lung.shape != lesion.shape:
                raise BundleInputError(
                    f"lung mask '{lung_files[stem]}' is {lung.shape[1]}x{lung.shape[0]} but mask '{path}' is "
                    f"{lesion.shape[1]}x{lesion.shape[0]} (width x height): they must be drawn on the same image"
                )
        rows.append((path.name, describe_mask(lesion, lung, modality, orientation, min_area)))
        if log and (i + 1) % 100 == 0:
            log(f"described {i + 1} of {len(lesion_files)} masks")
    return rows


def write_sentence_table(path: str | os.PathLike, rows: Sequence[tuple[str, str]]) -> str:
    """Write (name, sentence) rows atomically: ``.csv`` with header ``image,sentence``, ``.xlsx`` as an LViT
    text table."""
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".xlsx"):
        raise BundleInputError(f"option --out '{path}': give a .csv or .xlsx file name")
    with atomic_write(path) as tmp:
        if suffix == ".xlsx":
            write_text_table(tmp, rows)
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["image", "sentence"])
                writer.writerows(rows)
    return path


def _min_area(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value:g}")
    return value


def add_sentence_options(p: argparse.ArgumentParser) -> None:
    """The generator's options (shared with ``prepare_masks.py``): --orientation and --min-area."""
    p.add_argument(
        "--orientation",
        choices=tuple(ORIENTATIONS),
        default="standard",
        help="how the stored images relate to the standard display (patient's left on the image's right, "
        "head / anterior up): standard (default), upside_down (flipped top-bottom: swaps upper/lower, not "
        "left/right), mirrored (left/right swapped), rotated_180, transposed (rows and columns exchanged, as "
        "the MedSeg / Inf-Net ct_covid slices), anti_transposed, rotated_90 / rotated_270 (turned clockwise / "
        "counter-clockwise)",
    )
    p.add_argument(
        "--min-area",
        type=_min_area,
        default=None,
        help="ignore lesion areas smaller than this: a fraction of the image if below 1 (default 0.001 = 0.1%%), "
        "else pixels",
    )


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description="Write a QaTa-COV19 / MosMedData+ (LViT) style sentence for every lesion mask of a folder "
        "into a CSV (image,sentence) or an LViT xlsx text table (Image, Description).",
        epilog="Left / right are the patient's sides: the patient's left is on the image's right (PA / AP chest "
        "X-rays, axial CT). Sentences made from ground-truth masks carry their location and count.",
    )
    p.add_argument("--masks", required=True, help="folder of lesion masks (0 = background)")
    p.add_argument("--lungs", default=None, help="folder of lung masks (left + right), matched by file stem")
    p.add_argument("--out", required=True, help="table to write: .csv or .xlsx")
    p.add_argument("--modality", choices=SENTENCE_MODALITIES, default="cxr", help="cxr (default) or ct")
    add_sentence_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)

    def action() -> None:
        if Path(args.out).suffix.lower() not in (".csv", ".xlsx"):
            raise BundleInputError(f"option --out '{args.out}': give a .csv or .xlsx file name")
        rows = sentences_for_folder(args.masks, args.lungs, args.modality, args.orientation, args.min_area, print)
        write_sentence_table(args.out, rows)
        print(f"wrote {len(rows)} sentences to {args.out}")
        for name, text in rows[:3]:
            print(f"  {name}: {text}")

    return run_cli(action)


if __name__ == "__main__":
    raise SystemExit(main())
