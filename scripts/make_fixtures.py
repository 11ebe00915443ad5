"""Build the small committed test fixtures in ``tests/data`` from the development data (not run by tests).

* ``lvit_tiny/``: MoNuSeg in the LViT layout, 64x64 RGB PNG (a 256x256 centre crop, downscaled 4x) with
  0/255 masks and the real LViT sentences: Train_Folder (2), Val_Folder (1), and Test_Folder (1, image
  saved as ``.tif`` while mask and xlsx say ``.png``: MoNuSeg's naming quirk).
* ``ct_tiny/``: ``lung2`` cropped to the 16 slices around its lesion and averaged 8x8 in-plane
  (16 x 64 x 64, full field of view, int16 HU; label: lesion where any voxel of the block was lesion),
  NRRD in LPS space with the original's geometry.
* ``cxr_monochrome1.dcm``: the pydicom-data chest radiograph, centre crop downscaled to 64 x 60,
  still 16-bit (BitsStored 15) and MONOCHROME1.

Licences: ``tests/data/README.md``. Run from the bundle root::

    python scripts/make_fixtures.py --shared /work/shared/data --out tests/data
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python scripts/make_fixtures.py`: make `bundle` and `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.utils import atomic_write  # noqa: E402
from scripts.make_demo_data import export_lvit_split  # noqa: E402
from scripts.common import run_cli  # noqa: E402
from scripts.prepare_lvit import convert_lvit  # noqa: E402
from scripts.slice_ct import staged_output  # noqa: E402

__all__ = ["make_lvit_tiny", "make_ct_tiny", "make_dicom_tiny", "main"]

CROP = (372, 372, 628, 628)  # centre 256x256 of a 1000x1000 MoNuSeg tile


def make_lvit_tiny(shared: Path, out: Path, size: int = 64) -> None:
    """Write ``out/lvit_tiny`` (Train 2, Val 1, Test 1 as .tif) from ``shared/monuseg``."""
    source = convert_lvit(shared / "monuseg", "he", log=None)
    with staged_output(str(out / "lvit_tiny"), replace_all=True) as stage:
        export_lvit_split(stage, "Train", source["training"][:2], size, CROP)
        export_lvit_split(stage, "Val", source["validation"][:1], size, CROP)
        export_lvit_split(stage, "Test", source["validation"][1:2], size, CROP, image_suffix=".tif")


def make_ct_tiny(shared: Path, out: Path, slices: int = 16, factor: int = 8) -> None:
    """Write ``out/ct_tiny/lung2_{image,label}.nrrd``: ``slices`` slices around the lesion, ``factor``x smaller."""
    import itk

    image = itk.imread(str(shared / "ct_lung" / "lung2_image.nrrd"))
    label = itk.imread(str(shared / "ct_lung" / "lung2_label.nrrd"))
    hu, lab = itk.array_view_from_image(image), itk.array_view_from_image(label)  # (Z, Y, X)
    zs = np.flatnonzero(lab.any(axis=(1, 2)))
    z0 = max(0, int(zs.min() + zs.max() + 1 - slices) // 2)
    z, y, x = slices, hu.shape[1] // factor, hu.shape[2] // factor
    hu = hu[z0 : z0 + z, : y * factor, : x * factor].astype(np.float32)
    hu = np.round(hu.reshape(z, y, factor, x, factor).mean(axis=(2, 4))).astype(np.int16)
    lab = (lab[z0 : z0 + z, : y * factor, : x * factor].reshape(z, y, factor, x, factor) > 0).any(axis=(2, 4))
    direction = np.asarray(image.GetDirection())
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    new_spacing = spacing * np.array([factor, factor, 1.0])
    # first voxel centre: start of slice z0, shifted to the centre of the first factor x factor block
    origin = np.asarray(image.TransformIndexToPhysicalPoint([0, 0, z0]), dtype=np.float64)
    origin = origin + direction @ (spacing * np.array([(factor - 1) / 2, (factor - 1) / 2, 0.0]))
    with staged_output(str(out / "ct_tiny"), replace_all=True) as stage:
        for name, arr in (("lung2_image.nrrd", hu), ("lung2_label.nrrd", lab.astype(np.uint8))):
            img = itk.image_from_array(np.ascontiguousarray(arr))
            img.SetSpacing(new_spacing.tolist())
            img.SetOrigin(origin.tolist())
            img.SetDirection(itk.matrix_from_array(direction))
            itk.imwrite(img, str(Path(stage) / name), compression=True)


def make_dicom_tiny(shared: Path, out: Path, rows: int = 64, cols: int = 60) -> None:
    """Write ``out/cxr_monochrome1.dcm``: centre crop of the MONOCHROME1 radiograph, block-averaged to rows x cols."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(str(shared / "misc" / "cxr_RG1_UNCI.dcm"))
    pixels = ds.pixel_array.astype(np.float64)  # (1955, 1841) uint16, MONOCHROME1
    f = min(pixels.shape[0] // rows, pixels.shape[1] // cols)
    r0, c0 = (pixels.shape[0] - rows * f) // 2, (pixels.shape[1] - cols * f) // 2
    small = pixels[r0 : r0 + rows * f, c0 : c0 + cols * f].reshape(rows, f, cols, f).mean(axis=(1, 3))
    small = np.round(small).astype(np.uint16)
    new = copy.deepcopy(ds)
    new.Rows, new.Columns = rows, cols
    new.PixelData = small.tobytes()
    new.SOPInstanceUID = new.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    new.ImageComments = f"test fixture: centre crop of pydicom-data CR RG1_UNCI, block-averaged {f}x{f}"
    new.DerivationDescription = "cropped and downscaled for tests (lossy)"
    with atomic_write(str(out / "cxr_monochrome1.dcm")) as tmp:
        new.save_as(tmp, enforce_file_format=True)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Build the small test fixtures in tests/data from the development data.")
    p.add_argument("--shared", required=True, help="development data folder with monuseg/, ct_lung/ and misc/")
    p.add_argument("--out", default="tests/data", help="fixture folder (default tests/data)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)

    def action() -> None:
        shared, out = Path(args.shared), Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        make_lvit_tiny(shared, out)
        make_ct_tiny(shared, out)
        make_dicom_tiny(shared, out)
        total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"wrote fixtures to {out}: {total / 1e3:.0f} kB")

    return run_cli(action)


if __name__ == "__main__":
    raise SystemExit(main())
