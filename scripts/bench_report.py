"""Reporting (``scripts/benchmark.py report``, ``figure``): the markdown tables of docs/benchmarks.md from the
``results.jsonl`` records, the training-curve figure, and predictions of trained runs next to the ground truth."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from bundle.data import load_datalist
from bundle.errors import BundleInputError
from scripts.bench_runs import load_run, read_results


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    half = (max(values) - min(values)) / 2
    return f"{100 * mean:.2f} ± {100 * half:.2f}"


def _best_epoch(record: dict[str, Any]) -> str:
    """Epoch (1-based) of the best validation Dice in a run's curve, or "-" when it has none: the engine's
    own choice where the log records it (4-decimal ties in the curve are then resolved as the engine did)."""
    curve = record.get("curve") or {}
    if curve.get("best_epoch"):
        return str(curve["best_epoch"][-1])
    dice = curve.get("val_mean_dice") or []
    return str(max(range(len(dice)), key=dice.__getitem__) + 1) if dice else "-"


def accuracy_table(records: list[dict[str, Any]], prefix: str = "") -> str:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if "metrics" in r:
            groups.setdefault(re.sub(r"_seed\d+$", "", r["name"]), []).append(r)
    lines = ["| configuration | seeds | per-image Dice | per-image IoU | global Dice | global IoU | best epoch | train min | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        metric = lambda k: [r["metrics"][k] for r in runs if r["metrics"].get(k) is not None]  # noqa: E731
        minutes = sum(r["train"]["seconds"] for r in runs) / len(runs) / 60
        rss = max(r["train"]["peak_rss_gb"] for r in runs)
        best = [_best_epoch(r) for r in runs]
        lines.append(f"| {prefix}{name} | {len(runs)} | {_mean_spread(metric('per_image_mean_dice'))} | "
                     f"{_mean_spread(metric('per_image_mean_iou'))} | {_mean_spread(metric('global_dice'))} | "
                     f"{_mean_spread(metric('global_iou'))} | {', '.join(best)} | {minutes:.1f} | {rss:.1f} |")
    return "\n".join(lines)


def speed_table(records: list[dict[str, Any]], reference: str = "textdiff_faithful") -> str:
    """Speed rows, with ratios against ``reference`` (the TextDiff-faithful pipeline) of the same run."""
    rows = [r for r in records if "train_images_per_s" in r]
    ref = next((r for r in reversed(rows) if r["pipeline"] == reference), None)
    lines = [f"| pipeline | trainable params | train batch | train images/s | inference s/image | inference s/image, "
             f"test-time average (passes) | peak RSS GB | train speed vs {reference} | inference speed vs {reference} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = (f"{r['train_images_per_s'] / ref['train_images_per_s']:.1f}x | "
                  f"{ref['inference_seconds_per_image'] / r['inference_seconds_per_image']:.1f}x") if ref else "- | -"
        tta = (f"{r['inference_tta_seconds_per_image']:.3f} ({r['inference_tta_passes']})"
               if "inference_tta_seconds_per_image" in r else "-")  # records written before version 0.3.3
        lines.append(f"| {r['pipeline']} | {r['trainable_parameters'] / 1e6:.2f}M | {r['batch']} | {r['train_images_per_s']:.3f} | "
                     f"{r['inference_seconds_per_image']:.3f} | {tta} | {r['peak_rss_gb']:.2f} | {ratios} |")
    return "\n".join(lines)


def text_table(records: list[dict[str, Any]]) -> str:
    lines = ["| encoder | params | sentences | cache | s / batch |", "|---|---|---|---|---|"]
    for r in records:
        if "seconds_per_batch" in r:
            lines.append(f"| {r['encoder']} | {r['parameters'] / 1e6:.0f}M | {r['sentences']} | {r['cache']} | "
                         f"{r['seconds_per_batch']:.4f} |")
    return "\n".join(lines)


def _pyplot():
    """matplotlib's pyplot (headless), or a one-line error naming the extra that installs it."""
    try:
        import matplotlib
    except ImportError:
        raise BundleInputError("figures need matplotlib: pip install -e \".[bench]\"") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in records:
        curve = r.get("curve") or {}
        if curve.get("val_mean_dice"):
            axes[0].plot(range(1, len(curve["val_mean_dice"]) + 1), curve["val_mean_dice"], label=r["name"])
        if curve.get("train_loss_avg"):
            axes[1].plot(range(1, len(curve["train_loss_avg"]) + 1), curve["train_loss_avg"], label=r["name"])
    axes[0].set(xlabel="epoch", ylabel="validation per-image Dice", title="validation Dice")
    axes[1].set(xlabel="epoch", ylabel="Dice + CE loss", title="training loss")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_figure(args: argparse.Namespace) -> None:
    """Predictions vs ground truth on validation images for trained runs (one row per image)."""
    import torch
    from skimage.segmentation import find_boundaries

    plt = _pyplot()

    records = {r["name"]: r for r in read_results(Path(args.results)) if "metrics" in r}
    runs = [records[name] for name in args.runs]
    items = load_datalist(args.datalist, "validation")[: args.images]
    columns = len(runs) + 1
    fig, axes = plt.subplots(len(items), columns, figsize=(3 * columns, 3 * len(items)), squeeze=False)
    for col, record in enumerate(runs):
        net, preprocess = load_run(args.results, record, args.datalist)
        for row, item in enumerate(items):
            data = preprocess(dict(item))
            image = data["image"][None].float()
            with torch.inference_mode():
                kwargs = {"text": [data["text"]]} if hasattr(net, "text_encoder") else {}
                pred = net(image, **kwargs).argmax(1)[0].numpy()
            picture = ((data["image"].numpy()[:3].transpose(2, 1, 0) + 1) / 2).clip(0, 1)  # (W, H) -> display (H, W)
            truth = data["label"][0].numpy().T > 0
            pred = pred.T > 0
            if col == 0:
                shown = picture.copy()
                shown[find_boundaries(truth)] = (0, 1, 0)
                axes[row][0].imshow(shown)
                axes[row][0].set_title("ground truth" if row == 0 else "")
            shown = picture.copy()
            shown[find_boundaries(pred)] = (1, 0.1, 0.1)
            inter = (pred & truth).sum()
            dice = 2 * inter / max(pred.sum() + truth.sum(), 1)
            axes[row][col + 1].imshow(shown)
            axes[row][col + 1].set_title(f"{record['name']}: Dice {100 * dice:.1f}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=100)
    plt.close(fig)
    print("wrote", args.figure)


def table_report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if not out.is_dir():
        raise BundleInputError(f"--out '{out}' is not a folder of benchmark results: run a table into it first")
    parts = []
    for folder, title, render in (("accuracy", "Accuracy, MoNuSeg", accuracy_table),
                                  ("probes", "Design probes, MoNuSeg", accuracy_table), ("ct", "Accuracy, CT", accuracy_table),
                                  ("label_efficiency", "Label efficiency", accuracy_table), ("speed", "Speed", speed_table),
                                  ("speed_batch4", "Speed, training batch 4", speed_table),
                                  ("text_encoders", "Text encoders", text_table)):
        records = read_results(out / folder)
        if records:
            parts.append(f"## {title}\n\n{render(records)}\n")
            if folder == "accuracy" and args.doc_figures:
                plot_curves(records, Path(args.doc_figures) / "training_curves.png")
    text = "\n".join(parts) or "no results yet\n"
    (out / "report.md").write_text(text)
    print(text)
