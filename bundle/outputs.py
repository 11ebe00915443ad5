"""Writing predictions: the mask in the input's family of formats, and an optional contour overlay."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import SaveImage, SaveImaged
from skimage.segmentation import find_boundaries

from .data import IMAGE_SUFFIXES, RASTER_SUFFIXES
from .errors import BundleInputError

__all__ = ["SavePredictiond", "RASTER_SUFFIXES", "overlay_contour"]



def overlay_contour(image: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray, color=(255, 32, 32)) -> np.ndarray:
    """image (C, H, W) in [-1, 1] and mask (1, H, W) -> (3, H, W) uint8 picture with the mask's contour drawn."""
    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    img = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
    rgb = np.clip((img + 1.0) * 127.5, 0, 255).astype(np.uint8)
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)[0] > 0
    edge = find_boundaries(m, mode="inner")
    for c, value in enumerate(color):
        rgb[c][edge] = value
    return rgb


class SavePredictiond(SaveImaged):
    """Save each predicted mask into ``output_dir``, never next to (or over) the user's inputs.

    PNG / JPEG / TIFF inputs give a 0/255 PNG mask ``<name>_seg.png``; NIfTI, DICOM, NRRD and MHA inputs
    give ``<name>_seg.nii.gz`` (0/1, with the input's geometry). With ``overlay`` a PNG picture of the
    input with the mask contour, ``<name>_overlay.png``, is written too. It is a ``SaveImaged`` so MONAI
    Label, which drops ``SaveImaged`` from a bundle's post-processing, never writes these files.

    Args:
        keys: prediction keys (label maps, channel-first).
        output_dir: folder for every output file.
        image_key: the network input (channel-first, in [-1, 1]) drawn under the overlay.
        overlay: also write the contour overlay.
        output_postfix: suffix of the mask file name.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str = "./eval",
        image_key: str = "image",
        overlay: bool = False,
        output_postfix: str = "seg",
    ) -> None:
        common = dict(output_dir=output_dir, separate_folder=False, resample=False, print_log=False)
        super().__init__(keys, output_postfix=output_postfix, output_ext=".nii.gz", output_dtype=np.uint8, **common)
        self.png = SaveImage(output_postfix=output_postfix, output_ext=".png", scale=255, output_dtype=np.uint8, **common)
        self.overlay = (
            SaveImage(output_postfix="overlay", output_ext=".png", output_dtype=np.uint8, **common) if overlay else None
        )
        self.output_dir = os.path.abspath(output_dir)
        self.output_postfix = output_postfix
        self.image_key = image_key

    def _check_target(self, source: str, ext: str) -> None:
        name = os.path.basename(source)
        for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):  # ".nii.gz" before ".nii"
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        target = os.path.join(self.output_dir, f"{name}_{self.output_postfix}{ext}")
        if os.path.abspath(source) == target:
            raise BundleInputError(f"output '{target}' would overwrite the input: choose another output_dir")

    @staticmethod
    def _input_geometry(mask: MetaTensor) -> MetaTensor:
        """The mask (1, H, W) in the input file's own shape and 4x4 affine (e.g. H x W x 1 at the slice's z).

        ``Ensure2Dd`` keeps only the in-plane affine for the network; the reader's ``original_affine`` and
        ``spatial_shape`` still describe the file, so the saved mask overlays the input in any viewer.
        """
        shape, affine = mask.meta.get("spatial_shape"), mask.meta.get("original_affine")
        if shape is None or affine is None:
            return mask
        shape = [int(s) for s in torch.as_tensor(shape).flatten()]  # a tensor once the batch is decollated
        affine = torch.as_tensor(affine, dtype=torch.float64).reshape(-1, 4)
        if affine.shape != (4, 4) or int(np.prod(shape)) != mask[0].numel():
            return mask
        out = MetaTensor(mask.reshape(1, *shape), meta=dict(mask.meta))
        out.affine = affine
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            meta = pred.meta if isinstance(pred, MetaTensor) else {}
            source = str(meta.get("filename_or_obj", ""))
            raster = source.lower().endswith(RASTER_SUFFIXES)
            self._check_target(source, ".png" if raster else ".nii.gz")
            mask = (torch.as_tensor(pred) > 0).to(torch.uint8)
            mask = MetaTensor(mask, meta=dict(meta))
            (self.png if raster else self.saver)(self._input_geometry(mask) if not raster else mask)
            if self.overlay is not None and self.image_key in d:
                picture = overlay_contour(d[self.image_key], mask)
                self.overlay(MetaTensor(torch.from_numpy(picture), meta=dict(meta)))
        return d
