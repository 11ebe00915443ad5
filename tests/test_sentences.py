"""bundle/sentences.py: QaTa / MosMed-style sentences from masks, radiological sides, zones, orientations."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bundle.errors import BundleInputError
from bundle.sentences import (
    EMPTY_SENTENCE,
    LOCATION_WORDS,
    ORIENTATIONS,
    count_word,
    describe_mask,
    lesion_places,
    places_in_sentence,
    refer_to_side,
    split_lungs,
)

H = W = 90  # thirds: rows 0-29 upper, 30-59 middle, 60-89 lower; columns >= 45 are the patient's left


def box(mask: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 1
    return mask


def blank() -> np.ndarray:
    return np.zeros((H, W), dtype=np.uint8)


def test_lesion_in_image_right_half_is_left_lung() -> None:
    m = box(blank(), (5, 15), (60, 75))
    assert describe_mask(m) == "Unilateral pulmonary infection, one infected area, upper left lung."
    m = box(blank(), (70, 80), (10, 20))
    assert describe_mask(m * 255) == "Unilateral pulmonary infection, one infected area, lower right lung."


def test_bilateral_counts_and_place_order() -> None:
    m = box(box(blank(), (5, 15), (60, 75)), (5, 15), (10, 20))
    assert describe_mask(m) == (
        "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."
    )
    # three areas in two places of the left lung, each place once, upper before lower
    m = box(box(box(blank(), (65, 70), (50, 55)), (75, 80), (70, 80)), (35, 45), (60, 70))
    assert describe_mask(m) == (
        "Unilateral pulmonary infection, three infected areas, middle left lung and lower left lung."
    )
    m = box(m, (40, 50), (5, 15))
    assert describe_mask(m) == (
        "Bilateral pulmonary infection, four infected areas, middle left lung, lower left lung and middle right lung."
    )


def test_counts_in_words_then_digits() -> None:
    assert [count_word(n) for n in (1, 2, 10, 11, 23)] == ["one", "two", "ten", "11", "23"]
    m = blank()
    for k in range(11):  # eleven 4x2 areas along the top of the right image half
        box(m, (2, 6), (46 + 4 * k, 48 + 4 * k))
    assert describe_mask(m, min_area=0) == "Unilateral pulmonary infection, 11 infected areas, upper left lung."


@pytest.mark.parametrize("rows, zone", [((0, 10), "upper"), ((40, 50), "middle"), ((80, 90), "lower")])
def test_zones_by_image_thirds_without_lungs(rows: tuple[int, int], zone: str) -> None:
    assert describe_mask(box(blank(), rows, (10, 20))).endswith(f"{zone} right lung.")


def two_lungs() -> np.ndarray:
    """Patient's right lung (image left) wide, from row 30 down, reaching past the midline; left lung narrow."""
    lungs = blank()
    box(lungs, (30, 90), (5, 58))  # patient's right lung, crossing column 45
    box(lungs, (10, 80), (65, 85))  # patient's left lung
    return lungs


def test_lung_mask_side_by_overlap_across_the_midline() -> None:
    lungs = two_lungs()
    lesion = box(blank(), (32, 40), (48, 56))  # image right half, but inside the patient's right lung
    assert describe_mask(lesion).endswith("middle left lung.")  # image halves and thirds
    assert describe_mask(lesion, lungs) == "Unilateral pulmonary infection, one infected area, upper right lung."
    sides = split_lungs(lungs.astype(bool))
    assert sides is not None and sides["left"][20, 70] and sides["right"][50, 10]


def test_lung_zone_relative_to_own_extent_and_outside_lesion() -> None:
    lungs = two_lungs()
    lesion = box(blank(), (70, 78), (68, 80))  # lower third of the left lung (rows 10-79)
    assert describe_mask(lesion, lungs).endswith("lower left lung.")
    outside = box(blank(), (0, 6), (70, 80))  # above every lung: nearest lung by centroid
    assert lesion_places(outside.astype(bool), lungs.astype(bool)) == [("left", "upper")]


def test_single_component_lung_mask_is_cut_in_the_middle() -> None:
    lungs = box(blank(), (10, 80), (10, 80))  # both lungs drawn as one blob
    assert describe_mask(box(blank(), (12, 20), (70, 78)), lungs).endswith("upper left lung.")
    assert describe_mask(box(blank(), (70, 78), (12, 20)), lungs).endswith("lower right lung.")
    assert describe_mask(box(blank(), (12, 20), (70, 78)), blank()).endswith("upper left lung.")  # empty: halves


def test_orientations_change_the_words_as_documented() -> None:
    m = box(blank(), (5, 15), (60, 75))  # stored: top of the image's right half
    assert describe_mask(m, orientation="standard").endswith("upper left lung.")
    assert describe_mask(m, orientation="upside_down").endswith("lower left lung.")  # flip swaps zones only
    assert describe_mask(m, orientation="mirrored").endswith("upper right lung.")
    assert describe_mask(m, orientation="rotated_180").endswith("lower right lung.")
    assert describe_mask(m, orientation="transposed").endswith("lower right lung.")  # stored columns -> rows


def test_every_orientation_undoes_its_storage() -> None:
    std = box(box(box(blank(), (5, 15), (60, 75)), (70, 85), (5, 20)), (40, 45), (20, 30))
    lungs = two_lungs()
    stored = {
        "standard": lambda a: a,
        "upside_down": np.flipud,
        "mirrored": np.fliplr,
        "rotated_180": lambda a: np.rot90(a, 2),
        "transposed": lambda a: a.T,
        "anti_transposed": lambda a: np.rot90(a, 2).T,
        "rotated_90": lambda a: np.rot90(a, -1),  # turned clockwise
        "rotated_270": lambda a: np.rot90(a, 1),
    }
    assert set(stored) == set(ORIENTATIONS)
    want = describe_mask(std, lungs)
    for name, store in stored.items():
        assert describe_mask(store(std), store(lungs), orientation=name) == want, name


def test_empty_mask_and_specks() -> None:
    assert describe_mask(blank()) == EMPTY_SENTENCE["cxr"] == "No pulmonary infection."
    assert describe_mask(blank(), modality="ct") == EMPTY_SENTENCE["ct"]
    speck = box(blank(), (50, 52), (10, 12))  # 4 px < 0.1% of 8100 px
    assert describe_mask(speck) == "No pulmonary infection."
    m = box(speck.copy(), (5, 15), (60, 75))
    assert describe_mask(m).startswith("Unilateral pulmonary infection, one infected area")
    assert describe_mask(m, min_area=3).startswith("Bilateral pulmonary infection, two infected areas")  # pixels
    assert describe_mask(m, min_area=0.05) == "No pulmonary infection."  # 5% of the image: both are specks


def test_channels_and_8_connectivity() -> None:
    m = blank()
    for k in range(10):
        m[20 + k, 50 + k] = 1  # a diagonal line is one area
    assert "one infected area" in describe_mask(np.stack([m * 255] * 3, -1), min_area=0)


def test_only_location_words_name_places() -> None:
    fixed = {"bilateral", "unilateral", "pulmonary", "infection", "infected", "area", "areas", "lung", "and", "no"}
    numbers = {count_word(n) for n in range(1, 11)}
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for _ in range(30):
        m = (rng.random((40, 40)) > 0.97).astype(np.uint8)
        for orientation in ("standard", "transposed"):
            words = re.findall(r"[a-z]+", describe_mask(m, modality="ct", orientation=orientation, min_area=0).lower())
            seen |= set(words)
    assert seen - fixed - numbers <= set(LOCATION_WORDS)
    assert set(LOCATION_WORDS) <= seen  # every location word was used
    assert LOCATION_WORDS == ("left", "right", "upper", "middle", "lower")


def test_bad_inputs() -> None:
    with pytest.raises(BundleInputError, match="not 'he'"):
        describe_mask(blank(), modality="he")
    with pytest.raises(BundleInputError, match="unknown orientation 'flipped'.*upside_down"):
        describe_mask(blank(), orientation="flipped")
    with pytest.raises(BundleInputError, match="lung mask shape"):
        describe_mask(blank(), np.zeros((10, 10)))
    with pytest.raises(BundleInputError, match="must be 2D"):
        describe_mask(np.zeros((2, 3, 4, 5)))


def _bilateral(shape=(60, 60)) -> np.ndarray:
    """Standard display: one area in the image's left half (patient's right), two in its right half."""
    mask = np.zeros(shape, dtype=bool)
    mask[5:15, 5:15] = True  # upper, patient's right
    mask[40:50, 40:50] = True  # lower, patient's left
    mask[25:32, 45:52] = True  # middle, patient's left
    return mask


def test_referring_example_keeps_one_lung_in_mask_and_sentence():
    mask = _bilateral()
    text = describe_mask(mask, None, "cxr")
    assert text == "Bilateral pulmonary infection, three infected areas, middle left lung, lower left lung and upper right lung."
    kept, sentence = refer_to_side(mask, text, "left", "cxr")
    assert sentence == "Unilateral pulmonary infection, two infected areas, middle left lung and lower left lung."
    assert sentence == describe_mask(kept, None, "cxr") and not kept[:, :30].any() and kept.sum() == 149
    kept, sentence = refer_to_side(mask, text, "right", "cxr")
    assert sentence == "Unilateral pulmonary infection, one infected area, upper right lung." and kept.sum() == 100
    # stored transposed (ct_covid): sides are those of the displayed slice
    stored = mask.T
    kept, sentence = refer_to_side(stored, describe_mask(stored, None, "ct", "transposed"), "right", "ct", "transposed")
    assert sentence == "Unilateral pulmonary infection, one infected area, upper right lung." and np.array_equal(kept.T[:, :30], mask[:, :30])


def test_no_referring_example_from_unilateral_items():
    mask = _bilateral()
    mask[:, 30:] = False
    text = describe_mask(mask, None, "cxr")
    assert refer_to_side(mask, text, "right", "cxr") is None  # the sentence names one lung
    assert refer_to_side(_bilateral(), "Bilateral pulmonary infection, two infected areas.", "left") is None
    both = "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."
    assert refer_to_side(mask, both, "right", "cxr") is None  # the mask has no area in the other lung
    assert places_in_sentence(both) == [("left", "upper"), ("right", "upper")]
    with pytest.raises(ValueError, match="side"):
        refer_to_side(mask, both, "middle")
