"""bundle.engine: the text inferer's test-time augmentation keeps the sentence true of the picture."""

from __future__ import annotations

import pytest
import torch

from bundle import dihedral
from bundle.engine import PrepareTextBatch, TextInferer
from bundle.errors import BundleInputError

#: display direction of each word in the viewer's convention (x = spatial axis 0 of a (C, X, Y) map)
HALVES = {"left": (0, False), "right": (0, True), "upper": (1, False), "lower": (1, True)}


def marks_named_half(image: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
    """A network that reads the location words: foreground logit +1 where the sentence points (the
    intersection of the halves it names: "upper left" is a quadrant), -1 elsewhere."""
    b, _, x, y = image.shape
    logits = torch.full((b, 2, x, y), -1.0)
    for i, sentence in enumerate(text):
        inside = torch.ones(x, y, dtype=torch.bool)
        for word, (axis, second) in HALVES.items():
            if word in sentence.lower():
                half = torch.zeros(x, y, dtype=torch.bool)
                half.narrow(axis, x // 2 if second else 0, x // 2).fill_(True)
                inside &= half
        logits[i, 1][inside] = 1.0
    logits[:, 0] = -logits[:, 1]
    return logits


class Recorder(torch.nn.Module):
    """A per-pixel network (logits are the image): every symmetry commutes with it; records its calls."""

    def __init__(self, reads_text: bool = True) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, object]] = []
        self.orientations: list[object] = []
        self.reads_text = reads_text

    def forward(self, image: torch.Tensor, text: object = "absent", orientation: object = None) -> torch.Tensor:
        if not self.reads_text:
            assert text == "absent" and orientation is None, "an image-only network must not be given text"
        self.calls.append((image.clone(), text))
        self.orientations.append(orientation)
        return torch.cat([-image[:, :1], image[:, :1]], dim=1)


@pytest.mark.parametrize("sentence", ["The nuclei density in the upper left is high.", "Density in the right is high."])
def test_tta_moves_the_sentence_with_the_picture(sentence):
    """Averaged over the reflections with the words rewritten, the named half stays the named half.

    If the sentence were not rewritten, the transposed and mirrored passes would mark another half and
    the average would no longer be the single pass's mask."""
    image = torch.randn(1, 3, 8, 8)
    single = torch.softmax(marks_named_half(image, [sentence]), dim=1)
    tta = TextInferer(symmetries="reflections", modality="he")(image, marks_named_half, text=[sentence])
    assert torch.allclose(tta.exp(), single, atol=1e-6)  # every pass agrees: the log of the same probabilities


def test_tta_maps_every_prediction_back():
    """A network that commutes with every symmetry gives the single-pass probabilities, in any orientation."""
    image = torch.randn(2, 3, 6, 6)
    expected = torch.log_softmax(Recorder()(image), dim=1)
    for orientation in ("standard", "transposed", "rotated_90"):
        net = Recorder()
        out = TextInferer(symmetries="dihedral")(image, net, text=["a", "b"], orientation=[orientation] * 2)
        assert len(net.calls) == 8
        assert torch.allclose(out, expected, atol=1e-5)


def test_tta_follows_the_stored_orientation_of_ct_slices():
    """CT slices stored transposed: the display mirror flips the stored rows, and left/right lung swap."""
    image = torch.randn(1, 3, 4, 4)
    net = Recorder()
    sentence = "Unilateral pulmonary infection, one infected area, lower left lung."
    TextInferer(symmetries="mirror", modality="ct")(image, net, text=[sentence], orientation=["transposed"])
    (x0, t0), (x1, t1) = net.calls
    assert torch.equal(x0, image) and t0 == [sentence]
    assert net.orientations == [["transposed"]] * 2  # the location prompt draws on the stored array
    stored = dihedral.to_stored(dihedral.SYMMETRIES["mirror"], "transposed")
    assert stored == dihedral.SYMMETRIES["flip_vertical"]
    assert torch.equal(x1, image.flip(3))
    assert t1 == ["Unilateral pulmonary infection, one infected area, lower right lung."]


def test_tta_off_is_one_plain_call_and_image_only_networks_get_no_text():
    image = torch.randn(1, 3, 4, 4)
    net = Recorder()
    out = TextInferer()(image, net, text=["Density in the left is high."])
    assert len(net.calls) == 1 and net.calls[0][1] == ["Density in the left is high."]
    assert torch.equal(out, Recorder()(image))  # logits as the network gave them
    blind = Recorder(reads_text=False)
    TextInferer(symmetries="reflections", reads_text=False)(image, blind, text=["Density in the left is high."])
    assert len(blind.calls) == 5
    fixed = Recorder()
    TextInferer(text="Density in the left is high.", symmetries="mirror")(image, fixed, text=["ignored"])
    assert [t for _, t in fixed.calls] == [["Density in the left is high."], ["Density in the right is high."]]


def test_tta_rejects_an_unknown_symmetry_set():
    with pytest.raises(BundleInputError, match="augment_symmetries 'flips'"):
        TextInferer(symmetries="flips")


def test_prepare_text_batch_passes_orientation_when_items_carry_it():
    batch = {"image": torch.zeros(1, 3, 4, 4), "label": torch.zeros(1, 1, 4, 4), "text": ["x"]}
    _, _, _, extra = PrepareTextBatch()(batch)
    assert extra == {"text": ["x"]}
    _, _, _, extra = PrepareTextBatch()({**batch, "orientation": ["transposed"]})
    assert extra == {"text": ["x"], "orientation": ["transposed"]}
