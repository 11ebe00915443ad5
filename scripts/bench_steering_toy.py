"""Can the network steer at all? A synthetic referring task (``scripts/benchmark.py steering-toy``).

Each picture shows two lung fields with one bright lesion in each; the sentence names one lung ("Unilateral
pulmonary infection, one infected area, upper left lung.", radiological convention: the patient's left
lung is on the viewer's right) and the mask holds only that lung's lesion. The picture alone cannot tell
which lesion is wanted: a network that ignores the words is right half of the time (Dice about 0.5, half of its
foreground on each side); one that reads them puts all of it on the named side. The bundle's own network,
loss and optimizer (``configs/train.json`` + ``configs/modality/cxr.json`` + ``--set``) are trained in a plain
loop on fresh pictures, so this separates "the architecture cannot act on location words" from "the real
data gives it no reason to" (docs/benchmarks.md section 17). It measures the learned path from words to
pixels, so the preset's location prompt, which draws the named lung on the picture, is off unless
``--set location_prompt=true``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bundle import dihedral
from bundle.sentences import SIDES, ZONES, format_sentence
from scripts.bench_runs import CONFIGS, SMOKE_OPTIONS, TRAIN, append_result, machine, parse_sets

__all__ = ["toy_item", "table_steering_toy"]


def toy_item(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, str, str]:
    """One synthetic referring item: image (3, size, size) in [-1, 1], mask (1, size, size), sentence, named side.

    Arrays are (rows, columns) of the standard display; the patient's right lung is the left image half.
    """
    rows, cols = np.mgrid[:size, :size]
    image = rng.normal(0.0, 0.1, (size, size))
    lesions, zones = {}, {}
    for side, centre in (("right", 0.28 * size), ("left", 0.72 * size)):
        image -= 0.4 * ((((cols - centre) / (0.18 * size)) ** 2 + ((rows - size / 2) / (0.38 * size)) ** 2) < 1)
        row, col = rng.uniform(0.2, 0.8) * size, centre + rng.uniform(-0.08, 0.08) * size
        radius = rng.uniform(0.05, 0.1) * size
        lesions[side] = (cols - col) ** 2 + (rows - row) ** 2 < radius**2
        image += 0.8 * lesions[side]
        zones[side] = ZONES[min(2, int((row - 0.12 * size) / (0.76 * size) * 3))]  # thirds of the lung field
    side = SIDES[rng.integers(2)]
    image = np.repeat(np.clip(image, -1.0, 1.0)[None], 3, axis=0).astype(np.float32)
    return image, lesions[side][None].astype(np.float32), format_sentence([(side, zones[side])], "cxr"), side


def _batch(rng: np.random.Generator, n: int, size: int, device: Any):
    import torch

    images, masks, texts, sides = zip(*(toy_item(rng, size) for _ in range(n)))
    return (torch.from_numpy(np.stack(images)).to(device), torch.from_numpy(np.stack(masks)).to(device),
            list(texts), list(sides))


def table_steering_toy(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``--steps`` steps on fresh toy items, then score 32 held-out items with the sentence as written and
    with left and right swapped: the share of the predicted foreground in the half the sentence first named,
    and the Dice against the named lesion."""
    import monai
    import torch
    from monai.bundle import ConfigParser

    size = 32 if args.smoke else args.size
    options = {**(SMOKE_OPTIONS if args.smoke else {}), "image_size": [size, size], "location_prompt": False,
               **parse_sets(args.set)}
    parser = ConfigParser()
    parser.read_config([TRAIN, str(CONFIGS / "modality" / "cxr.json")])
    parser.update({"seed": args.seed, **options})
    monai.utils.set_determinism(args.seed)
    net, device = parser.get_parsed_content("network"), parser.get_parsed_content("device")
    loss_fn, optimizer = parser.get_parsed_content("loss"), parser.get_parsed_content("optimizer")
    rng, start, curve = np.random.default_rng(args.seed), time.perf_counter(), []
    net.train()
    for step in range(1, args.steps + 1):
        image, mask, texts, _ = _batch(rng, args.batch, size, device)
        loss = loss_fn(net(image, texts), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
        if step % 50 == 0 or step == args.steps:
            print(f"steering-toy step {step}: loss {np.mean(curve[-50:]):.3f}", flush=True)
    net.eval()
    held_out, mirror = np.random.default_rng(10_000 + args.seed), dihedral.SYMMETRIES["mirror"]
    shares: dict[str, list[float]] = {"as_written": [], "swapped": []}
    dice = []
    with torch.inference_mode():
        for _ in range(8):
            image, mask, texts, sides = _batch(held_out, 4, size, device)
            swapped = [dihedral.rewrite_locations(t, mirror, "radiological") for t in texts]
            for key, sentences in (("as_written", texts), ("swapped", swapped)):
                pred = net(image, sentences).argmax(1)  # (B, rows, columns)
                for i, side in enumerate(sides):
                    half = pred[i, :, size // 2:] if side == "left" else pred[i, :, : size // 2]
                    shares[key].append(float(half.sum()) / max(float(pred[i].sum()), 1.0))
                    if key == "as_written":
                        target = mask[i, 0] > 0
                        both = float(pred[i].sum() + target.sum())
                        dice.append(2 * float((pred[i].bool() & target).sum()) / max(both, 1.0))
    record = {
        "name": f"steering_toy{args.tag}_seed{args.seed}", "table": "steering-toy", "options": options,
        "steps": args.steps, "batch": args.batch, "size": size, "loss_last50": float(np.mean(curve[-50:])),
        "share_named": float(np.mean(shares["as_written"])), "share_named_after_swap": float(np.mean(shares["swapped"])),
        "dice_named_lesion": float(np.mean(dice)), "train_minutes": (time.perf_counter() - start) / 60, "machine": machine(),
    }
    append_result(Path(args.out), record)
    print(json.dumps({k: v for k, v in record.items() if k not in ("options", "machine")}), flush=True)
    return record
