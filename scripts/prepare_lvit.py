"""Convert a dataset in the LViT layout (MoNuSeg, QaTa-COV19, MosMedData+) into a MONAI datalist.

The LViT layout is ``ROOT/{Train,Val,Test}_Folder/{img,labelcol}/`` plus ``<Split>_text.xlsx`` in each
split folder, whose columns ``Image`` (the MASK file name) and ``Description`` (the sentence) give the
text. Masks are named by one of three rules (see :data:`NAMING_RULES`); ``--naming auto`` picks the
rule under which every image has a mask.

Example::

    python scripts/prepare_lvit.py --root /data/MoNuSeg --out /data/MoNuSeg/datalist.json
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/prepare_lvit.py`: make `bundle` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data import DEFAULT_TEXT, MODALITIES, RASTER_SUFFIXES, check_modality, write_datalist  # noqa: E402
from bundle.errors import BundleInputError  # noqa: E402
from scripts.check_dataset import DEFAULT_MIN_SIZE, check_splits, report  # noqa: E402
from scripts.common import list_images, listing, read_text_table, run_cli  # noqa: E402

__all__ = [
    "SPLIT_FOLDERS",
    "NAMING_RULES",
    "IMAGE_SUFFIXES",
    "mask_name",
    "detect_naming",
    "convert_lvit",
    "main",
]

#: LViT split folder prefix -> datalist split.
SPLIT_FOLDERS: dict[str, str] = {"Train": "training", "Val": "validation", "Test": "testing"}

#: Mask file name for an image file name, per dataset.
NAMING_RULES: dict[str, Callable[[str], str]] = {
    "monuseg": lambda name: Path(name).stem + ".png",  # test images are .tif, masks and xlsx say .png
    "qata": lambda name: "mask_" + name,  # QaTa-COV19
    "mosmed": lambda name: name,  # MosMedData+
}


IMAGE_SUFFIXES = RASTER_SUFFIXES  # LViT folders hold 2D pictures only

def mask_name(image_name: str, naming: str) -> str:
    """The mask file name of ``image_name`` under a naming rule ("monuseg", "qata" or "mosmed")."""
    if naming not in NAMING_RULES:
        raise BundleInputError(f"unknown naming {naming!r}; expected one of {', '.join(NAMING_RULES)} or auto")
    return NAMING_RULES[naming](image_name)


def _split_folders(root: Path) -> list[tuple[str, Path]]:
    """(datalist split, split folder) for the LViT split folders present under ``root``."""
    if not root.is_dir():
        raise BundleInputError(f"dataset folder '{root}' does not exist (option --root)")
    found = [
        (split, root / f"{prefix}_Folder")
        for prefix, split in SPLIT_FOLDERS.items()
        if (root / f"{prefix}_Folder").is_dir()
    ]
    if not found:
        raise BundleInputError(
            f"'{root}' has none of Train_Folder, Val_Folder, Test_Folder: point --root at the folder that holds "
            "the LViT split folders"
        )
    for _, folder in found:
        for sub in ("img", "labelcol"):
            if not (folder / sub).is_dir():
                raise BundleInputError(
                    f"split folder '{folder}' has no '{sub}/' sub-folder (LViT layout: img/ and labelcol/)"
                )
    return found


def detect_naming(images: Mapping[Path, Sequence[str]], masks: Mapping[Path, set[str]]) -> str:
    """The naming rule under which every image of every split folder has a mask.

    Args:
        images: split folder -> image file names.
        masks: split folder -> mask file names present in its labelcol/.
    """
    total = sum(len(v) for v in images.values())
    found = {
        rule: sum(mask_name(n, rule) in masks[folder] for folder, names in images.items() for n in names)
        for rule in NAMING_RULES
    }
    complete = [rule for rule, n in found.items() if n == total]
    if complete:
        mappings = {rule: [mask_name(n, rule) for names in images.values() for n in names] for rule in complete}
        if any(m != mappings[complete[0]] for m in mappings.values()):
            raise BundleInputError(
                f"naming rules {', '.join(complete)} all fit the files but give different masks: pass --naming"
            )
        return complete[0]
    best = max(found, key=found.get)
    if found[best] == 0:
        folder, names = next(iter(images.items()))
        tried = ", ".join(f"{rule}: {mask_name(names[0], rule)}" for rule in NAMING_RULES)
        raise BundleInputError(
            f"no image in the dataset has a mask under any naming rule; for '{folder / 'img' / names[0]}' looked for "
            f"labelcol/ files ({tried}). Check the layout or pass --naming"
        )
    return best  # the caller reports the images without a mask


def convert_lvit(
    root: str | os.PathLike,
    modality: str | None = None,
    naming: str = "auto",
    allow_missing_text: bool = False,
    log: Callable[[str], Any] | None = print,
) -> dict[str, list[dict[str, str]]]:
    """Build a datalist from an LViT-layout dataset.

    Args:
        root: folder holding ``Train_Folder`` / ``Val_Folder`` / ``Test_Folder`` (absent splits are skipped).
        modality: "he", "cxr" or "ct"; None: "cxr" for the QaTa naming, else "he".
        naming: "monuseg", "qata", "mosmed" or "auto" (the rule under which every image has a mask).
        allow_missing_text: fill missing sentences with ``DEFAULT_TEXT[modality]`` instead of failing.
        log: where notes go (detected naming, filled sentences); None keeps quiet.

    Returns:
        ``{split: [{"image", "label", "text", "modality"}, ...]}`` with absolute paths.
    """
    root = Path(root).resolve()
    folders = _split_folders(root)
    images: dict[Path, list[str]] = {}
    masks: dict[Path, set[str]] = {}
    for _, folder in folders:
        images[folder] = list_images(folder / "img")
        if not images[folder]:
            raise BundleInputError(f"'{folder / 'img'}' has no image files ({', '.join(IMAGE_SUFFIXES)})")
        masks[folder] = set(list_images(folder / "labelcol"))
    if naming == "auto":
        naming = detect_naming(images, masks)
        if log:
            log(f"mask naming: {naming} (detected)")
    else:
        mask_name("x.png", naming)  # validates the rule name
    if modality is None:
        modality = "cxr" if naming == "qata" else "he"  # MosMed and MoNuSeg names can look alike: no guess
        if log:
            log(f"modality: {modality} (default; pass --modality ct for MosMedData+, cxr for QaTa-COV19)")
    modality = check_modality(modality, "option --modality")

    datalist: dict[str, list[dict[str, str]]] = {}
    missing_text: list[str] = []
    for split, folder in folders:
        xlsx = folder / f"{folder.name.split('_')[0]}_text.xlsx"
        table = read_text_table(xlsx) if xlsx.is_file() else None
        if table is None and not allow_missing_text:
            raise BundleInputError(
                f"text table '{xlsx}' does not exist; add it, or pass --allow-missing-text to use the default "
                f"sentence {DEFAULT_TEXT[modality]!r}"
            )
        owner: dict[str, str] = {}
        absent: list[str] = []
        items = []
        for name in images[folder]:
            mask = mask_name(name, naming)
            if mask in owner:
                raise BundleInputError(
                    f"images '{folder / 'img' / owner[mask]}' and '{folder / 'img' / name}' both map to mask "
                    f"'{folder / 'labelcol' / mask}' (naming {naming}); remove or rename one of them"
                )
            owner[mask] = name
            if mask not in masks[folder]:
                absent.append(f"{name} -> {mask}")
                continue
            text = None if table is None else table.get(mask) or table.get(name)
            if text is None:
                missing_text.append(f"{mask} ({xlsx})")
                text = DEFAULT_TEXT[modality]
            items.append(
                {
                    "image": str(folder / "img" / name),
                    "label": str(folder / "labelcol" / mask),
                    "text": text,
                    "modality": modality,
                }
            )
        if absent:
            raise BundleInputError(
                f"{len(absent)} image(s) in '{folder / 'img'}' have no mask in '{folder / 'labelcol'}' under naming "
                f"{naming}: {listing(absent)}. Add the masks, or pass --naming if the rule is wrong"
            )
        datalist[split] = items
    if missing_text:
        if not allow_missing_text:
            raise BundleInputError(
                f"{len(missing_text)} mask(s) have no sentence in their text table: {listing(missing_text)}. Add the "
                "rows, or pass --allow-missing-text to use the modality's default sentence"
            )
        if log:
            log(f"filled {len(missing_text)} missing sentence(s) with the default {DEFAULT_TEXT[modality]!r}")
    return datalist


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description="Convert an LViT-layout dataset ({Train,Val,Test}_Folder/{img,labelcol}/ + <Split>_text.xlsx) "
        "into a MONAI datalist JSON (Train->training, Val->validation, Test->testing; absent splits are skipped).",
    )
    p.add_argument("--root", required=True, help="folder holding Train_Folder / Val_Folder / Test_Folder")
    p.add_argument("--out", required=True, help="datalist JSON to write (paths inside are relative to its folder)")
    p.add_argument(
        "--modality",
        choices=MODALITIES,
        default=None,
        help="he (H&E), cxr (chest X-ray) or ct; default: cxr when the QaTa-COV19 naming is found, else he "
        "(pass ct for MosMedData+)",
    )
    p.add_argument(
        "--naming",
        choices=(*NAMING_RULES, "auto"),
        default="auto",
        help="mask file naming: monuseg (image stem + .png), qata (mask_ + image name), mosmed (same name as the "
        "image), or auto (the rule under which every image has a mask; default)",
    )
    p.add_argument(
        "--allow-missing-text",
        action="store_true",
        help="use the modality's default sentence for masks without a row in the xlsx (default: error)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip reading every image and mask before writing (see scripts/check_dataset.py); default: check",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=DEFAULT_MIN_SIZE,
        help=f"smallest accepted image height / width in pixels for the check (default {DEFAULT_MIN_SIZE})",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.min_size < 1:
        parser.error(f"argument --min-size: give at least 1 pixel, got {args.min_size}")
    problems: list[str] = []

    def action() -> None:
        datalist = convert_lvit(args.root, args.modality, args.naming, args.allow_missing_text)
        if not args.no_check:
            problems.extend(check_splits(datalist, args.min_size))
            if problems:
                return
        write_datalist(args.out, datalist)
        first = next(iter(datalist.values()))[0]
        counts = ", ".join(f"{split} {len(items)}" for split, items in datalist.items())
        print(f"wrote {args.out}: {counts} items (modality {first['modality']})")

    status = run_cli(action)
    return report(problems, f"nothing was written to {args.out}") or status


if __name__ == "__main__":
    raise SystemExit(main())
