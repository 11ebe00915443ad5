"""What every benchmark table shares: the measured configurations, running the bundle's commands, results.jsonl.

A run is ``python -m monai.bundle run training ...`` then ``... evaluating ...`` on the shipped configs
(:func:`train_and_evaluate`), its output in ``<out>/<name>/{train,evaluate}.log``; each run appends one
JSON record (the exact command, machine, metrics, validation curve) to ``<out>/results.jsonl``
(:func:`append_result`), which ``scripts/benchmark.py report`` reads back (:func:`read_results`).
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bundle.data import write_datalist
from bundle.errors import BundleInputError
from scripts.prepare_lvit import convert_lvit

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
PRETRAIN = str(CONFIGS / "pretrain_diffusion.json")

PAPER_TIMESTEPS = (50, 150, 250)  # LCPDN / TextDiff's feature timesteps

#: accuracy variants: extra config layers on train.json and option overrides
VARIANTS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "lcpdn": ([], {}),
    "lcpdn_paper_timesteps": ([], {"timesteps": list(PAPER_TIMESTEPS)}),
    # the frozen image encoder's stride 2-16 feature maps as extra LTFR scales (not in the paper)
    "lcpdn_encoder_scales": ([str(CONFIGS / "ablation" / "encoder_scales.json")], {}),
    # issue 13: a diffusion UNet whose encoder starts from ImageNet EfficientNet-Lite0, and the same encoder
    # in MONAI's image-only FlexibleUNet (the fair baseline: a gain could come from the weights alone)
    "lcpdn_lite0": ([str(CONFIGS / "backbone" / "efficientnet_lite0.json")], {}),
    # the default before 0.4.0: LCPDN on MONAI's DiffusionModelUNet (channels 16-32-64-128-128, blocks 2, 4, 6, 8)
    "lcpdn_diffusion_unet": ([str(CONFIGS / "backbone" / "diffusion_model_unet.json")], {}),
    "unet": ([str(CONFIGS / "baseline" / "unet.json")], {}),
    "flexunet_lite0": ([str(CONFIGS / "baseline" / "flexible_unet.json")], {}),
    "cprfl_off": ([str(CONFIGS / "ablation" / "cprfl_off.json")], {}),
    "ltfr_off": ([str(CONFIGS / "ablation" / "ltfr_off.json")], {}),
    # TextDiff's 768-wide head needs ~1.4 TFLOP per 256 px training image: 64 wide keeps it trainable on a CPU
    "textdiff_head": ([str(CONFIGS / "ablation" / "textdiff_head.json")], {"network_def#textdiff_width": 64}),
}

#: variants that read no text (the lesion tables train them once per split, not once per sentence source)
IMAGE_ONLY = ("unet", "flexunet_lite0")

#: speed pipelines: the default, the paper's timesteps, the UNet baseline and the TextDiff-faithful pipelines
PIPELINES = ("lcpdn", "lcpdn_paper_timesteps", "lcpdn_diffusion_unet", "lcpdn_lite0", "unet", "flexunet_lite0",
             "textdiff_faithful", "textdiff_faithful_adm")

#: the tiny network of --smoke runs (32 px), also the tests' tiny network (tests/conftest.py)
SMOKE_OPTIONS: dict[str, Any] = {
    "backbone_channels": [8, 16],  # the widths of configs/backbone/diffusion_model_unet.json (0.3.x default)
    "backbone_attention_levels": [False, True],
    "backbone_head_channels": 8,
    "backbone_norm_groups": 8,
    "blocks": [0, 2],
    "prompt_dim": 16,
    "fusion_dim": 8,
    "image_size": [32, 32],
    "unet_features": [8, 8, 16, 16, 16, 8],
}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def append_result(out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_results(folder: Path) -> list[dict[str, Any]]:
    path = folder / "results.jsonl"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cli_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, bool)) or value is None else str(value)


def run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` with output to ``log``; return exit code, wall seconds and the child's peak RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, stdout=f,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "seconds": time.time() - start, "peak_rss_gb": usage.ru_maxrss / 1e6,
            "command": " ".join(cmd)}


def bundle_command(run_id: str, config_files: Sequence[str], options: dict[str, Any]) -> list[str]:
    files = config_files[0] if len(config_files) == 1 else json.dumps(list(config_files))
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", files]
    for key, value in options.items():
        cmd += [f"--{key}", cli_value(value)]
    return cmd


def parse_curve(log: Path) -> dict[str, list[float]]:
    """Per-epoch validation Dice / IoU, mean training loss and the engine's best epoch so far from a training
    log: the epoch lines of ``bundle.engine.EpochSummary`` ("epoch 3/20: train loss 0.8652, ..., val Dice
    0.6210, val IoU 0.4577 (best 0.6210, epoch 3), ..."). The logged values have 4 decimals; the best
    epoch is the engine's full-precision choice, the epoch of the saved ``model.pt``."""
    from bundle.engine import metric_label

    text = log.read_text(encoding="utf-8", errors="replace")
    curve: dict[str, list[float]] = {"val_mean_dice": [], "val_mean_iou": [], "train_loss_avg": [], "best_epoch": []}
    for line in text.splitlines():
        if not re.search(r"\bepoch \d+/\d+: ", line):
            continue
        for key in ("val_mean_dice", "val_mean_iou", "train_loss_avg"):
            m = re.search(rf"[:,] {metric_label(key)} ([0-9.eE+-]+)", line)
            if m:
                curve[key].append(float(m.group(1)))
        m = re.search(r"\(best [0-9.]+, epoch (\d+)\)", line)
        if m:
            curve["best_epoch"].append(int(m.group(1)))
    return curve


def train_and_evaluate(
    name: str,
    out: Path,
    datalist: Path,
    layers: Sequence[str],
    options: dict[str, Any],
    split: str = "validation",
) -> dict[str, Any]:
    """Train one configuration with the bundle's configs, evaluate its best checkpoint, record everything."""
    run_dir = out / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    common = {
        "datalist": str(datalist),
        "ckpt_dir": str(run_dir / "models"),
        "log_dir": str(run_dir / "runs"),
        "output_dir": str(run_dir / "eval"),
        **options,
    }
    train = run_logged(bundle_command("training", [TRAIN, *layers], common), run_dir / "train.log")
    record: dict[str, Any] = {"name": name, "options": options, "layers": [os.path.relpath(x, ROOT) for x in layers],
                              "train": train, "machine": machine()}
    if train["returncode"] != 0:
        record["error"] = (run_dir / "train.log").read_text()[-3000:]
        append_result(out, record)
        raise RuntimeError(f"training {name} failed, see {run_dir / 'train.log'}")
    record["curve"] = parse_curve(run_dir / "train.log")
    evaluation = run_logged(
        bundle_command("evaluating", [TRAIN, *layers, EVALUATE], {**common, "split": split}), run_dir / "evaluate.log"
    )
    record["evaluate"] = evaluation
    summary_file = run_dir / "eval" / f"evaluation_{split}.json"
    if evaluation["returncode"] != 0 or not summary_file.is_file():
        record["error"] = (run_dir / "evaluate.log").read_text()[-3000:]
        append_result(out, record)
        raise RuntimeError(f"evaluating {name} failed, see {run_dir / 'evaluate.log'}")
    record["metrics"] = json.loads(summary_file.read_text())
    append_result(out, record)
    m = record["metrics"]
    print(f"{name}: per-image Dice {100 * m['per_image_mean_dice']:.2f}, IoU {100 * m['per_image_mean_iou']:.2f}, "
          f"global Dice {100 * m['global_dice']:.2f} ({train['seconds'] / 60:.1f} min, {train['peak_rss_gb']:.1f} GB)",
          flush=True)
    return record


def lvit_datalist(data: str, out: Path, train_items: int | None = None, seed: int = 0) -> Path:
    """Datalist of an LViT-layout dataset (optionally only ``train_items`` training images, chosen by seed)."""
    datalist = convert_lvit(data, None, log=None)
    if train_items:
        rng = random.Random(seed)
        datalist["training"] = sorted(rng.sample(datalist["training"], train_items), key=lambda x: x["image"])
    path = out / (f"datalist_{train_items}_seed{seed}.json" if train_items else "datalist.json")
    write_datalist(str(path), datalist)
    return path


def smoke_datalist(out: Path) -> Path:
    """The committed tiny LViT fixture, for --smoke runs."""
    return lvit_datalist(str(ROOT / "tests" / "data" / "lvit_tiny"), out)


def parse_sets(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` options (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise BundleInputError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_run(results: str | Path, record: dict[str, Any], datalist: str):
    """The trained network of a recorded run (its config layers and options, ``<results>/<name>/models/model.pt``)
    in eval mode, and its validation preprocessing for ``datalist``'s items."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([TRAIN, *[str(ROOT / layer) for layer in record["layers"]]])
    parser.update({**record["options"], "datalist": datalist})
    net = parser.get_parsed_content("network_def")
    weights = Path(results) / record["name"] / "models" / "model.pt"
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    return net, parser.get_parsed_content("validate#preprocessing")
