"""The synthetic referring task of ``scripts/benchmark.py steering-toy``."""

from __future__ import annotations

import json

import numpy as np

from scripts.bench_steering_toy import toy_item
from scripts.benchmark import main


def test_toy_mask_is_the_named_lung_and_both_lungs_have_a_lesion() -> None:
    """Radiological convention: the sentence's lung holds the mask; the picture shows a lesion in each lung."""
    rng = np.random.default_rng(0)
    sides = set()
    for _ in range(20):
        image, mask, text, side = toy_item(rng, 64)
        assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64) and -1 <= image.min() <= image.max() <= 1
        assert f"{side} lung" in text and text.startswith("Unilateral pulmonary infection, one infected area,")
        cols = np.nonzero(mask[0])[1]
        assert cols.size and ((cols >= 32).all() if side == "left" else (cols < 32).all())  # patient's left: image right
        bright = image[0] > 0.3
        assert bright[:, :32].any() and bright[:, 32:].any()  # the picture alone cannot tell which lesion is wanted
        sides.add(side)
    assert sides == {"left", "right"}


def test_steering_toy_smoke_records_shares(tmp_path, tiny_network_options) -> None:
    sets = [f"{k}={json.dumps(v)}" for k, v in tiny_network_options.items() if k != "image_size"]
    assert main(["steering-toy", "--smoke", "--steps", "2", "--out", str(tmp_path), "--set", *sets]) == 0
    record = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert record["name"] == "steering_toy_seed0" and record["size"] == 32 and record["steps"] == 2
    for key in ("share_named", "share_named_after_swap", "dice_named_lesion"):
        assert 0.0 <= record[key] <= 1.0
