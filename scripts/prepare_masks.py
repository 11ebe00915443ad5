"""Convert "image folder + mask folder" (+ lung masks, + a metadata CSV) into a MONAI datalist with a
patient-grouped training / validation (/ testing) split.

Images, masks and lung masks are matched by file stem (``img/a.png`` <-> ``lesion/a.png``); a file
without its partner is an error naming it. Items are ``{"image", "label", "text", "modality"}`` plus
``"lung"`` (the lung-mask path, with ``--lungs``) and ``"patient"`` (the group, with ``--csv``).

The split never puts one patient on two sides: images are grouped by the CSV's ``--group-column``
(rows matched to images by ``--id-column`` = image stem; without a CSV each image is its own group),
the groups are shuffled with ``--seed`` and dealt, largest first, to the split furthest below its
target share (``--val-fraction``, ``--test-fraction``, the rest training).

Sentences (``--text``):

* ``generated``: from the lesion mask (and lung mask) with :func:`bundle.sentences.describe_mask`, e.g.
  "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung." (patient's
  sides; ``--orientation`` for data stored flipped or rotated);
* ``notes``: the CSV's ``--notes-column`` (an empty cell is an error unless ``--notes-fallback`` names
  what to use instead);
* ``constant``: one sentence for all, ``--constant-text`` (default the modality's default sentence).

Before anything is written every image and mask is read and checked (``scripts/check_dataset.py``); any
problem is printed as ``ERROR: ...`` and nothing is written (exit status 1). ``--no-check`` skips it.

Example::

    python scripts/prepare_masks.py --images cxr_covid/img --masks cxr_covid/lesion --lungs cxr_covid/lungs \\
        --csv cxr_covid/meta.csv --group-column patientid --modality cxr --text generated \\
        --val-fraction 0.3 --out bench/cxr/datalist.json
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/prepare_masks.py`: make `bundle` and `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data import DEFAULT_TEXT, MODALITIES, check_modality, write_datalist  # noqa: E402
from bundle.errors import BundleInputError  # noqa: E402
from bundle.sentences import describe_mask  # noqa: E402
from scripts.common import listing, run_cli  # noqa: E402
from scripts.make_sentences import add_sentence_options, files_by_stem, read_mask  # noqa: E402

__all__ = [
    "TEXT_SOURCES",
    "match_files",
    "read_metadata",
    "grouped_split",
    "convert_masks",
    "check_before_writing",
    "main",
]

TEXT_SOURCES = ("generated", "notes", "constant")


def match_files(
    images: str | os.PathLike, masks: str | os.PathLike, lungs: str | os.PathLike | None = None
) -> list[tuple[str, Path, Path, Path | None]]:
    """(stem, image, mask, lung mask or None) for every image, sorted by stem.

    Every image needs a mask (and a lung mask with ``lungs``) of the same stem and every mask an image;
    anything unmatched is one error listing all of it.
    """
    image_files = files_by_stem(images, "image folder (option --images)")
    mask_files = files_by_stem(masks, "mask folder (option --masks)")
    lung_files = files_by_stem(lungs, "lung-mask folder (option --lungs)") if lungs is not None else None
    lung_stems = set(lung_files) if lung_files is not None else set(image_files)
    problems = []
    for what, stems, files, where in (
        ("image(s) have no mask", set(image_files) - set(mask_files), image_files, masks),
        ("mask(s) have no image", set(mask_files) - set(image_files), mask_files, images),
        ("image(s) have no lung mask", set(image_files) - lung_stems, image_files, lungs),
        ("lung mask(s) have no image", lung_stems - set(image_files), lung_files, images),
    ):
        if stems:
            names = [files[stem].name for stem in sorted(stems)]
            problems.append(f"{len(names)} {what} of the same file stem in '{where}': {listing(names)}")
    if problems:
        raise BundleInputError("; ".join(problems) + ". Files are matched by stem: add or remove the files")
    return [
        (stem, image_files[stem], mask_files[stem], lung_files[stem] if lung_files is not None else None)
        for stem in sorted(image_files)
    ]


def read_metadata(
    path: str | os.PathLike, id_column: str = "id", columns: Mapping[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """Rows of a metadata CSV keyed by ``id_column`` (cells stripped); ids must be unique.

    Args:
        path: the CSV file (UTF-8, header row).
        id_column: the column holding the image file stem.
        columns: further columns that must exist -> the option that named them (for the error message).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BundleInputError(f"metadata CSV '{path}' does not exist (option --csv)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise BundleInputError(
            f"cannot read metadata CSV '{path}' ({type(e).__name__}: {e}); save it as UTF-8 CSV"
        ) from e
    for column, option in {id_column: "--id-column", **(columns or {})}.items():
        if column not in header:
            raise BundleInputError(
                f"metadata CSV '{path}' has no column '{column}' (option {option}); its columns are {header}"
            )
    table: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        key = (row.get(id_column) or "").strip()
        if not key:
            continue
        if key in table:
            raise BundleInputError(
                f"metadata CSV '{path}' lists {id_column} '{key}' twice (second time on line {line})"
            )
        table[key] = {k: (v or "").strip() for k, v in row.items() if k is not None}
    return table


def grouped_split(
    groups: Sequence[str], val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[int]]:
    """Indices of items per split such that items of one group always share a split.

    Args:
        groups: the group (patient) of each item.
        val_fraction, test_fraction: target shares of the items in validation / testing (the rest: training).
        seed: the shuffle of the groups (the same seed and groups give the same split).

    Returns:
        ``{"training": [...], "validation": [...], "testing": [...]}`` with the splits whose fraction is > 0.
    """
    for name, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= value < 1:
            raise BundleInputError(f"option {name} {value:g} must be at least 0 and below 1")
    if val_fraction + test_fraction >= 1:
        raise BundleInputError(
            f"options --val-fraction {val_fraction:g} + --test-fraction {test_fraction:g} leave no training data"
        )
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    n = len(groups)
    wanted = {"validation": val_fraction, "testing": test_fraction}
    target = {s: max(1, round(f * n)) for s, f in wanted.items() if f > 0}
    target = {"training": n - sum(target.values()), **target}
    if len(target) > len(members) or target["training"] < 1:
        raise BundleInputError(
            f"{n} item(s) in {len(members)} group(s) cannot fill the splits {', '.join(target)}: lower "
            "--val-fraction / --test-fraction or add data"
        )
    keys = sorted(members)
    random.Random(seed).shuffle(keys)
    keys.sort(key=lambda k: -len(members[k]))  # stable: equal sizes keep the shuffled order
    out: dict[str, list[int]] = {s: [] for s in target}
    for k in keys:
        empty = [s for s in out if not out[s]]
        # first give every split one group, then deal to the split furthest below its target
        split = max(empty or out, key=lambda s: (target[s] - len(out[s])) / target[s])
        out[split].extend(members[k])
    return {s: sorted(v) for s, v in out.items()}


def _sentence(
    mode: str,
    stem: str,
    mask: Path,
    lung: Path | None,
    row: Mapping[str, str] | None,
    opts: Mapping[str, Any],
) -> str:
    """The sentence of one item under ``mode`` ("generated", "notes" or "constant")."""
    if mode == "constant":
        return opts["constant_text"]
    if mode == "notes":
        note = " ".join((row or {}).get(opts["notes_column"], "").split())
        if note:
            return note
        fallback = opts.get("notes_fallback")
        if fallback is None:
            raise BundleInputError(
                f"image '{stem}' has an empty '{opts['notes_column']}' in the metadata CSV; fill it, or pass "
                "--notes-fallback generated (or constant) for such items"
            )
        return _sentence(fallback, stem, mask, lung, row, opts)
    lesion = read_mask(mask)
    lungs = None
    if lung is not None:
        lungs = read_mask(lung)
        if lungs.shape != lesion.shape:
            raise BundleInputError(
                f"lung mask '{lung}' is {lungs.shape[1]}x{lungs.shape[0]} but mask '{mask}' is "
                f"{lesion.shape[1]}x{lesion.shape[0]} (width x height): they must be drawn on the same image"
            )
    return describe_mask(lesion, lungs, opts["modality"], opts["orientation"], opts["min_area"])


def convert_masks(
    images: str | os.PathLike,
    masks: str | os.PathLike,
    lungs: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    modality: str = "cxr",
    text: str = "generated",
    group_column: str = "patientid",
    id_column: str = "id",
    notes_column: str = "clinical_notes",
    notes_fallback: str | None = None,
    constant_text: str | None = None,
    orientation: str = "standard",
    min_area: float | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, list[dict[str, str]]]:
    """Build a patient-grouped datalist from image / mask (/ lung-mask) folders; see the module docstring.

    Returns:
        ``{split: [{"image", "label", "text", "modality"[, "lung"][, "patient"]}, ...]}``, absolute paths.
    """
    modality = check_modality(modality, "option --modality")
    if text not in TEXT_SOURCES:
        raise BundleInputError(f"option --text {text!r}: expected one of {', '.join(TEXT_SOURCES)}")
    if notes_fallback is not None and notes_fallback not in ("generated", "constant"):
        raise BundleInputError(f"option --notes-fallback {notes_fallback!r}: expected generated or constant")
    if text == "notes" and csv_path is None:
        raise BundleInputError("--text notes reads the sentences from the metadata CSV: pass --csv")
    if constant_text is not None and not constant_text.strip():
        raise BundleInputError("option --constant-text is empty: give a sentence, or leave it out for the default")
    if "generated" in (text, notes_fallback) and modality not in ("cxr", "ct"):
        raise BundleInputError(
            f"--text generated describes lung lesions (cxr, ct), not modality {modality!r}: "
            "use --text notes or constant"
        )
    pairs = match_files(images, masks, lungs)
    table = None
    if csv_path is not None:
        wanted = {group_column: "--group-column", **({notes_column: "--notes-column"} if text == "notes" else {})}
        table = read_metadata(csv_path, id_column, wanted)
        absent = [stem for stem, *_ in pairs if stem not in table]
        if absent:
            raise BundleInputError(
                f"{len(absent)} image(s) have no row in '{csv_path}' (column {id_column} = image file stem): "
                f"{listing(absent)}"
            )
        no_group = [stem for stem, *_ in pairs if not table[stem][group_column]]
        if no_group:
            raise BundleInputError(
                f"{len(no_group)} image(s) have an empty '{group_column}' in '{csv_path}': {listing(no_group)}; "
                "fill it (the split keeps each patient on one side)"
            )
    opts = {
        "modality": modality,
        "orientation": orientation,
        "min_area": min_area,
        "notes_column": notes_column,
        "notes_fallback": notes_fallback,
        "constant_text": (constant_text or DEFAULT_TEXT[modality]).strip(),
    }
    items = []
    for stem, image, mask, lung in pairs:
        row = table[stem] if table is not None else None
        item = {
            "image": str(image.resolve()),
            "label": str(mask.resolve()),
            "text": _sentence(text, stem, mask, lung, row, opts),
            "modality": modality,
        }
        if orientation != "standard":  # RandDihedralTextd maps its flips through it (bundle/dihedral.py)
            item["orientation"] = orientation
        if lung is not None:
            item["lung"] = str(lung.resolve())
        if row is not None:
            item["patient"] = row[group_column]
        items.append(item)
    groups = [item.get("patient", f"image:{stem}") for item, (stem, *_) in zip(items, pairs)]
    split = grouped_split(groups, val_fraction, test_fraction, seed)
    return {name: [items[i] for i in indices] for name, indices in split.items()}


def check_before_writing(
    datalist: Mapping[str, Sequence[Mapping[str, Any]]], min_size: int = 32, progress: bool = True
) -> list[str]:
    """Problems found by ``scripts.check_dataset.check_items`` in every item of ``datalist`` (one line each)."""
    from scripts.check_dataset import check_items  # local: the check reads every file (and imports MONAI)

    return check_items([item for items in datalist.values() for item in items], min_size=min_size, progress=progress)


def _relative_lungs(datalist: dict[str, list[dict[str, str]]], out: str) -> dict[str, list[dict[str, str]]]:
    """The datalist with ``lung`` paths relative to ``out``'s folder (``write_datalist`` does image / label)."""
    base = os.path.dirname(os.path.abspath(out))
    return {
        split: [{**item, "lung": os.path.relpath(item["lung"], base)} if "lung" in item else item for item in items]
        for split, items in datalist.items()
    }


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.2, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description="Convert an image folder + mask folder (+ lung masks, + metadata CSV) into a MONAI datalist "
        "with a patient-grouped split and a sentence per image.",
        epilog="Exit status: 0 written, 1 the dataset check found problems (nothing written), 2 bad input or "
        "options. Sentences generated from ground-truth masks carry their location and count.",
    )
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--masks", required=True, help="lesion mask folder (same file stems as the images)")
    p.add_argument("--lungs", default=None, help="lung mask folder (same stems); used by --text generated")
    p.add_argument("--csv", default=None, help="metadata CSV with one row per image (groups, notes)")
    p.add_argument("--id-column", default="id", help="CSV column holding the image file stem (default id)")
    p.add_argument("--group-column", default="patientid", help="CSV column of the patient (default patientid)")
    p.add_argument("--out", required=True, help="datalist JSON to write (paths inside relative to its folder)")
    p.add_argument("--modality", choices=MODALITIES, required=True, help="cxr, ct or he")
    p.add_argument("--text", choices=TEXT_SOURCES, default="generated", help="sentence source (default generated)")
    p.add_argument("--notes-column", default="clinical_notes", help="CSV column for --text notes")
    p.add_argument(
        "--notes-fallback",
        choices=("generated", "constant"),
        default=None,
        help="with --text notes: sentence for items whose notes are empty (default: error)",
    )
    p.add_argument("--constant-text", default=None, help="sentence for --text constant (default: the modality's)")
    add_sentence_options(p)
    p.add_argument("--val-fraction", type=_fraction, default=0.2, help="share of images in validation (0.2)")
    p.add_argument("--test-fraction", type=_fraction, default=0.0, help="share of images in testing (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the grouped split (default 0)")
    p.add_argument("--min-size", type=int, default=32, help="smallest accepted image side for the check (32)")
    p.add_argument("--no-check", action="store_true", help="skip reading and checking every file before writing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.min_size < 1:
        parser.error(f"argument --min-size: give at least 1 pixel, got {args.min_size}")
    status = 0

    def action() -> None:
        nonlocal status
        datalist = convert_masks(
            args.images, args.masks, args.lungs, args.csv, args.modality, args.text, args.group_column,
            args.id_column, args.notes_column, args.notes_fallback, args.constant_text, args.orientation,
            args.min_area, args.val_fraction, args.test_fraction, args.seed,
        )  # fmt: skip
        if not args.no_check:
            problems = check_before_writing(datalist, args.min_size)
            if problems:
                for problem in problems:
                    print(f"ERROR: {problem}", file=sys.stderr)
                print(f"{len(problems)} problem(s) found; nothing was written", file=sys.stderr)
                status = 1
                return
        write_datalist(args.out, _relative_lungs(datalist, args.out))
        counts = ", ".join(
            f"{split} {len(items)} ({len({i.get('patient', i['image']) for i in items})} groups)"
            for split, items in datalist.items()
        )
        print(f"wrote {args.out}: {counts}; text {args.text}, modality {args.modality}")
        for item in datalist["training"][:2]:
            print(f"  {Path(item['image']).name}: {item['text']}")

    return run_cli(action) or status


if __name__ == "__main__":
    raise SystemExit(main())
