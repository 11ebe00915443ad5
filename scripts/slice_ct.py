"""Cut a CT volume and its lesion label into 2D axial slice pairs plus a datalist, keeping Hounsfield units.

Volumes (NIfTI, NRRD, MHA or a DICOM series folder) are read with MONAI ``LoadImage`` (ITK reader) and
reoriented with MONAI ``Orientation`` so that array axes run towards the patient's Left, Posterior and
Superior ("LPS" axis codes). Axial slices are then ``volume[:, :, k]``: the first in-plane axis goes
towards the patient's left, the second towards the back, and ``k`` grows from feet to head.

Conventions used for the generated sentences:

* World coordinates are MONAI's, i.e. RAS+ (x grows towards the patient's Right, y Anterior, z
  Superior); MONAI converts ITK's LPS affine to RAS on reading (``meta["space"] == "RAS"``), and an
  LPS affine (``space == "LPS"``) is converted here. A lesion is in the *right* lung when its centroid's
  RAS x is larger than the body midline's (the body's centre of mass on that slice), else *left*. This
  is the patient's side, not the viewer's: in the radiological display of the ``--preview`` images the
  patient's right lung is on the viewer's left.
* Cranio-caudal position: upper / middle / lower third of the lung field's extent along RAS z (lung
  field = voxels below -400 HU inside the body, small air pockets dropped); the whole volume's extent
  when no lung field is found.
* Any label value > 0 counts as lesion (multi-label maps are merged); lesions are the 8-connected
  components of the slice mask.

Slices are NIfTI: images int16 HU (float32 when the HU are not integers), masks uint8 0/1, each with
its slice's 4x4 affine. ``--window`` is only recorded (``"ct_window"`` in the datalist) and used for the
8-bit ``--preview`` PNGs; it never changes the stored HU.

Example::

    python scripts/slice_ct.py --image lung1_image.nrrd --label lung1_label.nrrd --out slices/lung1 --preview
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python scripts/slice_ct.py`: make `bundle` and `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data import SPLITS, write_datalist  # noqa: E402
from bundle.errors import BundleInputError  # noqa: E402
from scripts.common import run_cli  # noqa: E402

__all__ = [
    "DEFAULT_WINDOW",
    "CTSlice",
    "load_ct_pair",
    "lung_field_z",
    "describe_mask",
    "make_slices",
    "resize_slice",
    "write_slices",
    "staged_output",
    "slice_ct",
    "main",
]

DEFAULT_WINDOW = (-1000.0, 400.0)
BODY_HU = -500.0  # above: tissue (body outline)
LUNG_HU = -400.0  # below, inside the body: lung field
_NUMBERS = ("No", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class CTSlice:
    """One axial slice pair.

    Attributes:
        name: file stem, e.g. ``lung1_z032``.
        index: axial index in the LPS-reoriented volume (grows towards the head).
        image: (X, Y) HU, X towards the patient's left, Y towards the back.
        label: (X, Y) uint8 {0, 1}.
        affine: 4x4 RAS voxel -> world (mm) affine of this slice.
        text: sentence describing the lesions.
    """

    name: str
    index: int
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    text: str


def _volume_stem(path: str) -> str:
    name = Path(path.rstrip("/\\")).name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _ras_affine(img: Any) -> np.ndarray:
    """The image's voxel -> RAS world affine (MONAI stores RAS unless ``meta["space"]`` says LPS)."""
    affine = np.asarray(img.affine, dtype=np.float64)
    if str(img.meta.get("space", "RAS")).upper() == "LPS":
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return affine


def load_ct_pair(image: str, label: str) -> tuple[Any, Any]:
    """Read a CT volume and its label with MONAI's ITK reader, check them, orient both to LPS axis codes.

    Returns:
        (image, label) MetaTensors of shape (1, X, Y, Z), X / Y / Z running towards the patient's left / back /
        head; the label holds 0 / 1 (any value > 0 of the file is lesion).
    """
    from monai.transforms import LoadImage, Orientation

    loader = LoadImage(reader="ITKReader", image_only=True, ensure_channel_first=True)
    orient = Orientation(axcodes="LPS", labels=None)  # labels from meta["space"]
    out = []
    for what, path in (("image", image), ("label", label)):
        if not os.path.exists(path):
            raise BundleInputError(f"CT {what} '{path}' does not exist (option --{what})")
        try:
            vol = loader(path)
        except Exception as e:
            raise BundleInputError(
                f"cannot read CT {what} '{path}' ({type(e).__name__}: {e}); give a NIfTI, NRRD or MHA file or a "
                "folder holding one DICOM series"
            ) from e
        if vol.ndim != 4 or vol.shape[0] != 1 or min(vol.shape[1:]) < 2:
            raise BundleInputError(
                f"CT {what} '{path}' has shape {tuple(vol.shape[1:]) if vol.shape[0] == 1 else tuple(vol.shape)}; "
                "expected one 3D volume (a 2D image or a multi-channel volume cannot be sliced)"
            )
        bad = int((~np.isfinite(vol.numpy())).sum())
        if bad:
            raise BundleInputError(
                f"CT {what} '{path}' has {bad} NaN or Inf voxel(s); replace them (e.g. with -1024 HU, air, in the "
                "image and 0 in the label) and save it again"
            )
        out.append(vol)
    img, lab = out
    if tuple(img.shape) != tuple(lab.shape):
        raise BundleInputError(
            f"label '{label}' has shape {tuple(lab.shape[1:])} but image '{image}' has {tuple(img.shape[1:])}: "
            "the label must be drawn on this very volume"
        )
    if not np.allclose(_ras_affine(img), _ras_affine(lab), atol=1e-2):
        raise BundleInputError(
            f"label '{label}' and image '{image}' have the same size but different geometry (origin, spacing or "
            "direction): resample the label onto the image first"
        )
    values = np.unique(lab.numpy())
    if len(values) > 2:
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        print(f"note: label '{label}' has values {{{shown}}}: every value > 0 counts as lesion")
    hu = img.numpy()
    if hu.min() > -500:
        print(f"warning: image '{image}' has no value below -500 (range {hu.min():g}..{hu.max():g}): is it in HU?")
    lab = (lab > 0).to(dtype=img.dtype)
    return orient(img), orient(lab)


def _body_mask(hu: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool: per axial slice, the largest tissue region with its holes (lungs) filled."""
    from scipy import ndimage

    body = np.zeros(hu.shape, dtype=bool)
    for k in range(hu.shape[2]):
        tissue = ndimage.binary_fill_holes(hu[:, :, k] > BODY_HU)
        labels, n = ndimage.label(tissue)
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            body[:, :, k] = labels == (1 + int(np.argmax(sizes)))
    return body


def lung_field_z(hu: np.ndarray, affine: np.ndarray, body: np.ndarray | None = None) -> tuple[float, float]:
    """RAS z extent (mm, inferior, superior) of the lung field of an (X, Y, Z) HU volume.

    Lung field: voxels below -400 HU inside the body; air regions smaller than a tenth of the largest
    (bowel gas) are dropped. Falls back to the whole volume's extent when none is found.
    """
    from scipy import ndimage

    body = _body_mask(hu) if body is None else body
    lung = body & (hu < LUNG_HU)
    labels, n = ndimage.label(lung)
    ks = np.arange(hu.shape[2])
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
        per_slice = np.isin(labels, keep).sum(axis=(0, 1))
        if sizes.max() >= 1000 or sizes.max() >= 0.001 * hu.size:
            ks = np.flatnonzero(per_slice >= max(20, 0.02 * per_slice.max()))
    z = [float((affine @ np.array([0.0, 0.0, k, 1.0]))[2]) for k in (ks.min(), ks.max())]
    return min(z), max(z)


def _third(z: float, z_range: tuple[float, float]) -> str:
    lo, hi = z_range
    frac = 0.5 if hi - lo < 1e-6 else (z - lo) / (hi - lo)
    return "upper" if frac >= 2 / 3 else "middle" if frac >= 1 / 3 else "lower"


def describe_mask(mask: np.ndarray, affine: np.ndarray, z_range: tuple[float, float], midline_x: float) -> str:
    """Sentence for one axial slice mask.

    Args:
        mask: (X, Y) binary lesion mask of the slice.
        affine: 4x4 voxel -> RAS world affine of the slice (voxel (i, j, 0) lies on it).
        z_range: RAS z extent (mm) of the lung field, see :func:`lung_field_z`.
        midline_x: RAS x (mm) of the body midline on this slice.

    Returns:
        e.g. "Lesion in the lower left lung.", "Two lesions, upper left lung and upper right lung.",
        "No lesion in this slice."
    """
    from skimage.measure import label, regionprops

    regions = regionprops(label(np.asarray(mask) > 0, connectivity=2))
    if not regions:
        return "No lesion in this slice."
    places: list[tuple[int, str]] = []
    for r in regions:
        x, _, z = (affine @ np.array([*r.centroid, 0.0, 1.0]))[:3]
        side = "right" if x > midline_x else "left"
        place = (0 if side == "left" else 1, f"{_third(z, z_range)} {side} lung")
        if place not in places:
            places.append(place)
    names = [p for _, p in sorted(places)]
    n = len(regions)
    if n == 1:
        return f"Lesion in the {names[0]}."
    count = _NUMBERS[n] if n < len(_NUMBERS) else str(n)
    if len(names) == 1:
        return f"{count} lesions in the {names[0]}."
    return f"{count} lesions, {', '.join(names[:-1])} and {names[-1]}."


def make_slices(image: str, label: str, only_lesion: bool = False, prefix: str | None = None) -> list[CTSlice]:
    """Read a CT volume and label (see :func:`load_ct_pair`) and return its axial slices with sentences.

    Args:
        image, label: volume paths (NIfTI, NRRD, MHA or DICOM series folder).
        only_lesion: keep only slices with lesion voxels.
        prefix: file stem of the slices (default: the image file name without extension).
    """
    img, lab = load_ct_pair(image, label)
    hu, mask = img.numpy()[0], lab.numpy()[0] > 0
    affine = _ras_affine(img)
    body = _body_mask(hu)
    z_range = lung_field_z(hu, affine, body)
    centre = np.argwhere(body).mean(0) if body.any() else (np.array(hu.shape) - 1) / 2.0
    integral = bool(np.all(np.round(hu) == hu)) and hu.min() >= -32768 and hu.max() <= 32767
    prefix = prefix or _volume_stem(image)
    width = max(3, len(str(hu.shape[2] - 1)))
    slices = []
    for k in range(hu.shape[2]):
        if only_lesion and not mask[:, :, k].any():
            continue
        slice_affine = affine.copy()
        slice_affine[:3, 3] = (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
        on_slice = np.argwhere(body[:, :, k])
        mid = on_slice.mean(0) if len(on_slice) else centre[:2]
        midline_x = float((slice_affine @ np.array([mid[0], mid[1], 0.0, 1.0]))[0])
        slices.append(
            CTSlice(
                name=f"{prefix}_z{k:0{width}d}",
                index=k,
                image=hu[:, :, k].astype(np.int16 if integral else np.float32),
                label=mask[:, :, k].astype(np.uint8),
                affine=slice_affine,
                text=describe_mask(mask[:, :, k], slice_affine, z_range, midline_x),
            )
        )
    if not slices:
        raise BundleInputError(
            f"label '{label}' has no lesion voxels, so --only-lesion leaves no slice to write; drop --only-lesion "
            "or check that the label belongs to this image"
        )
    return slices


def resize_slice(s: CTSlice, size: int) -> CTSlice:
    """Resample a slice to ``size`` x ``size``: HU bilinear with anti-aliasing, mask nearest; affine updated.

    The sentence is kept (it describes the full-resolution mask).
    """
    import torch
    from monai.transforms import Resize

    scale = np.array(s.image.shape, dtype=np.float64) / size
    image = Resize((size, size), mode="bilinear", anti_aliasing=True)(
        torch.as_tensor(s.image[None], dtype=torch.float32)
    )
    label = Resize((size, size), mode="nearest")(torch.as_tensor(s.label[None], dtype=torch.float32))
    image = np.asarray(image[0])
    image = np.round(image).astype(np.int16) if s.image.dtype == np.int16 else image.astype(np.float32)
    affine = s.affine.copy()
    affine[:3, :2] = s.affine[:3, :2] * scale
    affine[:3, 3] = s.affine[:3, :3] @ np.array([(scale[0] - 1) / 2, (scale[1] - 1) / 2, 0.0]) + s.affine[:3, 3]
    return replace(s, image=image, label=(np.asarray(label[0]) > 0.5).astype(np.uint8), affine=affine)


def _preview(s: CTSlice, window: tuple[float, float]) -> np.ndarray:
    """(rows, cols, 3) uint8 radiological view (patient's right on the viewer's left, anterior up) with
    the lesion outline in red."""
    from scipy import ndimage

    lo, hi = window
    grey = np.clip((s.image.astype(np.float32) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8).T
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    mask = s.label.T > 0
    edge = mask & ~ndimage.binary_erosion(mask)
    rgb[edge] = (255, 0, 0)
    return rgb


def write_slices(
    slices: Sequence[CTSlice],
    folder: str,
    modality: str = "ct",
    window: tuple[float, float] | None = None,
) -> list[dict[str, str]]:
    """Write slices as ``folder/images/<name>.nii.gz`` and ``folder/labels/<name>.nii.gz``.

    Args:
        slices: from :func:`make_slices` (or :func:`resize_slice`).
        folder: output folder (use :func:`staged_output` for an all-or-nothing result).
        modality: datalist modality of the items.
        window: if given, also write ``folder/preview/<name>.png`` windowed to (low, high) HU.

    Returns:
        datalist items with absolute paths.
    """
    import nibabel as nib
    from PIL import Image

    items = []
    for sub in ("images", "labels") + (("preview",) if window else ()):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for s in slices:
        image = os.path.abspath(os.path.join(folder, "images", f"{s.name}.nii.gz"))
        label = os.path.abspath(os.path.join(folder, "labels", f"{s.name}.nii.gz"))
        nib.save(nib.Nifti1Image(s.image, s.affine), image)
        nib.save(nib.Nifti1Image(s.label, s.affine), label)
        if window:
            Image.fromarray(_preview(s, window)).save(os.path.join(folder, "preview", f"{s.name}.png"))
        items.append({"image": image, "label": label, "text": s.text, "modality": modality})
    return items


@contextlib.contextmanager
def staged_output(out_dir: str, replace_all: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside ``out_dir``; its files reach ``out_dir`` only if the block succeeds.

    Files are moved in with ``datalist.json`` files last, so a datalist never points to missing files.
    With ``replace_all`` the old ``out_dir`` is removed first (no stale files); otherwise files are added
    to it, replacing same-named ones. On error the temporary folder is removed and ``out_dir`` is untouched.
    """
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it private; the result should not be
    try:
        yield stage
        if replace_all:
            if os.path.isdir(out_dir):
                shutil.rmtree(out_dir)
            os.replace(stage, out_dir)
            return
        files = [os.path.relpath(os.path.join(d, f), stage) for d, _, fs in os.walk(stage) for f in fs]
        for rel in sorted(files, key=lambda r: (os.path.basename(r) == "datalist.json", r)):
            dest = os.path.join(out_dir, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(os.path.join(stage, rel), dest)
    finally:
        if os.path.isdir(stage):
            shutil.rmtree(stage)


def slice_ct(
    image: str,
    label: str,
    out_dir: str,
    window: tuple[float, float] = DEFAULT_WINDOW,
    only_lesion: bool = False,
    preview: bool = False,
    split: str = "testing",
    size: int | None = None,
    prefix: str | None = None,
) -> dict[str, Any]:
    """Slice a CT volume + label into ``out_dir`` and write ``out_dir/datalist.json`` (all or nothing).

    Args:
        image, label: CT volume and its label (NIfTI, NRRD, MHA, or a DICOM series folder).
        out_dir: output folder (created; same-named files are replaced).
        window: HU window (low, high) recorded as ``"ct_window"`` and used for previews; HU are kept.
        only_lesion: keep only slices with lesion voxels.
        preview: also write 8-bit windowed PNGs under ``out_dir/preview/``.
        split: datalist split the slices go to.
        size: resample each slice to ``size`` x ``size`` (None: keep the scanner resolution).
        prefix: slice file stem (default: the image file name without extension).

    Returns:
        the datalist written (paths absolute).
    """
    low, high = (float(v) for v in window)
    if not low < high:
        raise BundleInputError(f"option --window {low:g},{high:g}: the low HU must be below the high HU")
    if split not in SPLITS:
        raise BundleInputError(f"option --split {split!r}: expected one of {', '.join(SPLITS)}")
    slices = make_slices(image, label, only_lesion, prefix)
    if size is not None:
        if size < 8:
            raise BundleInputError(f"option --size {size}: give at least 8 pixels")
        slices = [resize_slice(s, size) for s in slices]
    with staged_output(out_dir) as stage:
        items = write_slices(slices, stage, window=(low, high) if preview else None)
        datalist: dict[str, Any] = {"ct_window": [low, high], split: items}
        write_datalist(os.path.join(stage, "datalist.json"), datalist)
    out = os.path.abspath(out_dir)
    for item in items:
        for key in ("image", "label"):
            item[key] = os.path.join(out, os.path.relpath(item[key], stage))
    return datalist


def _window(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in HU such as -1000,400, got {text!r}") from None
    return low, high


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description="Cut a CT volume and its lesion label into 2D axial NIfTI slice pairs (HU kept) with an "
        "auto-generated sentence each, and write OUT/datalist.json.",
        epilog="Laterality is the patient's side (RAS world coordinates from the file's affine); every label "
        "value > 0 counts as lesion.",
    )
    p.add_argument("--image", required=True, help="CT volume: NIfTI, NRRD, MHA, or a folder with one DICOM series")
    p.add_argument("--label", required=True, help="lesion label volume on the same grid (any value > 0 = lesion)")
    p.add_argument("--out", required=True, help="output folder (images/, labels/, preview/, datalist.json)")
    p.add_argument(
        "--window",
        type=_window,
        default=DEFAULT_WINDOW,
        metavar="LOW,HIGH",
        help="HU window recorded in the datalist as ct_window and used for --preview (default -1000,400); "
        "the stored slices keep their HU",
    )
    p.add_argument("--only-lesion", action="store_true", help="keep only slices with lesion voxels")
    p.add_argument(
        "--preview", action="store_true", help="also write windowed 8-bit PNGs (radiological view, lesion outlined)"
    )
    p.add_argument("--split", choices=SPLITS, default="testing", help="datalist split of the slices (default testing)")
    p.add_argument("--size", type=int, default=None, help="resample slices to SIZE x SIZE (default: keep resolution)")
    p.add_argument("--prefix", default=None, help="slice file stem (default: image file name without extension)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv[:-1]):  # `--window -1000,400` would read as an option to argparse
        if arg == "--window":
            argv[i : i + 2] = [f"--window={argv[i + 1]}"]
            break
    args = build_parser().parse_args(argv)

    def action() -> None:
        datalist = slice_ct(
            args.image,
            args.label,
            args.out,
            args.window,
            args.only_lesion,
            args.preview,
            args.split,
            args.size,
            args.prefix,
        )
        items = datalist[args.split]
        lesion = sum(t["text"] != "No lesion in this slice." for t in items)
        datalist_path = os.path.join(args.out, "datalist.json")
        print(f"wrote {len(items)} slices ({lesion} with lesion) and {datalist_path} [{args.split}]")
        for text in dict.fromkeys(t["text"] for t in items):
            print(f"  {sum(t['text'] == text for t in items):3d} x {text}")

    return run_cli(action)


if __name__ == "__main__":
    raise SystemExit(main())
