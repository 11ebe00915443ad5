"""Sentences in the style of LViT's QaTa-COV19 / MosMedData+ annotations, made from a lesion mask.

LViT (Li et al., IEEE TMI 2024) annotated every QaTa-COV19 chest X-ray and MosMedData+ CT slice with a
sentence such as "Bilateral pulmonary infection, two infected areas, upper left lung and upper right
lung.": laterality, the number of infected areas and where they are. :func:`describe_mask` writes the
same kind of sentence from a binary lesion mask (and a lung mask where there is one):

* "Unilateral pulmonary infection, one infected area, lower right lung."
* "Bilateral pulmonary infection, three infected areas, middle left lung and lower right lung."
  (several areas in one place name that place once; places are listed left lung first, then right,
  each upper, middle, lower)
* "No pulmonary infection." for an empty mask.

Counts are "one" ... "ten" in words, then digits ("12 infected areas").

Infected areas are the 8-connected components of the lesion mask; components smaller than ``min_area``
(default 0.1% of the image) are specks and are ignored.

**Radiological convention.** Chest X-rays (PA and AP) and axial CT slices are displayed with the
patient's left on the viewer's right. A lesion in the right half of a standard-orientation image is
therefore in the patient's LEFT lung, and "left" / "right" in every sentence are the patient's sides.

**Zones.** "upper" / "middle" / "lower" are the top / middle / bottom third of the image rows in the
standard display:

* chest X-ray: the cranio-caudal upper, middle and lower lung zones of radiology reports;
* axial CT: in-plane position, i.e. the anterior (ventral) / middle / posterior (dorsal) third of the
  lung in a slice displayed anterior side up. A single 2D slice carries no cranio-caudal position, so
  the words describe where the lesion sits in the displayed picture, as MosMedData+'s LViT sentences do
  (their annotators wrote them while looking at the slices). This differs from
  ``scripts/slice_ct.py``, which has the whole volume and uses cranio-caudal thirds of the lung field.

**With a lung mask** it is split into its two largest connected components (the one whose centroid is
further right in the standard display is the patient's left lung; a mask with a single component is cut
at its bounding box's middle column). Each infected area goes to the lung it overlaps most (no overlap:
the lung with the nearest centroid), and its zone is its centroid row within that lung's own vertical
extent, in thirds. **Without a lung mask** the side is the image half holding most of the area's pixels
and the zone is the centroid row in thirds of the image height.

**Orientation.** Data stored differently from the standard display is described as if it were
re-oriented first; ``orientation`` names how the stored picture relates to the standard view (see
:data:`ORIENTATIONS`). "upside_down" (a vertical flip) swaps upper and lower but NOT left and right; for an
axial CT slice it swaps anterior and posterior. "mirrored" (a horizontal flip) swaps left and right;
"rotated_180" swaps both; "transposed" (rows and columns exchanged) is how the ct_covid (MedSeg /
Inf-Net) slices are stored: patient's right at the top, anterior on the left.

**Vocabulary.** Every location word written is one of :data:`LOCATION_WORDS` ("left", "right", "upper",
"middle", "lower") and nothing else names a place, so a transform that flips an image can rewrite the
sentence by swapping left/right or upper/lower.

Sentences made from the ground-truth mask carry its location and count; LViT's annotations do the same
(people wrote them while looking at the image), so benchmark numbers obtained with them measure a model
that is given that information.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from .errors import BundleInputError

__all__ = [
    "LOCATION_WORDS",
    "SIDES",
    "ZONES",
    "ORIENTATIONS",
    "SENTENCE_MODALITIES",
    "EMPTY_SENTENCE",
    "DEFAULT_MIN_AREA",
    "count_word",
    "to_standard",
    "split_lungs",
    "lesion_places",
    "format_sentence",
    "describe_mask",
    "places_in_sentence",
    "refer_to_side",
]

#: The only words of a sentence that name a place (a flip transform swaps left/right, upper/lower).
LOCATION_WORDS: tuple[str, ...] = ("left", "right", "upper", "middle", "lower")
SIDES: tuple[str, ...] = ("left", "right")  # patient's sides, listed in this order
ZONES: tuple[str, ...] = ("upper", "middle", "lower")  # top to bottom third of the standard display

#: How the stored array relates to the standard display -> function turning it into the standard display.
ORIENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "standard": lambda a: a,
    "upside_down": lambda a: a[::-1, :],  # stored = standard flipped top <-> bottom
    "mirrored": lambda a: a[:, ::-1],  # stored = standard flipped left <-> right
    "rotated_180": lambda a: a[::-1, ::-1],
    "transposed": lambda a: a.T,  # stored rows = standard columns (ct_covid / MedSeg slices)
    "anti_transposed": lambda a: a[::-1, ::-1].T,
    "rotated_90": lambda a: np.rot90(a, 1),  # stored = standard turned 90 degrees clockwise
    "rotated_270": lambda a: np.rot90(a, -1),  # stored = standard turned 90 degrees counter-clockwise
}

#: Modalities the generator writes sentences for (lung lesions); H&E has none.
SENTENCE_MODALITIES: tuple[str, ...] = ("cxr", "ct")
#: The sentence for a mask without any infected area, per modality.
EMPTY_SENTENCE: dict[str, str] = {"cxr": "No pulmonary infection.", "ct": "No pulmonary infection."}
#: Default speck threshold: areas below this fraction of the image are ignored.
DEFAULT_MIN_AREA = 0.001

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def count_word(n: int) -> str:
    """``n`` as a word for 0..10 ("one" ... "ten"), else digits."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _check_orientation(orientation: str) -> None:
    if orientation not in ORIENTATIONS:
        raise BundleInputError(f"unknown orientation {orientation!r}; expected one of {', '.join(ORIENTATIONS)}")


def to_standard(mask: np.ndarray, orientation: str = "standard") -> np.ndarray:
    """A 2D mask re-oriented from its stored ``orientation`` to the standard display, as a bool array.

    A trailing channel axis (H, W, C) is merged: any channel > 0 counts.
    """
    _check_orientation(orientation)
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr.any(axis=-1) if arr.dtype == bool else (arr > 0).any(axis=-1)
    if arr.ndim != 2:
        raise BundleInputError(f"a mask must be 2D (rows, columns); got shape {arr.shape}")
    return np.ascontiguousarray(ORIENTATIONS[orientation](arr > 0))


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of ``mask``, largest first."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if not n:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    return [labels == (i + 1) for i in np.argsort(-sizes, kind="stable")]


def split_lungs(lungs: np.ndarray) -> dict[str, np.ndarray] | None:
    """Patient's left and right lung of a standard-orientation lung mask; None if it is empty (or 1 px wide).

    The two largest components are the lungs; the one whose centroid lies further right in the image is
    the patient's left lung (radiological convention). A single component is cut at its bounding box's
    middle column.
    """
    comps = _components(lungs)
    if not comps:
        return None
    if len(comps) >= 2:
        a, b = comps[0], comps[1]
    else:
        cols = np.flatnonzero(comps[0].any(axis=0))
        cut = (cols[0] + cols[-1] + 1) / 2.0
        right_half = np.arange(lungs.shape[1]) >= cut
        a, b = comps[0] & ~right_half, comps[0] & right_half
        if not b.any():  # one column wide: no way to tell the lungs apart
            return None
    ax, bx = np.argwhere(a)[:, 1].mean(), np.argwhere(b)[:, 1].mean()
    return {"left": a, "right": b} if ax > bx else {"left": b, "right": a}


def _zone(row: float, top: float, bottom: float) -> str:
    """Third of [top, bottom] (inclusive pixel rows) that ``row`` falls in."""
    height = bottom - top + 1.0
    frac = (row - top + 0.5) / height if height > 0 else 0.5
    return ZONES[min(2, max(0, int(frac * 3)))]


def _min_pixels(shape: Sequence[int], min_area: float | None) -> float:
    min_area = DEFAULT_MIN_AREA if min_area is None else float(min_area)
    if min_area < 0:
        raise BundleInputError(f"min_area {min_area:g} must be >= 0 (a fraction of the image below 1, else pixels)")
    return min_area * shape[0] * shape[1] if min_area < 1 else min_area


def lesion_places(
    lesion: np.ndarray, lungs: np.ndarray | None = None, min_area: float | None = None
) -> list[tuple[str, str]]:
    """(side, zone) of every infected area of standard-orientation masks, e.g. ``[("left", "upper")]``.

    Args:
        lesion: 2D lesion mask in the standard display (see :func:`to_standard`).
        lungs: lung mask of the same shape, or None (image halves and thirds are used).
        min_area: areas smaller than this are ignored: a fraction of the image if below 1, else pixels
            (default 0.1% of the image).
    """
    lesion = np.asarray(lesion, dtype=bool)
    threshold = _min_pixels(lesion.shape, min_area)
    sides = None
    if lungs is not None:
        lungs = np.asarray(lungs, dtype=bool)
        if lungs.shape != lesion.shape:
            raise BundleInputError(f"lung mask shape {lungs.shape} differs from the lesion mask's {lesion.shape}")
        sides = split_lungs(lungs)
    height, width = lesion.shape
    places = []
    for comp in _components(lesion):
        area = int(comp.sum())
        if area < threshold or area == 0:
            continue
        rows, cols = np.nonzero(comp)
        row, col = rows.mean(), cols.mean()
        if sides is None:
            side = "left" if (cols >= width / 2.0).sum() > area / 2.0 else "right"
            places.append((side, _zone(row, 0, height - 1)))
            continue
        overlap = {s: int((comp & m).sum()) for s, m in sides.items()}
        if max(overlap.values()) > 0:
            side = max(SIDES, key=lambda s: overlap[s])
        else:
            dist = {s: float(np.hypot(*(np.argwhere(m).mean(0) - (row, col)))) for s, m in sides.items()}
            side = min(SIDES, key=lambda s: dist[s])
        lung_rows = np.flatnonzero(sides[side].any(axis=1))
        places.append((side, _zone(row, lung_rows[0], lung_rows[-1])))
    return places


def format_sentence(places: Sequence[tuple[str, str]], modality: str = "cxr") -> str:
    """The LViT / QaTa-style sentence for (side, zone) places of infected areas (one per area)."""
    if modality not in SENTENCE_MODALITIES:
        raise BundleInputError(
            f"sentences can be generated for {', '.join(SENTENCE_MODALITIES)} (lung lesions), not {modality!r}; "
            "give the text another way (notes or a constant sentence)"
        )
    if not places:
        return EMPTY_SENTENCE[modality]
    order = {(s, z): (SIDES.index(s), ZONES.index(z)) for s in SIDES for z in ZONES}
    unique = sorted(set(places), key=order.__getitem__)
    extent = "Bilateral" if len({s for s, _ in unique}) == 2 else "Unilateral"
    n = len(places)
    areas = f"{count_word(n)} infected area{'s' if n != 1 else ''}"
    names = [f"{zone} {side} lung" for side, zone in unique]
    where = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{extent} pulmonary infection, {areas}, {where}."


def describe_mask(
    lesion: np.ndarray,
    lungs: np.ndarray | None = None,
    modality: str = "cxr",
    orientation: str = "standard",
    min_area: float | None = None,
) -> str:
    """A QaTa-COV19 / MosMedData+ (LViT) style sentence for a lesion mask; see the module docstring.

    Args:
        lesion: 2D lesion mask as stored (any value > 0 is lesion).
        lungs: lung mask (left + right) stored like ``lesion``, or None.
        modality: "cxr" or "ct".
        orientation: how the stored masks relate to the standard display, a key of :data:`ORIENTATIONS`.
        min_area: speck threshold: a fraction of the image if below 1, else pixels (default 0.1%).

    Returns:
        e.g. "Unilateral pulmonary infection, one infected area, lower left lung."
    """
    if modality not in SENTENCE_MODALITIES:
        format_sentence([], modality)  # raises the explanatory error
    std = to_standard(lesion, orientation)
    std_lungs = None if lungs is None else to_standard(lungs, orientation)
    return format_sentence(lesion_places(std, std_lungs, min_area), modality)


_PLACE = re.compile(r"\b(upper|middle|lower) (left|right) lung\b")


def places_in_sentence(text: str) -> list[tuple[str, str]]:
    """The (side, zone) places a generated sentence names, in order: "upper left lung" -> ("left", "upper")."""
    return [(side, zone) for zone, side in _PLACE.findall(text)]


def refer_to_side(
    lesion: np.ndarray,
    text: str,
    side: str,
    modality: str = "cxr",
    orientation: str = "standard",
    min_area: float | None = None,
) -> tuple[np.ndarray, str] | None:
    """A referring example: only the infected areas in the patient's ``side`` lung, and the sentence for them.

    A mask with areas in both lungs and its bilateral sentence teach nothing about the location words:
    the picture alone shows where the lesions are. Keeping one lung's areas, in the mask and in the
    sentence, makes the words decide what is foreground. The side of each area is the image half holding
    most of its pixels (standard display, radiological convention), its zone words come from ``text``
    (they were written with the lung mask, which the training item no longer has), its count from the mask.

    Args:
        lesion: 2D lesion mask as stored (rows, columns).
        text: the item's sentence; it must name both lungs.
        side: "left" or "right" (the patient's).
        modality, orientation, min_area: as :func:`describe_mask`.

    Returns:
        (mask as stored, sentence), or None when the sentence or the mask is not bilateral.
    """
    if side not in SIDES:
        raise ValueError(f"side {side!r}: expected one of {SIDES}")
    named = places_in_sentence(text)
    zones = [z for s, z in named if s == side]
    if not zones or len({s for s, _ in named}) != 2:
        return None
    lesion = np.asarray(lesion) > 0
    threshold = _min_pixels(lesion.shape, min_area)
    keep = np.zeros_like(lesion)
    kept = other = 0
    for comp in _components(lesion):
        std = to_standard(comp, orientation)
        cols = np.nonzero(std)[1]
        comp_side = "left" if (cols >= std.shape[1] / 2.0).sum() > cols.size / 2.0 else "right"
        counts = cols.size >= threshold
        if comp_side == side:
            keep |= comp
            kept += counts
        else:
            other += counts
    if not kept or not other:
        return None
    places = [(side, zones[i % len(zones)]) for i in range(kept)]
    return keep, format_sentence(places, modality)
