"""Speed tables (``scripts/benchmark.py speed``, ``text-encoders``): training images/s, inference latency and
peak memory per pipeline, each measured in its own ``_speed-worker`` process (``scripts/gpu_check.py`` runs
the same workers on CUDA); BERT-base vs ModernBERT-base encoding time with and without the text cache."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bundle.errors import BundleInputError
from scripts.bench_runs import CONFIGS, PAPER_TIMESTEPS, ROOT, SMOKE_OPTIONS, TRAIN, VARIANTS, append_result, machine

#: the command-line entry point whose ``_speed-worker`` subcommand runs one pipeline
BENCHMARK = str(ROOT / "scripts" / "benchmark.py")


def table_speed(args: argparse.Namespace) -> None:
    """Each pipeline in its own process (separate peak RSS): training images/s and inference latency."""
    out = Path(args.out)
    for pipeline in args.pipelines:
        cmd = [sys.executable, BENCHMARK, "_speed-worker", "--pipeline", pipeline,
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
        # the timesteps one after another; the backbone a diffusion UNet (MONAI's DiffusionModelUNet, as in 0.3.x)
        layers += [str(CONFIGS / "backbone" / "diffusion_model_unet.json"), str(CONFIGS / "ablation" / "textdiff_head.json")]
        overrides.update({"backbone_trainable": False, "timesteps": list(PAPER_TIMESTEPS), "text_encoder_path": str(_bert_base_folder("bert", tmp / "bert", smoke)),
                          "text_max_tokens": 10})
        overrides["network_def#textdiff_width"] = 768 if not smoke else 8
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


def own_peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not inherit the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1e6
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def speed_worker(args: argparse.Namespace) -> None:
    import torch
    from monai.losses import DiceCELoss

    from bundle.engine import TextInferer

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
    def median_seconds(call) -> float:
        """Median of ``--repeats`` timed calls ``call(i)`` after one warm-up call."""
        call(0)
        times = []
        for i in range(args.repeats):
            sync()
            start = time.time()
            call(i)
            sync()
            times.append(time.time() - start)
        return sorted(times)[len(times) // 2]

    # what evaluate / inference run on H&E by default (tta: true): identity + the four training reflections
    tta = TextInferer(symmetries="reflections", reads_text=text_input)
    with torch.inference_mode():
        single_seconds = median_seconds(lambda i: net(single, **({"text": [sentences[i % 3]]} if text_input else {})))
        tta_seconds = median_seconds(lambda i: tta(single, net, text=[sentences[i % 3]] if text_input else None))
    record = {
        "name": f"speed_{args.pipeline}",
        "pipeline": args.pipeline,
        "device": str(device),
        "image_size": size,
        "batch": b,
        "train_images_per_s": b / train_seconds,
        "train_seconds_per_step": train_seconds,
        "inference_seconds_per_image": single_seconds,
        "inference_tta_passes": len(tta.symmetries),
        "inference_tta_seconds_per_image": tta_seconds,
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
