"""Accuracy tables: train with the shipped configs, evaluate the best checkpoint (``scripts/benchmark.py``
``accuracy``, ``ct``, ``label-efficiency``, ``lesions``), and the text-steering probe of a trained run
(``steering``)."""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
from pathlib import Path
from typing import Any

from bundle.data import load_datalist, write_datalist
from bundle.errors import BundleInputError
from scripts.bench_runs import (
    CONFIGS,
    EVALUATE,
    IMAGE_ONLY,
    PRETRAIN,
    ROOT,
    SMOKE_OPTIONS,
    TRAIN,
    VARIANTS,
    append_result,
    bundle_command,
    load_run,
    lvit_datalist,
    machine,
    parse_sets,
    read_results,
    run_logged,
    smoke_datalist,
    train_and_evaluate,
)


def base_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options of every run of a table: ``--epochs``, the tiny network with ``--smoke``, then ``--set``."""
    return {"epochs": args.epochs, **(SMOKE_OPTIONS if args.smoke else {}), **parse_sets(args.set)}


def variant_options(variant: str, base: dict[str, Any], seed: int,
                    unet_lr: float | None = None) -> tuple[list[str], dict[str, Any]]:
    """Config layers and options of an accuracy variant (:data:`VARIANTS`) for one seed; ``unet_lr``: the
    UNet baseline's learning rate (``--unet-lr``; default: as LCPDN)."""
    layers, options = VARIANTS[variant]
    options = {**options, **base, "seed": seed}
    if variant == "unet" and unet_lr:
        options["learning_rate"] = unet_lr
    return layers, options


def table_accuracy(args: argparse.Namespace) -> None:
    out = Path(args.out)
    datalist = smoke_datalist(out) if args.smoke else lvit_datalist(args.data, out)
    base = base_options(args)
    ckpt = pretrain_backbone(args, out, datalist, base) if "lcpdn_pretrained" in args.variants else None
    for seed in args.seeds:
        for variant in args.variants:
            if variant == "lcpdn_pretrained":  # the default config on the stage-1 pretrained backbone
                layers, options = [], {"backbone_ckpt": ckpt, **base, "seed": seed}
            else:
                layers, options = variant_options(variant, base, seed, args.unet_lr)
            train_and_evaluate(f"{variant}{args.tag}_seed{seed}", out, datalist, layers, options)


def table_ct(args: argparse.Namespace) -> None:
    """Train on one CT volume's slices, test on the other's (LCPDN vs UNet)."""
    from scripts.slice_ct import slice_ct

    out = Path(args.out)
    if args.smoke:
        volume = ROOT / "tests" / "data" / "ct_tiny"
        train = slice_ct(str(volume / "lung2_image.nrrd"), str(volume / "lung2_label.nrrd"), str(out / "slices_train"),
                         split="training", size=32)["training"]
        test = train
    else:
        ct = Path(args.ct_dir)
        train = slice_ct(str(ct / "lung2_image.nrrd"), str(ct / "lung2_label.nrrd"), str(out / "slices_lung2"),
                         split="training", size=256)["training"]
        test = slice_ct(str(ct / "lung1_image.nrrd"), str(ct / "lung1_label.nrrd"), str(out / "slices_lung1"),
                        split="validation", size=256)["validation"]
    # all lesion slices plus every `negative_every`-th lesion-free slice for training; every test slice
    lesion = [i for i, item in enumerate(train) if "No lesion" not in item["text"]]
    keep = [item for i, item in enumerate(train) if i in lesion or i % args.negative_every == 0]
    path = out / "datalist.json"
    write_datalist(str(path), {"training": keep, "validation": test, "ct_window": [-1000, 400]})
    modality = str(CONFIGS / "modality" / "ct.json")
    base = base_options(args)
    for seed in args.seeds:
        for variant in args.variants:
            layers, options = variant_options(variant, base, seed, args.unet_lr)
            train_and_evaluate(f"ct_{variant}{args.tag}_seed{seed}", out, path, [modality, *layers], options)


def pretrain_backbone(args: argparse.Namespace, out: Path, datalist: Path, base: dict[str, Any],
                      layers: list[str] | None = None) -> str:
    """Stage-1 denoising pretraining of the backbone (or ``--backbone-ckpt`` when given); returns the checkpoint.

    It pretrains on the images of ``--pretrain-splits`` of ``datalist``, or on every image of
    ``--pretrain-folder`` when given (unlabelled images); ``layers``: config layers before the
    pretraining one (a modality preset).
    """
    if args.backbone_ckpt:
        return args.backbone_ckpt
    pre_dir = out / "pretrain"
    pre_opts = {**base, "datalist": str(datalist), "ckpt_dir": str(pre_dir / "models"), "log_dir": str(pre_dir / "runs"),
                "pretrain_epochs": args.pretrain_epochs, "pretrain_splits": args.pretrain_splits}
    if getattr(args, "pretrain_folder", None):
        pre_opts["image_folder"] = str(args.pretrain_folder)
    pre_opts.pop("epochs", None)
    if args.smoke:
        pre_opts["pretrain_crop"] = [32, 32]
    pre = run_logged(bundle_command("pretraining", [TRAIN, *(layers or []), PRETRAIN], pre_opts), pre_dir / "pretrain.log")
    append_result(out, {"name": "pretrain", "train": pre, "options": pre_opts, "machine": machine()})
    if pre["returncode"] != 0:
        raise RuntimeError(f"pretraining failed, see {pre_dir / 'pretrain.log'}")
    return str(pre_dir / "models" / "backbone_pretrained.pt")


def training_subset(items: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` of ``items`` drawn with ``seed`` (all when there are fewer), ordered by image path."""
    return sorted(random.Random(seed).sample(items, min(n, len(items))), key=lambda x: x["image"])


def table_label_efficiency(args: argparse.Namespace) -> None:
    """The default config on few labelled images, with and without stage-1 pretraining on unlabelled images."""
    out = Path(args.out)
    full = smoke_datalist(out) if args.smoke else lvit_datalist(args.data, out)
    few = out / "datalist_few.json"
    write_datalist(str(few), {"training": training_subset(load_datalist(str(full), "training"), args.train_items, args.subset_seed),
                              "validation": load_datalist(str(full), "validation")})
    base = base_options(args)
    ckpt = pretrain_backbone(args, out, full, base) if "lcpdn_pretrained" in args.variants else None
    for seed in args.seeds:
        for variant in args.variants:
            if variant == "lcpdn_pretrained":  # the default config on the stage-1 pretrained backbone
                layers, options = [], {**base, "seed": seed, "backbone_ckpt": ckpt}
            else:
                layers, options = variant_options(variant, base, seed, args.unet_lr)
            train_and_evaluate(f"few{args.train_items}_{variant}{args.tag}_seed{seed}", out, few, layers, options)


def table_lesions(args: argparse.Namespace) -> None:
    """Lesion sets from image / mask folders (chest X-ray, CT): LCPDN with each sentence source, and the UNet.

    One patient-grouped split (``scripts/prepare_masks.py``) is made per sentence source, the same split
    each time (same seed, same groups): only the text differs between the LCPDN rows.

    Label efficiency: ``--train-items N`` keeps N training items (the same ones for every source, drawn
    with ``--subset-seed``; the validation split stays whole), and ``lcpdn_pretrained`` starts LCPDN from
    a backbone denoising-pretrained (stage 1) on the unlabelled images of ``--pretrain-folder``.
    """
    from scripts.prepare_masks import convert_masks

    if "lcpdn_pretrained" in args.variants and not (args.pretrain_folder or args.backbone_ckpt):
        raise BundleInputError("variant lcpdn_pretrained needs --pretrain-folder (unlabelled images) or --backbone-ckpt")
    out = Path(args.out)
    modality_layer = str(CONFIGS / "modality" / f"{args.modality}.json")
    base = base_options(args)
    few = f"_few{args.train_items}" if args.train_items else ""
    datalists = {}
    for source in args.text_sources:
        datalist = convert_masks(args.images, args.masks, args.lungs, args.csv, modality=args.modality, text=source,
                                 group_column=args.group_column, orientation=args.orientation,
                                 notes_fallback="constant" if source == "notes" else None,
                                 val_fraction=args.val_fraction, seed=args.split_seed)
        if args.train_items:  # drawn from the sorted items: the same subset whatever order the converter lists them in
            training = sorted(datalist["training"], key=lambda x: x["image"])
            datalist = {**datalist, "training": training_subset(training, args.train_items, args.subset_seed)}
        datalists[source] = out / f"datalist_{source}{few}.json"
        write_datalist(str(datalists[source]), datalist)
    ckpt = None
    if "lcpdn_pretrained" in args.variants:
        ckpt = pretrain_backbone(args, out, datalists[args.text_sources[0]], base, [modality_layer])
    for seed in args.seeds:
        for variant in args.variants:
            if variant in IMAGE_ONLY:  # one run, on the first source's split (the same images)
                layers, options = variant_options(variant, base, seed)
                train_and_evaluate(f"{args.name}{few}_{variant}{args.tag}_seed{seed}", out, datalists[args.text_sources[0]],
                                   [modality_layer, *layers], options)
                continue
            if variant == "lcpdn_pretrained":
                layers, options = [], {**base, "backbone_ckpt": ckpt, "seed": seed}
            else:
                layers, options = variant_options(variant, base, seed)
            for source in args.text_sources:  # names: lcpdn_generated, lcpdn_generated_pretrained, lcpdn_generated_basicunet
                name = f"{args.name}{few}_lcpdn_{source}{variant[len('lcpdn'):]}{args.tag}_seed{seed}"
                train_and_evaluate(name, out, datalists[source], [modality_layer, *layers], options)


def table_steering(args: argparse.Namespace) -> None:
    """Does the mask follow the text? Swap left / right (and upper / lower) in each validation sentence.

    For every validation item whose sentence names one side (or one zone), the share of the predicted
    foreground in that half of the standard display is measured with the sentence as written and with
    the side (zone) swapped: if the text steers, the share moves to the newly named half.

    Referring: every validation item whose sentence names both lungs is also given, in turn, the sentence
    for each lung alone (:func:`bundle.sentences.refer_to_side`); recorded are the share of the predicted
    foreground in the named half and the Dice against that lung's lesions.
    """
    import torch

    from bundle import dihedral
    from bundle.sentences import SIDES, refer_to_side, to_standard

    record = next(r for r in read_results(Path(args.results)) if r["name"] == args.run and "metrics" in r)
    net, preprocess = load_run(args.results, record, args.datalist)
    rows = []
    for item in load_datalist(args.datalist, "validation"):
        data = preprocess(dict(item))
        text = data["text"]
        for axis, swap, words in (("x", "mirror", ("left", "right")), ("y", "flip_vertical", ("upper", "lower"))):
            named = {w for w in words if re.search(rf"\b{w}\b", text)}
            if len(named) != 1:
                continue
            display = dihedral.SYMMETRIES[swap]
            orientation = dihedral.ORIENTATION_MATRICES[item.get("orientation") or "standard"]
            with torch.inference_mode():
                preds = [net(data["image"][None].float(), text=[t], orientation=[item.get("orientation")]).argmax(1) for t in
                         (text, dihedral.rewrite_locations(text, display, "radiological"))]
            preds = [dihedral.apply(p, orientation)[0] for p in preds]  # (X, Y) in the standard display
            # the named half of the standard display: patient's left = viewer's right (x >= X/2), upper: y < Y/2
            half = torch.zeros(preds[0].shape)
            if axis == "x":
                half[half.shape[0] // 2:] = 1.0 if named == {"left"} else 0.0
                half[: half.shape[0] // 2] = 1.0 if named == {"right"} else 0.0
            else:
                half[:, : half.shape[1] // 2] = 1.0 if named == {"upper"} else 0.0
                half[:, half.shape[1] // 2:] = 1.0 if named == {"lower"} else 0.0
            shares = [float((p.float() * half).sum() / p.sum()) if p.sum() else float("nan") for p in preds]
            rows.append({"image": item["image"], "axis": axis, "named": named.pop(), "share_named": shares[0],
                         "share_named_after_swap": shares[1]})
        orientation_name = item.get("orientation") or "standard"
        stored_mask = data["label"][0].numpy().T > 0  # (X, Y) -> rows, columns
        for side in SIDES:
            referred = refer_to_side(stored_mask, text, side, data.get("modality", "cxr"), orientation_name)
            if referred is None:
                continue
            with torch.inference_mode():
                pred = net(data["image"][None].float(), text=[referred[1]], orientation=[orientation_name])
                pred = pred.argmax(1)[0].numpy().T > 0
            std_pred = to_standard(pred, orientation_name)
            width = std_pred.shape[1]
            in_side = std_pred[:, width // 2:] if side == "left" else std_pred[:, : width // 2]  # patient's left: viewer's right
            target = referred[0]
            dice = 2 * float((pred & target).sum()) / max(float(pred.sum() + target.sum()), 1.0)
            rows.append({"image": item["image"], "axis": "referring", "named": side, "text": referred[1],
                         "share_named": float(in_side.sum() / std_pred.sum()) if std_pred.sum() else float("nan"),
                         "dice_named_lung": dice})
    summary = {"name": f"steering_{args.run}", "run": args.run, "items": rows, "machine": machine()}
    for axis in ("x", "y"):
        sel = [r for r in rows if r["axis"] == axis and r["share_named"] == r["share_named"] and r["share_named_after_swap"] == r["share_named_after_swap"]]
        if sel:
            summary[f"{axis}_n"] = len(sel)
            summary[f"{axis}_share_named"] = sum(r["share_named"] for r in sel) / len(sel)
            summary[f"{axis}_share_named_after_swap"] = sum(r["share_named_after_swap"] for r in sel) / len(sel)
    sel = [r for r in rows if r["axis"] == "referring" and r["share_named"] == r["share_named"]]
    if sel:
        summary["referring_n"] = len(sel)
        summary["referring_share_named"] = sum(r["share_named"] for r in sel) / len(sel)
        summary["referring_dice_named_lung"] = sum(r["dice_named_lung"] for r in sel) / len(sel)
    append_result(Path(args.out), summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "items"}), flush=True)


def table_start(args: argparse.Namespace) -> None:
    """How fast training leaves the all-background start (issue 14 part 6).

    The bundle's own network, loss, optimizer and data loaders (``configs/train.json`` + the modality layer +
    ``--set``), trained in a plain loop that records per epoch the mean foreground probability on foreground
    and background pixels, the predicted foreground share and the validation Dice (eval mode, argmax).
    """
    import time

    import monai
    import torch
    from monai.bundle import ConfigParser

    out = Path(args.out)
    datalist = smoke_datalist(out) if args.smoke else Path(args.datalist)
    layers = [TRAIN, str(CONFIGS / "modality" / f"{args.modality}.json")]
    if args.variant == "unet":
        layers += VARIANTS["unet"][0]
    options = {**(SMOKE_OPTIONS if args.smoke else {}), "image_size": [args.size, args.size], **parse_sets(args.set)}
    parser = ConfigParser()
    parser.read_config(layers)
    parser.update({"datalist": str(datalist), "bundle_root": str(out), "seed": args.seed, **options})
    monai.utils.set_determinism(args.seed)
    net = parser.get_parsed_content("network")
    loss_fn, optimizer = parser.get_parsed_content("loss"), parser.get_parsed_content("optimizer")
    train, val = parser.get_parsed_content("train#dataloader"), parser.get_parsed_content("validate#dataloader")
    forward = (lambda b: net(b["image"])) if args.variant == "unet" else (lambda b: net(b["image"], b["text"]))
    dice = monai.metrics.DiceMetric(include_background=False)
    name = f"start_{args.variant}{args.tag}_seed{args.seed}"
    curve: list[dict[str, float]] = []
    for epoch in range(1, args.epochs + 1):
        net.train()
        start, rows = time.perf_counter(), []
        for batch in train:
            logits = forward(batch)
            loss = loss_fn(logits, batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            p_fg, fg = logits.detach().softmax(1)[:, 1], batch["label"][:, 0] > 0.5
            rows.append([loss.item(), p_fg[fg].mean().item(), p_fg[~fg].mean().item(), (p_fg > 0.5).float().mean().item()])
        net.eval()
        dice.reset()
        with torch.no_grad():
            for batch in val:
                pred = torch.nn.functional.one_hot(forward(batch).argmax(1), 2).permute(0, 3, 1, 2)
                dice(pred, torch.cat([1 - batch["label"], batch["label"]], 1))
        mean = torch.tensor(rows).mean(0).tolist()
        row = {"epoch": epoch, "loss": mean[0], "p_fg_on_fg": mean[1], "p_fg_on_bg": mean[2], "pred_fg_share": mean[3],
               "val_dice": dice.aggregate().item(), "seconds": time.perf_counter() - start}
        curve.append(row)
        print(f"{name} epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "epoch"), flush=True)
    append_result(out, {"name": name, "table": "start", "layers": layers, "options": options, "datalist": str(datalist),
                        "curve": curve, "machine": machine()})


def table_label_resize(args: argparse.Namespace) -> None:
    """How much of a Dice score is the resizing of the reference mask (issue 13, the training recipe)?

    The predictions of a recorded run on its validation images (256 px) are scored against the reference
    mask of the run's own validation preprocessing (what its evaluation measured) and resized three more
    ways: PIL nearest neighbour (pixel-centre sampling, like the image's resize), PIL bilinear then
    thresholded at half (as the stand-alone script of issue 13 did), and not at all (the original
    resolution, the logits resized up bilinearly: the mask a user gets back). Same predictions each time.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    record = next(r for r in read_results(Path(args.results)) if r["name"] == args.run and "metrics" in r)
    net, preprocess = load_run(args.results, record, args.datalist)

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)

    rows = []
    for item in load_datalist(args.datalist, "validation"):
        data = preprocess(dict(item))
        with torch.inference_mode():
            logits = net(data["image"][None].float(), text=[data["text"]])  # (1, 2, X, Y)
        pred = logits.argmax(1)[0].numpy().T > 0  # rows, columns at 256 px
        levels = np.asarray(Image.open(item["label"]).convert("L"), dtype=np.float32)
        reference = Image.fromarray(levels / max(float(levels.max()), 1.0))  # 0 / 1, mode "F"
        size = pred.shape[::-1]  # PIL: (width, height)
        full = np.asarray(reference) > 0.5
        up = F.interpolate(logits, size=full.shape[::-1], mode="bilinear", align_corners=False).argmax(1)[0].numpy().T > 0
        rows.append({
            "image": item["image"],
            "dice_bundle_label": dice(pred, data["label"][0].numpy().T > 0),
            "dice_nearest": dice(pred, np.asarray(reference.resize(size, Image.NEAREST)) > 0.5),
            "dice_bilinear": dice(pred, np.asarray(reference.resize(size, Image.BILINEAR)) > 0.5),
            "dice_original_size": dice(up, full),
        })
    summary = {"name": f"label_resize_{args.run}", "run": args.run, "items": rows, "machine": machine()}
    for key in ("dice_bundle_label", "dice_nearest", "dice_bilinear", "dice_original_size"):
        summary[key] = sum(r[key] for r in rows) / len(rows)
    append_result(Path(args.out), summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "items"}), flush=True)


def table_tta(args: argparse.Namespace) -> None:
    """Test-time augmentation that keeps the text true: recorded runs re-evaluated with ``tta`` off and on.

    Each run's best checkpoint is evaluated twice through the current ``configs/evaluate.json`` with the
    config layers, options and datalist it was trained with; only ``tta`` differs (on: the average over
    the identity and the run's ``augment_symmetries``, sentences rewritten, ``bundle.engine.TextInferer``).
    """
    records = {r["name"]: r for r in read_results(Path(args.results)) if "metrics" in r}
    for run in args.runs:
        if run not in records:
            raise BundleInputError(f"no finished run {run!r} in {args.results}/results.jsonl")
        record = records[run]
        words = shlex.split(record["evaluate"]["command"])
        datalist = words[words.index("--datalist") + 1]
        layers = [str(ROOT / x) for x in record["layers"]]
        summary: dict[str, Any] = {"name": f"tta_{run}", "run": run, "machine": machine()}
        for tta in (False, True):
            out_dir = Path(args.out) / f"{run}_tta_{'on' if tta else 'off'}"
            options = {**record["options"], "datalist": datalist, "ckpt_dir": str(Path(args.results) / run / "models"),
                       "output_dir": str(out_dir), "split": "validation", "tta": tta}
            result = run_logged(bundle_command("evaluating", [TRAIN, *layers, EVALUATE], options), out_dir / "evaluate.log")
            if result["returncode"] != 0:
                raise RuntimeError(f"evaluating {run} failed, see {out_dir / 'evaluate.log'}")
            metrics = json.loads((out_dir / "evaluation_validation.json").read_text())
            summary["tta_on" if tta else "tta_off"] = {**{k: v for k, v in metrics.items() if k != "per_image"},
                                                      "seconds": result["seconds"], "command": result["command"]}
        append_result(Path(args.out), summary)
        off, on = summary["tta_off"], summary["tta_on"]
        print(f"{run}: per-image Dice {100 * off['per_image_mean_dice']:.2f} -> {100 * on['per_image_mean_dice']:.2f}, "
              f"global Dice {100 * off['global_dice']:.2f} -> {100 * on['global_dice']:.2f}", flush=True)
