"""Build the small demo data set shipped in ``docs/demo_data`` (the bundle's default training run uses it).

* ``monuseg/``: 8 MoNuSeg training and 4 validation tiles (the first ones by name of LViT's Train_Folder
  and Val_Folder), downscaled from 1000x1000 to 256x256 (image: antialiased bilinear RGB PNG; mask:
  nearest, 0/255 PNG), in the LViT layout with the LViT sentences, plus ``monuseg/datalist.json``.
* ``ct/``: axial slices of the two pyradiomics chest CTs cut with ``scripts/slice_ct.py``: lung2's lesion
  slices (+2 lesion-free ones) for training, lung1's for validation, resampled from 512x512 to 256x256
  (HU bilinear with anti-aliasing, rounded to int16 HU; mask nearest), plus ``ct/datalist.json``.

Provenance and licences: ``docs/data_license.txt``. Needs the development data folder::

    python scripts/make_demo_data.py --shared /work/shared/data --out docs/demo_data
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/make_demo_data.py`: make `bundle` and `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from bundle.data import write_datalist  # noqa: E402
from bundle.errors import BundleInputError  # noqa: E402
from scripts.common import run_cli, write_text_table  # noqa: E402
from scripts.prepare_lvit import convert_lvit  # noqa: E402
from scripts.slice_ct import (
    DEFAULT_WINDOW,
    CTSlice,
    make_slices,
    resize_slice,
    staged_output,
    write_slices,
)  # noqa: E402

__all__ = ["resize_pair", "export_lvit_split", "pick_ct_slices", "make_monuseg_demo", "make_ct_demo", "main"]

SIZE = 256


def resize_pair(
    image: str, mask: str, size: int, crop: tuple[int, int, int, int] | None = None
) -> tuple[Image.Image, Image.Image]:
    """Load an RGB image and its mask, optionally crop (left, top, right, bottom), resize to ``size`` x ``size``.

    The image is resampled bilinearly (PIL antialiases when shrinking), the mask with nearest neighbour
    and kept 0/255.
    """
    img, mask_img = Image.open(image).convert("RGB"), Image.open(mask).convert("L")
    if img.size != mask_img.size:
        raise BundleInputError(f"mask '{mask}' is {mask_img.size} but image '{image}' is {img.size}")
    if crop is not None:
        img, mask_img = img.crop(crop), mask_img.crop(crop)
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    mask_img = mask_img.resize((size, size), Image.Resampling.NEAREST).point(lambda v: 255 if v > 127 else 0)
    return img, mask_img


def export_lvit_split(
    out_root: str | os.PathLike,
    prefix: str,
    items: Sequence[dict[str, Any]],
    size: int,
    crop: tuple[int, int, int, int] | None = None,
    image_suffix: str | None = None,
) -> list[str]:
    """Write datalist items as ``out_root/<prefix>_Folder/{img,labelcol}/`` + ``<prefix>_text.xlsx``.

    Args:
        out_root: dataset folder.
        prefix: "Train", "Val" or "Test".
        items: items with ``image``, ``label`` and ``text`` (e.g. from ``convert_lvit``).
        size: output side length in pixels.
        crop: optional (left, top, right, bottom) box cut before resizing.
        image_suffix: save images with this suffix (e.g. ".tif"); masks keep their names.

    Returns:
        the image files written.
    """
    folder = Path(out_root) / f"{prefix}_Folder"
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "labelcol").mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for item in items:
        name = Path(item["image"]).name
        if image_suffix:
            name = Path(name).stem + image_suffix
        img, mask = resize_pair(item["image"], item["label"], size, crop)
        img.save(folder / "img" / name)
        mask.save(folder / "labelcol" / Path(item["label"]).name)
        rows.append((Path(item["label"]).name, item["text"]))
        written.append(str(folder / "img" / name))
    write_text_table(folder / f"{prefix}_text.xlsx", rows)
    return written


def pick_ct_slices(slices: Sequence[CTSlice], negatives: int = 2, gap: int = 3) -> list[CTSlice]:
    """All lesion slices plus up to ``negatives`` lesion-free ones ``gap`` slices below / above the lesion."""
    lesion = [s.index for s in slices if s.label.any()]
    if not lesion:
        raise BundleInputError("the CT label has no lesion voxels: nothing to pick for the demo")
    by_index = {s.index: s for s in slices}
    wanted = set(lesion)
    for k in (min(lesion) - gap, max(lesion) + gap)[:negatives]:
        if k in by_index and not by_index[k].label.any():
            wanted.add(k)
    return [by_index[k] for k in sorted(wanted)]


def make_monuseg_demo(shared: Path, out: Path, n_train: int = 8, n_val: int = 4, size: int = SIZE) -> dict[str, Any]:
    """Write ``out/monuseg`` (LViT layout + datalist.json) from ``shared/monuseg``; returns the datalist."""
    source = convert_lvit(shared / "monuseg", "he", log=None)
    with staged_output(str(out / "monuseg"), replace_all=True) as stage:
        export_lvit_split(stage, "Train", source["training"][:n_train], size)
        export_lvit_split(stage, "Val", source["validation"][:n_val], size)
        datalist = convert_lvit(stage, "he", log=None)
        write_datalist(os.path.join(stage, "datalist.json"), datalist)
    return datalist


def make_ct_demo(shared: Path, out: Path, size: int = SIZE) -> dict[str, Any]:
    """Write ``out/ct`` (NIfTI slices + datalist.json) from ``shared/ct_lung``; returns the datalist."""
    datalist: dict[str, Any] = {"ct_window": list(DEFAULT_WINDOW)}
    with staged_output(str(out / "ct"), replace_all=True) as stage:
        for volume, split in (("lung2", "training"), ("lung1", "validation")):
            slices = make_slices(
                str(shared / "ct_lung" / f"{volume}_image.nrrd"),
                str(shared / "ct_lung" / f"{volume}_label.nrrd"),
                prefix=volume,
            )
            picked = pick_ct_slices(slices)
            resized = [resize_slice(s, size) for s in picked]
            for before, after in zip(picked, resized):
                if before.label.any() != after.label.any():
                    raise BundleInputError(f"slice {after.name}: the lesion vanished when resampling to {size}")
            datalist[split] = write_slices(resized, stage)
        write_datalist(os.path.join(stage, "datalist.json"), datalist)
    return datalist


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description="Build docs/demo_data (MoNuSeg 256x256 tiles and CT slices) from the development data."
    )
    p.add_argument("--shared", required=True, help="development data folder with monuseg/ and ct_lung/")
    p.add_argument(
        "--out",
        default="docs/demo_data",
        help="output folder (default docs/demo_data); its monuseg/ and ct/ are replaced",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)

    def action() -> None:
        shared, out = Path(args.shared), Path(args.out)
        for name, datalist in (("monuseg", make_monuseg_demo(shared, out)), ("ct", make_ct_demo(shared, out))):
            counts = ", ".join(f"{k} {len(v)}" for k, v in datalist.items() if k in ("training", "validation"))
            print(f"wrote {out / name}: {counts} items, {_size(out / name) / 1e6:.2f} MB")
        print(f"total {_size(out) / 1e6:.2f} MB in {out}")

    return run_cli(action)


if __name__ == "__main__":
    raise SystemExit(main())
