"""Reproducible benchmarks behind docs/benchmarks.md: one command per table.

Every accuracy number comes from the bundle's own configs run as a user runs them
(``python -m monai.bundle run training ...`` then ``... evaluating ...``), so what is measured is what
ships. Results are appended as JSON lines to ``<out>/results.jsonl`` (one line per run, with the exact
command), and ``report`` turns them into the markdown tables and figures of docs/benchmarks.md.

    python scripts/benchmark.py accuracy --data ../shared/data/monuseg --out bench/accuracy --seeds 0 1
    python scripts/benchmark.py ct --ct-dir ../shared/data/ct_lung --out bench/ct
    python scripts/benchmark.py label-efficiency --data ../shared/data/monuseg --out bench/label_efficiency
    python scripts/benchmark.py speed --out bench/speed
    python scripts/benchmark.py text-encoders --out bench/text_encoders
    python scripts/benchmark.py figure --results bench/accuracy --runs lcpdn_seed0 unet_seed0 --datalist bench/accuracy/datalist.json
    python scripts/benchmark.py report --out bench --doc-figures docs/figures

``--smoke`` runs any table on tiny settings (tests use it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bundle.data import load_datalist, write_datalist  # noqa: E402
from bundle.errors import BundleInputError  # noqa: E402
from scripts.prepare_lvit import convert_lvit, run_cli  # noqa: E402

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
    "lcpdn_encoder_scales": ([], {"encoder_scales": [0, 1, 2, 3]}),
    "unet": ([str(CONFIGS / "baseline" / "unet.json")], {}),
    "cprfl_off": ([str(CONFIGS / "ablation" / "cprfl_off.json")], {}),
    "ltfr_off": ([str(CONFIGS / "ablation" / "ltfr_off.json")], {}),
    # TextDiff's 768-wide head needs ~1.4 TFLOP per 256 px training image: 64 wide keeps it trainable on a CPU
    "textdiff_head": ([str(CONFIGS / "ablation" / "textdiff_head.json")], {"textdiff_width": 64}),
}

#: speed pipelines: the default, the paper's timesteps, the UNet baseline and the TextDiff-faithful pipelines
PIPELINES = ("lcpdn", "lcpdn_paper_timesteps", "unet", "textdiff_faithful", "textdiff_faithful_adm")

#: tiny settings for --smoke runs and the tests (a 32 px network)
SMOKE_OPTIONS: dict[str, Any] = {
    "backbone_channels": [8, 16],
    "backbone_res_blocks": 1,
    "backbone_attention_levels": [False, True],
    "backbone_head_channels": 8,
    "backbone_norm_groups": 8,
    "blocks": [0, 2],
    "prompt_dim": 16,
    "fusion_dim": 8,
    "image_size": [32, 32],
    "textdiff_width": 8,
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


def own_peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not inherit the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1e6
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


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
    """Per-epoch validation Dice / IoU and mean training loss from a training log."""
    text = log.read_text(encoding="utf-8", errors="replace")
    curve: dict[str, list[float]] = {"val_mean_dice": [], "val_mean_iou": [], "train_loss_avg": []}
    for line in text.splitlines():
        for key in curve:
            m = re.search(rf"Metrics -- .*?\b{key}: ([0-9.eE+-]+)", line)
            if m:
                curve[key].append(float(m.group(1)))
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


# ------------------------------------------------------------------------------------------------ tables


def table_accuracy(args: argparse.Namespace) -> None:
    out = Path(args.out)
    datalist = smoke_datalist(out) if args.smoke else lvit_datalist(args.data, out)
    base = {"epochs": args.epochs, **(SMOKE_OPTIONS if args.smoke else {}), **parse_sets(args.set)}
    ckpt = pretrain_backbone(args, out, datalist, base) if "lcpdn_pretrained" in args.variants else None
    for seed in args.seeds:
        for variant in args.variants:
            layers, options = VARIANTS[variant] if variant in VARIANTS else ([], {"backbone_ckpt": ckpt})
            options = {**options, **base, "seed": seed}
            if variant == "unet" and args.unet_lr:
                options["learning_rate"] = args.unet_lr
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
    base = {"epochs": args.epochs, **(SMOKE_OPTIONS if args.smoke else {}), **parse_sets(args.set)}
    for seed in args.seeds:
        for variant in args.variants:
            layers, options = VARIANTS[variant]
            options = {**options, **base, "seed": seed}
            if variant == "unet" and args.unet_lr:
                options["learning_rate"] = args.unet_lr
            train_and_evaluate(f"ct_{variant}{args.tag}_seed{seed}", out, path, [modality, *layers], options)


def pretrain_backbone(args: argparse.Namespace, out: Path, datalist: Path, base: dict[str, Any]) -> str:
    """Stage-1 denoising pretraining of the backbone (or ``--backbone-ckpt`` when given); returns the checkpoint."""
    if args.backbone_ckpt:
        return args.backbone_ckpt
    pre_dir = out / "pretrain"
    pre_opts = {**base, "datalist": str(datalist), "ckpt_dir": str(pre_dir / "models"), "log_dir": str(pre_dir / "runs"),
                "pretrain_epochs": args.pretrain_epochs, "pretrain_splits": args.pretrain_splits}
    pre_opts.pop("epochs", None)
    if args.smoke:
        pre_opts["pretrain_crop"] = [32, 32]
    pre = run_logged(bundle_command("pretraining", [TRAIN, PRETRAIN], pre_opts), pre_dir / "pretrain.log")
    append_result(out, {"name": "pretrain", "train": pre, "options": pre_opts, "machine": machine()})
    if pre["returncode"] != 0:
        raise RuntimeError(f"pretraining failed, see {pre_dir / 'pretrain.log'}")
    return str(pre_dir / "models" / "backbone_pretrained.pt")


def table_label_efficiency(args: argparse.Namespace) -> None:
    """The default config on few labelled images, with and without stage-1 pretraining on unlabelled images."""
    out = Path(args.out)
    full = smoke_datalist(out) if args.smoke else lvit_datalist(args.data, out)
    few = out / "datalist_few.json"
    items = load_datalist(str(full), "training")
    rng = random.Random(args.subset_seed)
    write_datalist(str(few), {"training": sorted(rng.sample(items, min(args.train_items, len(items))), key=lambda x: x["image"]),
                              "validation": load_datalist(str(full), "validation")})
    base = {"epochs": args.epochs, **(SMOKE_OPTIONS if args.smoke else {}), **parse_sets(args.set)}
    ckpt = pretrain_backbone(args, out, full, base)
    for seed in args.seeds:
        for variant in args.variants:
            layers, options = VARIANTS[variant]
            options = {**options, **base, "seed": seed}
            if variant == "unet" and args.unet_lr:
                options["learning_rate"] = args.unet_lr
            train_and_evaluate(f"few{args.train_items}_{variant}{args.tag}_seed{seed}", out, few, layers, options)
        train_and_evaluate(f"few{args.train_items}_lcpdn_pretrained{args.tag}_seed{seed}", out, few, [],
                           {**base, "seed": seed, "backbone_ckpt": ckpt})


def table_lesions(args: argparse.Namespace) -> None:
    """Lesion sets from image / mask folders (chest X-ray, CT): LCPDN with each sentence source, and the UNet.

    One patient-grouped split (``scripts/prepare_masks.py``) is made per sentence source, the same split
    each time (same seed, same groups): only the text differs between the LCPDN rows.
    """
    from scripts.prepare_masks import convert_masks

    out = Path(args.out)
    modality_layer = str(CONFIGS / "modality" / f"{args.modality}.json")
    base = {"epochs": args.epochs, **(SMOKE_OPTIONS if args.smoke else {}), **parse_sets(args.set)}
    datalists = {}
    for source in args.text_sources:
        datalist = convert_masks(args.images, args.masks, args.lungs, args.csv, modality=args.modality, text=source,
                                 group_column=args.group_column, orientation=args.orientation,
                                 notes_fallback="constant" if source == "notes" else None,
                                 val_fraction=args.val_fraction, seed=args.split_seed)
        datalists[source] = out / f"datalist_{source}.json"
        write_datalist(str(datalists[source]), datalist)
    for seed in args.seeds:
        for source in args.text_sources if "lcpdn" in args.variants else []:
            train_and_evaluate(f"{args.name}_lcpdn_{source}{args.tag}_seed{seed}", out, datalists[source], [modality_layer],
                               {**base, "seed": seed})
        if "unet" in args.variants:
            layers, options = VARIANTS["unet"]
            train_and_evaluate(f"{args.name}_unet{args.tag}_seed{seed}", out, datalists[args.text_sources[0]],
                               [modality_layer, *layers], {**options, **base, "seed": seed})


def table_steering(args: argparse.Namespace) -> None:
    """Does the mask follow the text? Swap left / right (and upper / lower) in each validation sentence.

    For every validation item whose sentence names one side (or one zone), the share of the predicted
    foreground in that half of the standard display is measured with the sentence as written and with
    the side (zone) swapped: if the text steers, the share moves to the newly named half.
    """
    import torch
    from monai.bundle import ConfigParser

    from bundle import dihedral

    record = next(r for r in read_results(Path(args.results)) if r["name"] == args.run and "metrics" in r)
    parser = ConfigParser()
    parser.read_config([TRAIN, *[str(ROOT / layer) for layer in record["layers"]]])
    parser.update({**record["options"], "datalist": args.datalist})
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(Path(args.results) / args.run / "models" / "model.pt", map_location="cpu",
                                   weights_only=True))
    net.eval()
    preprocess = parser.get_parsed_content("validate#preprocessing")
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
                preds = [net(data["image"][None].float(), text=[t]).argmax(1) for t in
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
    summary = {"name": f"steering_{args.run}", "run": args.run, "items": rows, "machine": machine()}
    for axis in ("x", "y"):
        sel = [r for r in rows if r["axis"] == axis and r["share_named"] == r["share_named"] and r["share_named_after_swap"] == r["share_named_after_swap"]]
        if sel:
            summary[f"{axis}_n"] = len(sel)
            summary[f"{axis}_share_named"] = sum(r["share_named"] for r in sel) / len(sel)
            summary[f"{axis}_share_named_after_swap"] = sum(r["share_named_after_swap"] for r in sel) / len(sel)
    append_result(Path(args.out), summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "items"}), flush=True)


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


# ------------------------------------------------------------------------------------------------ speed


def table_speed(args: argparse.Namespace) -> None:
    """Each pipeline in its own process (separate peak RSS): training images/s and inference latency."""
    out = Path(args.out)
    for pipeline in args.pipelines:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_speed-worker", "--pipeline", pipeline,
               "--steps", str(args.steps), "--batch", str(args.batch), "--repeats", str(args.repeats)]
        if args.smoke:
            cmd.append("--smoke")
        result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"speed worker {pipeline} failed:\n{result.stderr[-3000:]}")
        record = json.loads(result.stdout.strip().splitlines()[-1])
        append_result(out, record)
        print(json.dumps(record), flush=True)


def _bert_base_folder(kind: str, folder: Path, smoke: bool) -> Path:
    """A random-weight BERT-base / ModernBERT-base sized encoder saved like a downloaded one."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, ModernBertConfig, ModernBertModel

    from bundle.networks.text_encoder import default_text_encoder_path

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast.from_pretrained(default_text_encoder_path(), local_files_only=True)  # BERT WordPiece
    size = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128) if smoke else {}
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **size))  # 768-d, 12 layers: ~109M
    else:
        model = ModernBertModel(ModernBertConfig(vocab_size=max(tokenizer.vocab_size, 50368), pad_token_id=0,
                                                 **size))  # 768-d, 22 layers: ~149M
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_pipeline(pipeline: str, smoke: bool, tmp: Path):
    """Return (network, needs_text) for a speed pipeline, built from the bundle's configs and modules."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    layers = [TRAIN]
    overrides: dict[str, Any] = dict(SMOKE_OPTIONS) if smoke else {}
    if pipeline in VARIANTS:  # lcpdn, lcpdn_paper_timesteps, unet: the accuracy tables' configurations
        layers += VARIANTS[pipeline][0]
        overrides.update(VARIANTS[pipeline][1])
    elif pipeline.startswith("textdiff_faithful"):
        # TextDiff / FastTextDiff's research pipeline built from our modules: frozen backbone, TextDiff head (768),
        # a BERT-base text encoder re-run on every item of every step (no cache), the full decoder run, and
        # the timesteps one after another
        layers.append(str(CONFIGS / "ablation" / "textdiff_head.json"))
        overrides.update({"backbone_trainable": False, "timesteps": list(PAPER_TIMESTEPS), "text_encoder_path": str(_bert_base_folder("bert", tmp / "bert", smoke)),
                          "text_max_tokens": 10})
        if not smoke:
            overrides["textdiff_width"] = 768
    parser.read_config(layers)
    parser.update(overrides)
    net = parser.get_parsed_content("network_def")
    if pipeline.startswith("textdiff_faithful"):
        net.text_encoder.cache_size = 0
        net.extractor.batch_timesteps = False
        net.extractor.stop_early = False
        if pipeline == "textdiff_faithful_adm":
            from bundle.networks.adm import ADMUNet

            kwargs = dict(model_channels=32, image_size=64, num_head_channels=16) if smoke else {}
            adm = ADMUNet(**kwargs).requires_grad_(False).eval()
            blocks = [4, 6, 8, 12] if not smoke else [1, 2]
            from bundle.networks import LCPDN

            net = LCPDN(adm, net.text_encoder, None, blocks=blocks, timesteps=PAPER_TIMESTEPS, cprfl=False, fusion="textdiff",
                        textdiff_width=768 if not smoke else 8, backbone_trainable=False)
            net.text_encoder.cache_size = 0
            net.extractor.batch_timesteps = False
            net.extractor.stop_early = False
    return net, not isinstance(net, torch.nn.Module) or hasattr(net, "text_encoder")


def speed_worker(args: argparse.Namespace) -> None:
    import torch
    from monai.losses import DiceCELoss

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BundleInputError(f"--device {args.device}: torch.cuda.is_available() is False")
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # CUDA runs asynchronously: time finished work
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        net, text_input = build_pipeline(args.pipeline, args.smoke, Path(tmp))
    net = net.to(device)
    size = 32 if args.smoke else 256
    if args.pipeline == "textdiff_faithful_adm" and args.smoke:
        size = 64
    b = args.batch
    x = (torch.rand(b, 3, size, size) * 2 - 1).to(device)
    y = (torch.rand(b, 1, size, size) > 0.6).float().to(device)
    sentences = ["The nuclei are evenly distributed.", "The nuclei density in the upper right is high.",
                 "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."]
    kwargs = (lambda i: {"text": [sentences[(i + k) % 3] for k in range(b)]}) if text_input else (lambda i: {})
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, 1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    net.train()

    def train_step(i: int) -> None:
        opt.zero_grad()
        loss = loss_fn(net(x, **kwargs(i)), y)
        loss.backward()
        opt.step()

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    train_step(0)  # warm-up (and first encodings)
    sync()
    start = time.time()
    for i in range(args.steps):
        train_step(i + 1)
    sync()
    train_seconds = (time.time() - start) / args.steps
    net.eval()
    single = x[:1]
    with torch.inference_mode():
        net(single, **({"text": [sentences[0]]} if text_input else {}))
        times = []
        for i in range(args.repeats):
            sync()
            start = time.time()
            net(single, **({"text": [sentences[i % 3]]} if text_input else {}))
            sync()
            times.append(time.time() - start)
    record = {
        "name": f"speed_{args.pipeline}",
        "pipeline": args.pipeline,
        "device": str(device),
        "image_size": size,
        "batch": b,
        "train_images_per_s": b / train_seconds,
        "train_seconds_per_step": train_seconds,
        "inference_seconds_per_image": sorted(times)[len(times) // 2],
        "peak_rss_gb": own_peak_rss_gb(),
        "trainable_parameters": sum(p.numel() for p in params),
        "machine": machine(),
    }
    if cuda:
        record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(record))


def table_text_encoders(args: argparse.Namespace) -> None:
    """BERT-base vs ModernBERT-base (random weights, real size) encoding time, with and without the cache."""
    import torch

    from bundle.networks.text_encoder import TextEncoder, clear_text_cache

    monuseg = ["The nuclei are evenly distributed.", "The nuclei density in the upper right is high.",
               "The nuclei are sparsely distributed.", "The nuclei density in the lower left is high."]
    qata = ["Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung.",
            "Unilateral pulmonary infection, one infected area, lower right lung.",
            "Bilateral pulmonary infection, three infected areas, middle left lung and lower right lung."]
    out = Path(args.out)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("bert", "modernbert"):
            folder = _bert_base_folder(kind, Path(tmp) / kind, args.smoke)
            for cache in (False, True):
                enc = TextEncoder(str(folder), max_tokens=32, cache_size=4096 if cache else 0)
                params = sum(p.numel() for p in enc.model.parameters())
                for name, pool in (("monuseg", monuseg), ("qata", qata)):
                    clear_text_cache()
                    batches = [[pool[(i + k) % len(pool)] for k in range(args.batch)] for i in range(args.batches)]
                    enc(batches[0])  # warm-up
                    if cache:
                        clear_text_cache()
                    start = time.time()
                    for batch in batches:
                        enc(batch)
                    seconds = (time.time() - start) / len(batches)
                    record = {"name": f"text_{kind}_{name}_{'cache' if cache else 'nocache'}", "encoder": kind,
                              "parameters": params, "sentences": name, "cache": cache, "batch": args.batch,
                              "seconds_per_batch": seconds, "machine": machine()}
                    append_result(out, record)
                    print(json.dumps(record), flush=True)


# ------------------------------------------------------------------------------------------------ report


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    half = (max(values) - min(values)) / 2
    return f"{100 * mean:.2f} ± {100 * half:.2f}"


def _best_epoch(record: dict[str, Any]) -> str:
    """Epoch (1-based) of the best validation Dice in a run's curve, or "-" when it has none."""
    curve = (record.get("curve") or {}).get("val_mean_dice") or []
    return str(max(range(len(curve)), key=curve.__getitem__) + 1) if curve else "-"


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
    lines = [f"| pipeline | trainable params | train batch | train images/s | inference s/image | peak RSS GB | "
             f"train speed vs {reference} | inference speed vs {reference} |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = (f"{r['train_images_per_s'] / ref['train_images_per_s']:.1f}x | "
                  f"{ref['inference_seconds_per_image'] / r['inference_seconds_per_image']:.1f}x") if ref else "- | -"
        lines.append(f"| {r['pipeline']} | {r['trainable_parameters'] / 1e6:.2f}M | {r['batch']} | {r['train_images_per_s']:.3f} | "
                     f"{r['inference_seconds_per_image']:.3f} | {r['peak_rss_gb']:.2f} | {ratios} |")
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
    from monai.bundle import ConfigParser
    from skimage.segmentation import find_boundaries

    plt = _pyplot()

    records = {r["name"]: r for r in read_results(Path(args.results)) if "metrics" in r}
    runs = [records[name] for name in args.runs]
    datalist = args.datalist
    items = load_datalist(datalist, "validation")[: args.images]
    columns = len(runs) + 1
    fig, axes = plt.subplots(len(items), columns, figsize=(3 * columns, 3 * len(items)), squeeze=False)
    for col, record in enumerate(runs):
        parser = ConfigParser()
        parser.read_config([TRAIN, *[str(ROOT / layer) for layer in record["layers"]]])
        parser.update({**record["options"], "datalist": datalist})
        net = parser.get_parsed_content("network_def")
        state = torch.load(Path(args.results) / record["name"] / "models" / "model.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval()
        preprocess = parser.get_parsed_content("validate#preprocessing")
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


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="table", required=True)

    def common(q: argparse.ArgumentParser, out: str) -> None:
        q.add_argument("--out", default=out, help="results folder (results.jsonl is appended)")
        q.add_argument("--smoke", action="store_true", help="tiny settings on the committed test fixtures")
        q.add_argument("--set", action="extend", nargs="+", default=[], help="extra config options key=value for every run (repeatable)")
        q.add_argument("--tag", default="", help="suffix of the run names (e.g. _t0 for a probe with --set timesteps=[0])")

    def pretraining(q: argparse.ArgumentParser, splits: list[str]) -> None:
        q.add_argument("--pretrain-epochs", type=int, default=300)
        q.add_argument("--pretrain-splits", nargs="+", default=splits, help="datalist splits whose images (no labels) pretrain")
        q.add_argument("--backbone-ckpt", default=None, help="reuse a pretrained backbone instead of pretraining")

    q = sub.add_parser("accuracy", help="MoNuSeg: LCPDN, UNet baseline, ablations, TextDiff-style head")
    common(q, "bench/accuracy")
    q.add_argument("--data", help="LViT-layout MoNuSeg folder")
    q.add_argument("--variants", nargs="+", default=["lcpdn_pretrained", *VARIANTS], choices=["lcpdn_pretrained", *VARIANTS],
                   help="lcpdn_pretrained: the default config on a stage-1 pretrained backbone")
    q.add_argument("--seeds", nargs="+", type=int, default=[0])
    q.add_argument("--epochs", type=int, default=50)
    q.add_argument("--unet-lr", type=float, default=None, help="learning rate of the UNet baseline (default: as LCPDN)")
    pretraining(q, splits=["training"])
    q = sub.add_parser("ct", help="CT slices: train on lung2, test on lung1")
    common(q, "bench/ct")
    q.add_argument("--ct-dir", help="folder with lung{1,2}_{image,label}.nrrd")
    q.add_argument("--variants", nargs="+", default=["lcpdn", "unet"], choices=list(VARIANTS))
    q.add_argument("--seeds", nargs="+", type=int, default=[0])
    q.add_argument("--epochs", type=int, default=40)
    q.add_argument("--negative-every", type=int, default=3, help="keep every n-th lesion-free training slice")
    q.add_argument("--unet-lr", type=float, default=None)
    q = sub.add_parser("label-efficiency", help="few labelled images, with and without stage-1 pretraining")
    common(q, "bench/label_efficiency")
    q.add_argument("--data", help="LViT-layout MoNuSeg folder")
    q.add_argument("--train-items", type=int, default=5)
    q.add_argument("--subset-seed", type=int, default=0)
    q.add_argument("--seeds", nargs="+", type=int, default=[0])
    q.add_argument("--epochs", type=int, default=100)
    q.add_argument("--variants", nargs="+", default=["lcpdn", "unet"], choices=list(VARIANTS),
                   help="runs without pretraining (lcpdn_pretrained always runs)")
    q.add_argument("--unet-lr", type=float, default=None)
    pretraining(q, splits=["training", "validation", "testing"])
    q = sub.add_parser("lesions", help="image / mask folders (CXR, CT): LCPDN per sentence source, and the UNet")
    common(q, "bench/lesions")
    q.add_argument("--name", default="cxr", help="prefix of the run names (cxr, ct)")
    q.add_argument("--images", required=True)
    q.add_argument("--masks", required=True)
    q.add_argument("--lungs", default=None)
    q.add_argument("--csv", default=None)
    q.add_argument("--group-column", default="patientid")
    q.add_argument("--modality", default="cxr", choices=["cxr", "ct"])
    q.add_argument("--orientation", default="standard")
    q.add_argument("--val-fraction", type=float, default=0.3)
    q.add_argument("--split-seed", type=int, default=0)
    q.add_argument("--text-sources", nargs="+", default=["generated", "constant"], choices=["generated", "constant", "notes"])
    q.add_argument("--variants", nargs="+", default=["lcpdn", "unet"], choices=["lcpdn", "unet"],
                   help="lcpdn: one run per text source; unet: one run on the first source's split")
    q.add_argument("--seeds", nargs="+", type=int, default=[0])
    q.add_argument("--epochs", type=int, default=40)
    q = sub.add_parser("steering", help="swap left/right (upper/lower) in validation sentences: does the mask follow?")
    q.add_argument("--results", required=True, help="results folder holding the run")
    q.add_argument("--run", required=True)
    q.add_argument("--datalist", required=True)
    q.add_argument("--out", default="bench/steering")
    q = sub.add_parser("speed", help="training images/s, inference latency and peak RSS per pipeline")
    common(q, "bench/speed")
    q.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    q.add_argument("--steps", type=int, default=3)
    q.add_argument("--batch", type=int, default=4)
    q.add_argument("--repeats", type=int, default=5)
    q = sub.add_parser("_speed-worker")
    q.add_argument("--pipeline", required=True)
    q.add_argument("--steps", type=int, default=3)
    q.add_argument("--batch", type=int, default=4)
    q.add_argument("--repeats", type=int, default=5)
    q.add_argument("--smoke", action="store_true")
    q.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (scripts/gpu_check.py runs the workers on CUDA)")
    q = sub.add_parser("text-encoders", help="BERT-base vs ModernBERT-base encoding time, cache on / off")
    common(q, "bench/text_encoders")
    q.add_argument("--batch", type=int, default=8)
    q.add_argument("--batches", type=int, default=20)
    q = sub.add_parser("figure", help="predictions vs ground truth of trained runs on validation images")
    q.add_argument("--results", required=True, help="results folder holding the runs (e.g. bench/accuracy)")
    q.add_argument("--runs", nargs="+", required=True, help="run names (e.g. lcpdn_seed0 unet_seed0)")
    q.add_argument("--datalist", required=True)
    q.add_argument("--images", type=int, default=3)
    q.add_argument("--figure", default="docs/figures/predictions.png")
    q = sub.add_parser("report", help="markdown tables (and the training-curve figure) from the results")
    q.add_argument("--out", default="bench")
    q.add_argument("--doc-figures", default=None, help="folder for figures (e.g. docs/figures)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table in ("accuracy", "label-efficiency") and not args.smoke and not args.data:
        raise SystemExit("ERROR: --data (an LViT-layout folder) is required without --smoke")
    if args.table == "ct" and not args.smoke and not args.ct_dir:
        raise SystemExit("ERROR: --ct-dir is required without --smoke")
    action = {
        "accuracy": table_accuracy,
        "ct": table_ct,
        "label-efficiency": table_label_efficiency,
        "speed": table_speed,
        "_speed-worker": speed_worker,
        "text-encoders": table_text_encoders,
        "figure": table_figure,
        "lesions": table_lesions,
        "steering": table_steering,
        "report": table_report,
    }[args.table]
    return run_cli(lambda: action(args))


if __name__ == "__main__":
    sys.exit(main())
