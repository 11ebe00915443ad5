"""The eight flips and quarter turns of a picture (the dihedral group D4) and what they do to a sentence.

A sentence such as "The nuclei density in the upper right is high." or "Unilateral pulmonary infection,
one infected area, lower left lung." names places; flipping or turning the image without rewriting it
makes the text describe another place. Here each symmetry is a 2x2 integer matrix acting on display
coordinates ``(x, y)`` (x to the viewer's right, y down), and :func:`rewrite_locations` moves the
location words ("left", "right", "upper", "lower"; "middle" stays) with it.

Two conventions for "left" / "right":

* ``"image"`` (H&E, MoNuSeg's LViT sentences): the viewer's left and right;
* ``"radiological"`` (chest X-ray, axial CT): the patient's sides, the patient's left on the viewer's
  right. Lung sentences also keep laterality (left/right lung) and zone (upper/middle/lower) on two
  different anatomical axes, so only the symmetries that keep the axes (:func:`keeps_axes`: identity,
  mirror, vertical flip, half turn) can be expressed in their words.

``orientation`` says how the stored array relates to the standard display (the names of
:data:`bundle.sentences.ORIENTATIONS`): CT slices stored transposed, for example, turn a horizontal flip
of the stored array into an upper/lower flip of the displayed slice.

MONAI's readers put a 2D picture's columns (x) on spatial axis 0 and its rows (y) on axis 1 of a
channel-first tensor ``(C, X, Y)``; :func:`apply` works in that layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from .errors import BundleInputError

__all__ = [
    "Matrix",
    "IDENTITY",
    "SYMMETRIES",
    "SYMMETRY_SETS",
    "ORIENTATION_MATRICES",
    "CONVENTIONS",
    "compose",
    "inverse",
    "keeps_axes",
    "orientation_matrix",
    "to_stored",
    "apply",
    "rewrite_locations",
    "allowed",
    "symmetry_set",
]

Matrix = tuple[tuple[int, int], tuple[int, int]]

IDENTITY: Matrix = ((1, 0), (0, 1))

#: every symmetry of the square, as it moves display coordinates (x right, y down)
SYMMETRIES: dict[str, Matrix] = {
    "identity": IDENTITY,
    "mirror": ((-1, 0), (0, 1)),  # left <-> right
    "flip_vertical": ((1, 0), (0, -1)),  # top <-> bottom
    "rotate_180": ((-1, 0), (0, -1)),
    "transpose": ((0, 1), (1, 0)),
    "anti_transpose": ((0, -1), (-1, 0)),
    "rotate_90_clockwise": ((0, -1), (1, 0)),
    "rotate_90_counterclockwise": ((0, 1), (-1, 0)),
}

#: the sets an augmentation draws from, uniformly
SYMMETRY_SETS: dict[str, tuple[str, ...]] = {
    "dihedral": tuple(SYMMETRIES),  # all eight (H&E tiles have no up or left)
    "reflections": ("mirror", "flip_vertical", "transpose", "anti_transpose"),  # TextDiff's rot90 + flip
    "mirror": ("identity", "mirror"),  # chest X-ray, CT: no upside-down anatomy
    "none": ("identity",),
}

#: stored array -> standard display, per orientation name of :data:`bundle.sentences.ORIENTATIONS`
ORIENTATION_MATRICES: dict[str, Matrix] = {
    "standard": IDENTITY,
    "upside_down": SYMMETRIES["flip_vertical"],
    "mirrored": SYMMETRIES["mirror"],
    "rotated_180": SYMMETRIES["rotate_180"],
    "transposed": SYMMETRIES["transpose"],
    "anti_transposed": SYMMETRIES["anti_transpose"],
    "rotated_90": SYMMETRIES["rotate_90_counterclockwise"],  # stored turned clockwise: turn it back
    "rotated_270": SYMMETRIES["rotate_90_clockwise"],
}

#: the display direction each location word points to, per convention
CONVENTIONS: dict[str, dict[str, tuple[int, int]]] = {
    "image": {"left": (-1, 0), "right": (1, 0), "upper": (0, -1), "lower": (0, 1)},
    "radiological": {"left": (1, 0), "right": (-1, 0), "upper": (0, -1), "lower": (0, 1)},
}

_WORD = re.compile(r"\b(left|right|upper|lower)\b", re.IGNORECASE)
_VERTICAL = ("upper", "lower")


def compose(a: Matrix, b: Matrix) -> Matrix:
    """The symmetry ``a`` after ``b`` (matrix product a @ b)."""
    return tuple(tuple(sum(a[i][k] * b[k][j] for k in range(2)) for j in range(2)) for i in range(2))  # type: ignore[return-value]


def inverse(a: Matrix) -> Matrix:
    """The inverse symmetry (orthogonal: the transpose)."""
    return ((a[0][0], a[1][0]), (a[0][1], a[1][1]))


def keeps_axes(a: Matrix) -> bool:
    """True for the symmetries that map the horizontal axis to itself (no quarter turn, no transpose)."""
    return a[0][1] == 0 and a[1][0] == 0


def orientation_matrix(orientation: str = "standard") -> Matrix:
    """The symmetry m with standard display = m @ stored, for an orientation name (one clear error otherwise)."""
    if orientation not in ORIENTATION_MATRICES:
        raise BundleInputError(
            f"unknown orientation {orientation!r}; expected one of {', '.join(ORIENTATION_MATRICES)}"
        )
    return ORIENTATION_MATRICES[orientation]


def to_stored(display: Matrix, orientation: str = "standard") -> Matrix:
    """The symmetry of the stored array that acts as ``display`` on the standard display."""
    m = orientation_matrix(orientation)  # standard = m @ stored
    return compose(inverse(m), compose(display, m))


def apply(image: torch.Tensor, a: Matrix) -> torch.Tensor:
    """Apply symmetry ``a`` to a channel-first 2D tensor ``(C, X, Y)`` (x on axis 1, y on axis 2)."""
    if image.ndim != 3:
        raise ValueError(f"expected a (C, X, Y) tensor, got shape {tuple(image.shape)}")
    out = image.transpose(1, 2) if not keeps_axes(a) else image
    # after the optional transpose the remaining part is a diagonal of signs
    signs = a if keeps_axes(a) else compose(a, SYMMETRIES["transpose"])
    dims = [d for d, s in ((1, signs[0][0]), (2, signs[1][1])) if s < 0]
    return out.flip(dims) if dims else out


def _word_for(direction: tuple[int, int], words: dict[str, tuple[int, int]]) -> str:
    return next(w for w, d in words.items() if d == direction)


def rewrite_locations(text: str, display: Matrix, convention: str = "image") -> str:
    """The sentence for the image moved by ``display`` (a symmetry of the standard display).

    Each location word is moved with the picture; a pair such as "right upper" that a quarter turn
    leaves in the wrong order becomes "upper right". Case is kept ("Left" -> "Right").

    Args:
        text: the sentence.
        display: the symmetry, in standard display coordinates.
        convention: ``"image"`` or ``"radiological"`` (see the module docstring). With the
            radiological convention only :func:`keeps_axes` symmetries are allowed.
    """
    if convention not in CONVENTIONS:
        raise BundleInputError(f"unknown location convention {convention!r}; expected image or radiological")
    if convention == "radiological" and not keeps_axes(display) and _WORD.search(text):
        raise ValueError("a quarter turn or transpose cannot be described in lung (left/right, upper/lower) words")
    words = CONVENTIONS[convention]

    def moved(match: re.Match) -> str:
        word = match.group(0)
        x, y = words[word.lower()]
        new = _word_for((display[0][0] * x + display[0][1] * y, display[1][0] * x + display[1][1] * y), words)
        return new.capitalize() if word[0].isupper() else new

    out = _WORD.sub(moved, text)
    # "right upper" -> "upper right": the vertical word first, as the sentences are written
    out = re.sub(
        r"\b(left|right) (upper|lower)\b",
        lambda m: (m.group(2).capitalize() if m.group(1)[0].isupper() else m.group(2)) + " " + m.group(1).lower(),
        out,
        flags=re.IGNORECASE,
    )
    return _PLACES.sub(_sorted_places, out) if convention == "radiological" else out


_PLACE = r"(?:upper|middle|lower) (?:left|right) lung"
_PLACES = re.compile(rf"\b{_PLACE}(?:(?:, | and ){_PLACE})*")
_PLACE_ORDER = {w: i for i, w in enumerate(("left", "right"))}, {w: i for i, w in enumerate(("upper", "middle", "lower"))}


def _sorted_places(match: re.Match) -> str:
    """A list of lung places in the generator's order (left lung first, each upper to lower)."""
    places = sorted(re.findall(_PLACE, match.group(0)), key=lambda p: (_PLACE_ORDER[0][p.split()[1]], _PLACE_ORDER[1][p.split()[0]]))
    return places[0] if len(places) == 1 else ", ".join(places[:-1]) + " and " + places[-1]


def symmetry_set(name: str) -> tuple[str, ...]:
    """The symmetries of the set ``name`` of :data:`SYMMETRY_SETS` (option ``augment_symmetries``)."""
    if name not in SYMMETRY_SETS:
        raise BundleInputError(f"option augment_symmetries {name!r}: expected one of {', '.join(SYMMETRY_SETS)}")
    return SYMMETRY_SETS[name]


def allowed(names: Sequence[str], text: str, convention: str, square: bool) -> list[str]:
    """The symmetries of ``names`` that ``text`` can follow and a picture of this shape can take."""
    out = [n for n in names if square or keeps_axes(SYMMETRIES[n])]
    if convention == "radiological" and _WORD.search(text):
        out = [n for n in out if keeps_axes(SYMMETRIES[n])]
    return out or ["identity"]
