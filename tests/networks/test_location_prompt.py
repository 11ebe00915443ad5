"""Location prompt: the lungs and zones a sentence names, drawn on the stored array."""

from __future__ import annotations

import pytest
import torch

from bundle import dihedral
from bundle.errors import BundleInputError
from bundle.networks.location_prompt import LocationPrompt, sides_in_sentence

LOWER_LEFT = "Unilateral pulmonary infection, one infected area, lower left lung."
BILATERAL = "Bilateral pulmonary infection, two infected areas, upper left lung and middle right lung."


def test_sides_in_sentence():
    assert sides_in_sentence(BILATERAL) == {"left", "right"}
    assert sides_in_sentence("Infection in the Left lung.") == {"left"}
    assert sides_in_sentence("The nuclei density in the upper left is high.") == set()


def test_the_patients_left_lung_is_on_the_viewers_right():
    maps = LocationPrompt("radiological")([LOWER_LEFT], (6, 6))[0]  # (2, X, Y): x = columns, y = rows
    side = torch.zeros(6, 6)
    side[3:] = 1
    zone = torch.zeros(6, 6)
    zone[3:, 4:] = 1  # the right half of the display, bottom third of the rows
    assert torch.equal(maps[0], side) and torch.equal(maps[1], zone)
    viewer = LocationPrompt("image")([LOWER_LEFT], (6, 6))[0]
    assert torch.equal(viewer[0], side.flip(0))


def test_two_lungs_and_zones():
    maps = LocationPrompt()([BILATERAL], (6, 6))[0]
    assert torch.equal(maps[0], torch.ones(6, 6))
    zone = torch.zeros(6, 6)
    zone[3:, :2] = 1  # upper left lung: viewer's right, top third
    zone[:3, 2:4] = 1  # middle right lung: viewer's left, middle third
    assert torch.equal(maps[1], zone)


@pytest.mark.parametrize("text", ["Pulmonary infection in the lungs.", "No pulmonary infection.", "", "Male, 50, dry cough."])
def test_a_sentence_that_names_no_lung_rules_nothing_out(text):
    assert torch.equal(LocationPrompt()([text], (4, 6)), torch.ones(1, 2, 4, 6))


@pytest.mark.parametrize("orientation", list(dihedral.ORIENTATION_MATRICES))
@pytest.mark.parametrize("symmetry", ["mirror", "flip_vertical", "rotate_180"])
def test_maps_move_with_the_picture_and_its_rewritten_sentence(orientation, symmetry):
    """Augmenting the stored array and rewriting the words (RandDihedralTextd) keeps the maps on the lesions."""
    prompt = LocationPrompt()
    display = dihedral.SYMMETRIES[symmetry]
    moved = prompt([dihedral.rewrite_locations(BILATERAL, display, "radiological")], (6, 6), orientation)[0]
    stored = dihedral.to_stored(display, orientation)
    assert torch.equal(moved, dihedral.apply(prompt([BILATERAL], (6, 6), orientation)[0], stored))


def test_stored_orientation_moves_the_maps():
    """ct_covid slices are stored transposed: the viewer's right half is the bottom half of the stored rows."""
    maps = LocationPrompt()([LOWER_LEFT, LOWER_LEFT], (4, 8), ["transposed", None])
    assert maps.shape == (2, 2, 4, 8)
    assert torch.equal(maps[0, 0], torch.cat([torch.zeros(4, 4), torch.ones(4, 4)], dim=1))
    with pytest.raises(BundleInputError, match="unknown orientation 'sideways'"):
        LocationPrompt()([LOWER_LEFT], (4, 4), "sideways")
    with pytest.raises(ValueError, match="2 orientations for 1 sentences"):
        LocationPrompt()([LOWER_LEFT], (4, 4), ["standard", "standard"])
