"""Symmetries of the picture and the location words of its sentence (bundle/dihedral.py, RandDihedralTextd)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle import dihedral
from bundle.sentences import ORIENTATIONS, describe_mask
from bundle.transforms import RandDihedralTextd

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def to_monai(rows_cols: np.ndarray) -> torch.Tensor:
    """A (rows, columns) picture in MONAI's channel-first layout (1, X, Y)."""
    return torch.from_numpy(np.ascontiguousarray(rows_cols.T))[None].float()


def to_rows_cols(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].numpy().T


def read(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L")) > 0


def test_group_laws():
    names = list(dihedral.SYMMETRIES)
    mats = [dihedral.SYMMETRIES[n] for n in names]
    for a in mats:
        assert dihedral.compose(a, dihedral.inverse(a)) == dihedral.IDENTITY
        for b in mats:
            assert dihedral.compose(a, b) in mats  # closed
    assert sum(dihedral.keeps_axes(m) for m in mats) == 4


@pytest.mark.parametrize("name", list(dihedral.SYMMETRIES))
def test_apply_moves_pixels_as_the_matrix_says(name):
    a = dihedral.SYMMETRIES[name]
    picture = np.zeros((5, 5))
    picture[0, 4] = 1  # row 0, column 4: top right, display (x, y) = (2, -2) from the centre
    moved = to_rows_cols(dihedral.apply(to_monai(picture), a))
    x, y = a[0][0] * 2 + a[0][1] * -2, a[1][0] * 2 + a[1][1] * -2
    assert moved[y + 2, x + 2] == 1 and moved.sum() == 1


@pytest.mark.parametrize("orientation", list(dihedral.ORIENTATION_MATRICES))
def test_orientation_matrices_match_the_sentence_generator(orientation):
    """ORIENTATION_MATRICES (stored -> standard) agrees with bundle.sentences.ORIENTATIONS."""
    stored = np.arange(25).reshape(5, 5)
    expected = ORIENTATIONS[orientation](stored)
    got = to_rows_cols(dihedral.apply(to_monai(stored.astype(float)), dihedral.ORIENTATION_MATRICES[orientation]))
    assert np.array_equal(got, expected)


def quadrant_words(mask: np.ndarray) -> str:
    """Where a blob sits in the viewer's frame, as MoNuSeg's sentences say it ("upper right")."""
    rows, cols = np.argwhere(mask).mean(0) / (np.array(mask.shape) - 1)
    return f"{'upper' if rows < 0.5 else 'lower'} {'left' if cols < 0.5 else 'right'}"


@pytest.mark.parametrize("name", list(dihedral.SYMMETRIES))
def test_monuseg_quadrant_sentences_follow_every_symmetry(name):
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:3, 5:7] = True  # upper right
    text = f"The nuclei density in the {quadrant_words(mask)} is high."
    assert text == "The nuclei density in the upper right is high."
    a = dihedral.SYMMETRIES[name]
    moved = to_rows_cols(dihedral.apply(to_monai(mask.astype(float)), a)) > 0
    assert dihedral.rewrite_locations(text, a, "image") == f"The nuclei density in the {quadrant_words(moved)} is high."


def test_single_words_and_case():
    turn = dihedral.SYMMETRIES["rotate_90_clockwise"]
    assert dihedral.rewrite_locations("The nuclei density in the left is high.", turn) == \
        "The nuclei density in the upper is high."
    assert dihedral.rewrite_locations("Left and lower.", dihedral.SYMMETRIES["rotate_180"]) == "Right and upper."
    assert dihedral.rewrite_locations("The nuclei are evenly distributed.", turn) == "The nuclei are evenly distributed."


def test_lung_words_refuse_quarter_turns():
    text = "Unilateral pulmonary infection, one infected area, lower left lung."
    with pytest.raises(ValueError, match="quarter turn"):
        dihedral.rewrite_locations(text, dihedral.SYMMETRIES["transpose"], "radiological")
    assert dihedral.allowed(list(dihedral.SYMMETRIES), text, "radiological", square=True) == \
        ["identity", "mirror", "flip_vertical", "rotate_180"]
    assert dihedral.allowed(list(dihedral.SYMMETRIES), "The nuclei.", "image", square=False) == \
        ["identity", "mirror", "flip_vertical", "rotate_180"]


def real_cxr_items():
    items = []
    for path in sorted((DATA / "cxr_tiny" / "img").glob("*.png")):
        lesion, lungs = read(DATA / "cxr_tiny" / "lesion" / path.name), read(DATA / "cxr_tiny" / "lungs" / path.name)
        items.append((lesion, lungs, describe_mask(lesion, lungs, "cxr")))
    return items


def real_ct_items():
    items = []
    for path in sorted((DATA / "ct_covid_tiny" / "mask").glob("*.png")):
        lesion = read(path)
        items.append((lesion, None, describe_mask(lesion, None, "ct", orientation="transposed")))
    return items


@pytest.mark.parametrize("orientation", ["standard", "transposed"])
@pytest.mark.parametrize("name", ["identity", "mirror", "flip_vertical", "rotate_180"])
def test_real_lung_sentences_equal_the_sentence_of_the_augmented_mask(name, orientation):
    """On the committed real CXR / CT masks: the rewritten sentence is what the generator says of the moved mask."""
    items = real_cxr_items() if orientation == "standard" else real_ct_items()
    assert items
    display = dihedral.SYMMETRIES[name]
    stored = dihedral.to_stored(display, orientation)
    for lesion, lungs, text in items:
        moved = to_rows_cols(dihedral.apply(to_monai(lesion.astype(float)), stored)) > 0
        moved_lungs = None if lungs is None else to_rows_cols(dihedral.apply(to_monai(lungs.astype(float)), stored)) > 0
        modality = "cxr" if lungs is not None else "ct"
        assert dihedral.rewrite_locations(text, display, "radiological") == \
            describe_mask(moved, moved_lungs, modality, orientation=orientation), (name, text)


def test_transposed_storage_turns_a_stored_left_right_flip_into_upper_lower():
    stored = dihedral.to_stored(dihedral.SYMMETRIES["mirror"], "transposed")
    assert stored == dihedral.SYMMETRIES["flip_vertical"]


def monuseg_items():
    datalist = json.loads((ROOT / "docs" / "demo_data" / "monuseg" / "datalist.json").read_text())
    return [item for split in ("training", "validation") for item in datalist[split]]


def test_transform_on_real_monuseg_sentences_keeps_text_and_geometry_together():
    sentences = {item["text"] for item in monuseg_items()}
    assert any("upper" in s or "lower" in s or "left" in s or "right" in s for s in sentences)
    t = RandDihedralTextd(keys=["image", "label"], symmetries="dihedral")
    t.set_random_state(0)
    seen = set()
    for text in sentences:
        for _ in range(12):
            mask = np.zeros((8, 8), dtype=bool)
            mask[1:3, 5:7] = True  # the blob the sentence's place names, as a stand-in
            image = to_monai(mask.astype(float)).repeat(3, 1, 1)
            out = t({"image": image, "label": to_monai(mask.astype(float)), "text": text, "modality": "he"})
            seen.add(t.drawn)
            assert torch.equal(out["image"][:1], out["label"])  # image and mask moved together
            assert out["text"] == dihedral.rewrite_locations(text, dihedral.SYMMETRIES[t.drawn], "image")
            moved = to_rows_cols(out["label"]) > 0
            if "upper right" in text:
                assert f"in the {quadrant_words(moved)} is high" in out["text"]
    assert seen == set(dihedral.SYMMETRIES)  # every symmetry is drawn


def test_transform_for_lungs_draws_only_what_the_words_can_follow():
    lesion, lungs, text = real_cxr_items()[0]
    t = RandDihedralTextd(keys=["image", "label"], symmetries="dihedral")
    t.set_random_state(1)
    drawn = set()
    for _ in range(40):
        out = t({"image": to_monai(lesion.astype(float)), "label": to_monai(lesion.astype(float)), "text": text,
                 "modality": "cxr"})
        drawn.add(t.drawn)
        moved = to_rows_cols(out["label"]) > 0
        assert out["text"] == describe_mask(moved, None if lungs is None else
                                            to_rows_cols(dihedral.apply(to_monai(lungs.astype(float)),
                                                                        dihedral.SYMMETRIES[t.drawn])) > 0, "cxr")
    assert drawn <= {"identity", "mirror", "flip_vertical", "rotate_180"} and len(drawn) == 4


def test_mirror_set_and_ct_orientation_key():
    lesion, _, text = real_ct_items()[0]
    t = RandDihedralTextd(keys=["label"], symmetries="mirror")
    t.set_random_state(0)
    for _ in range(10):
        out = t({"label": to_monai(lesion.astype(float)), "text": text, "modality": "ct", "orientation": "transposed"})
        assert t.drawn in ("identity", "mirror")
        moved = to_rows_cols(out["label"]) > 0
        assert out["text"] == describe_mask(moved, None, "ct", orientation="transposed")


def test_unknown_symmetry_set_is_a_clear_error():
    from bundle.errors import BundleInputError

    with pytest.raises(BundleInputError, match="augment_symmetries"):
        RandDihedralTextd(keys="image", symmetries="everything")


def test_reflections_are_what_rot90_then_an_axis_flip_gives():
    """TextDiff's branch (RandRotate90 then RandAxisFlip, both always) only ever mirrors: the 4 reflections."""
    det = {n: m[0][0] * m[1][1] - m[0][1] * m[1][0] for n, m in dihedral.SYMMETRIES.items()}
    assert set(dihedral.SYMMETRY_SETS["reflections"]) == {n for n, d in det.items() if d == -1}
