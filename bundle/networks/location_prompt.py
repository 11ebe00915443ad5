"""Location prompt: the lungs and zones a sentence names, drawn where they are (not in the paper).

LCPDN's text reaches the pixels only through learned attention: Q* in the backbone's cross-attention
(Eq. 1-6) and the tiled tokens of LTFR (Eq. 7-10). On the synthetic referring task that path learns to
read "left" and "right" after a few thousand examples where the words decide; the few dozen real chest
X-rays never teach it (docs/benchmarks.md sections 9 and 17). This module draws the places that a lesion
sentence of :mod:`bundle.sentences` names as two maps over the picture, so that the pixel classifier
sees them at the pixels they name:

* **side map**: 1 on the image half of each lung the sentence names ("... left lung"), 0 elsewhere;
* **zone map**: 1 on the upper, middle or lower third of that half for each "upper / middle / lower
  left / right lung" the sentence names, 0 elsewhere.

The halves and thirds are those of the standard display (:mod:`bundle.sentences`: the patient's left
lung is on the viewer's right in the ``radiological`` convention). A sentence that names no lung, such
as a constant sentence, clinical notes, MoNuSeg's sentences or "No pulmonary infection.", gives maps of
ones: no place is ruled out. The maps are moved onto the stored array through the item's
``orientation`` (:mod:`bundle.dihedral`), so the CT slices stored transposed get them where their
lungs are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import torch

from .. import dihedral
from ..sentences import ZONES, places_in_sentence

__all__ = ["LocationPrompt", "sides_in_sentence"]

_SIDE = re.compile(r"\b(left|right) lungs?\b", re.IGNORECASE)


def sides_in_sentence(text: str) -> set[str]:
    """The lungs a sentence names: "upper left lung and lower right lung" -> {"left", "right"}."""
    return {side.lower() for side in _SIDE.findall(text)}


@lru_cache(maxsize=4096)
def _maps(text: str, orientation: str, size: tuple[int, int], convention: str) -> torch.Tensor:
    """(2, X, Y) side and zone maps of ``text`` for a stored array of spatial ``size``."""
    m = dihedral.orientation_matrix(orientation)  # standard display = m @ stored
    x, y = size if dihedral.keeps_axes(m) else size[::-1]  # display size
    maps = torch.ones(2, x, y)
    sides = sides_in_sentence(text)
    if sides:
        maps.zero_()
        right_half = {s: dihedral.CONVENTIONS[convention][s][0] > 0 for s in ("left", "right")}
        half = {s: slice(x // 2, x) if on_right else slice(0, x // 2) for s, on_right in right_half.items()}
        for side in sides:
            maps[0, half[side]] = 1.0
        places = places_in_sentence(text.lower())
        for side, zone in places:
            k = ZONES.index(zone)
            maps[1, half[side], k * y // 3 : (k + 1) * y // 3] = 1.0
        if not places:  # lungs named without zones: the whole of each named half
            maps[1] = maps[0]
    return dihedral.apply(maps, dihedral.inverse(m)).contiguous()


class LocationPrompt:
    """Side and zone maps of each item's sentence, shape (B, 2, X, Y) in MONAI's (X, Y) layout.

    Args:
        convention: ``"radiological"`` (chest X-ray, CT: the patient's sides) or ``"image"`` (the viewer's).
    """

    channels = 2

    def __init__(self, convention: str = "radiological") -> None:
        if convention not in dihedral.CONVENTIONS:
            raise ValueError(f"unknown convention {convention!r}; expected one of {', '.join(dihedral.CONVENTIONS)}")
        self.convention = convention

    def __call__(
        self,
        texts: Sequence[str],
        size: Sequence[int],
        orientation: str | Sequence[str | None] | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """texts (B sentences; "" for none), stored spatial size (X, Y), per-item orientations -> (B, 2, X, Y)."""
        b = len(texts)
        orientations = [orientation] * b if orientation is None or isinstance(orientation, str) else list(orientation)
        if len(orientations) != b:
            raise ValueError(f"got {len(orientations)} orientations for {b} sentences")
        size = (int(size[0]), int(size[1]))
        maps = [_maps(t or "", o or "standard", size, self.convention) for t, o in zip(texts, orientations)]
        return torch.stack(maps).to(device)
