"""The GPU path, checked in one short command: one JSON report and a readable summary.

    python scripts/gpu_check.py --out eval/gpu_check.json     # on a CUDA machine: about 8 minutes, then stops
    python scripts/gpu_check.py --device cpu --tiny           # no CUDA: the same code paths on tiny settings

Sections (each returns ``{"status": "ok" | "failed" | "skipped: <reason>", ...measurements}``):

1. ``tests``: a fast pytest subset with ``LCPDN_TEST_DEVICE`` set to the device (network forward/backward,
   transforms on device tensors, the text cache on the device: tests/networks/test_device.py).
2. ``bundle_amp``: ``python -m monai.bundle run training`` on the embedded demo with ``--amp true`` in
   float16 and bfloat16, then ``evaluating`` and ``inference``; finite metrics, Dice against an fp32 CPU
   run of the same seed, peak GPU memory (``torch.cuda.max_memory_allocated`` in the run's process), images/s.
3. ``adm``: the ADM preset (``configs/adm/adm.json`` + ``configs/adm/monuseg.json``) with random weights in
   the exact checkpoint layout: training step (forward + backward) and inference at 256x256, batch 1 and
   the largest batch that fits.
4. ``torchrun``: ``configs/multi_gpu_train.json`` over every visible GPU (NCCL), when there are two or more.
5. ``speed``: the ``scripts/benchmark.py speed`` pipelines (its ``_speed-worker``) on the device.

Every CUDA measurement says ``skipped: no CUDA`` unless it ran on CUDA; what runs on CPU instead is
labelled ``ok (cpu, tiny)``. Each section has a share of ``--budget-s``; every child process is killed at
its deadline, so the command always stops by itself and writes the report (after every section).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bundle.errors import BundleInputError  # noqa: E402
from bundle.utils import atomic_write  # noqa: E402
from scripts.bench_runs import (  # noqa: E402
    CONFIGS,
    EVALUATE,
    PIPELINES,
    SMOKE_OPTIONS,
    TRAIN,
    bundle_command,
    machine,
    parse_curve,
    smoke_datalist,
)
from scripts.bench_speed import BENCHMARK  # noqa: E402
from scripts.common import run_cli  # noqa: E402

INFERENCE = str(CONFIGS / "inference.json")
MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")
ADM_LAYERS = [str(CONFIGS / "adm" / "adm.json"), str(CONFIGS / "adm" / "monuseg.json")]
ADM_MANIFEST = ROOT / "tests" / "data" / "adm256_uncond_manifest.json"
DEMO_DATALIST = ROOT / "docs" / "demo_data" / "monuseg" / "datalist.json"

NO_CUDA = "skipped: no CUDA"
OUT_OF_TIME = "skipped: time budget"  # not started: the overall deadline had come
INCOMPLETE = "incomplete: time budget"  # started, and stopped at its deadline
RESULT_MARK = "GPU_CHECK_RESULT "  # a worker's last stdout line: this mark + JSON
PEAK_MARK = "GPU_CHECK_PEAK "  # written at exit by the memory wrapper around `python -m monai.bundle`
GIB = 2**30
WORK_MARK = ".gpu_check_work"
SENTENCE = "The nuclei are evenly distributed."

#: runs `python -m monai.bundle <args>` and, at exit, prints the process's real CUDA peak memory
PEAK_WRAPPER = f"""
import atexit, json, runpy, sys
import torch

def _peak():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        print({PEAK_MARK!r} + json.dumps({{"max_memory_allocated": torch.cuda.max_memory_allocated(),
              "max_memory_reserved": torch.cuda.max_memory_reserved()}}), flush=True)

atexit.register(_peak)
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""

#: pytest subsets of section 1 (LCPDN_TEST_DEVICE only moves tests/networks/test_device.py)
TEST_SUBSET = ["tests/networks/test_device.py", "tests/networks/test_lcpdn.py", "tests/test_transforms.py", "-m", "not slow"]
TINY_TEST_SUBSET = ["tests/networks/test_device.py"]


# ------------------------------------------------------------------------------------------- plumbing


@dataclass
class Context:
    """What every section needs: the device, the size of the run and the clock."""

    device: str  # "cuda" or "cpu"
    tiny: bool
    work: Path  # scratch folder (logs, checkpoints)
    deadline: float  # time.monotonic() at which everything must have stopped
    epochs: int = 5
    dice_tolerance: float = 0.05
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def ok(self) -> str:
        """The status of a section that passed: plain "ok" only for a CUDA run."""
        if self.cuda:
            return "ok (tiny)" if self.tiny else "ok"
        return "ok (cpu, tiny)" if self.tiny else "ok (cpu)"


Section = Callable[[Context, float], dict[str, Any]]


def one_line(error: BaseException | str) -> str:
    """An exception (or text) as one line."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return " ".join(text.split())[:500]


def log_error(log: Path) -> str:
    """The line of a child's log that says what went wrong (its ERROR line, else its last line)."""
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"no log at {log}"
    for line in reversed(lines):
        if line.startswith("ERROR") or re.match(r"^\w+(Error|Exception)\b", line):
            return one_line(line)
    return one_line(lines[-1]) if lines else "no output"


def run_timed(cmd: Sequence[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Like ``scripts.bench_runs.run_logged`` (output to ``log``, wall seconds, peak RSS) with a hard deadline.

    The child runs in its own process group; at ``timeout`` seconds that group (the child and what it
    started: pytest, torchrun ranks) gets SIGTERM, then SIGKILL.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    timed_out = False
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(list(cmd), cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        kill_at = start + max(timeout, 1.0)
        signalled = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.monotonic()
            if now >= kill_at:
                timed_out = True
                sig = signal.SIGTERM if signalled is None else signal.SIGKILL
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
                signalled = sig
                kill_at = now + 10.0
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "seconds": round(time.monotonic() - start, 2),
            "peak_rss_gb": usage.ru_maxrss / 1e6, "timed_out": timed_out, "command": " ".join(cmd)}


def child_failed(run: dict[str, Any], log: Path, what: str) -> str | None:
    """One line saying why a child run failed, or None when it succeeded."""
    if run["timed_out"]:
        return f"{what} stopped at its time budget ({run['seconds']:.0f} s), see {log}"
    if run["returncode"] != 0:
        return f"{what} exited with {run['returncode']}: {log_error(log)} (log {log})"
    return None


def failure(run: dict[str, Any], log: Path, what: str) -> dict[str, str] | None:
    """``{"status": "failed" | INCOMPLETE, "error": ...}`` for a child that did not succeed, else None."""
    error = child_failed(run, log, what)
    if error is None:
        return None
    return {"status": INCOMPLETE if run["timed_out"] else "failed", "error": error}


def combined(ctx: Context, statuses: Sequence[str]) -> str:
    """A section's status from its parts' (skipped parts do not count against it)."""
    if "failed" in statuses:
        return "failed"
    if any(st in (INCOMPLETE, OUT_OF_TIME) for st in statuses):
        return INCOMPLETE
    return ctx.ok()


def marked_json(log: Path, mark: str) -> dict[str, Any] | None:
    """The JSON after the last ``mark`` in a log, or None."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    found = [line[line.index(mark) + len(mark):] for line in text.splitlines() if mark in line]
    return json.loads(found[-1]) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def gib(n_bytes: float) -> float:
    return round(n_bytes / GIB, 3)


# ---------------------------------------------------------------------------------- 1. pytest subset


def section_tests(ctx: Context, budget: float) -> dict[str, Any]:
    """The fast test subset with LCPDN_TEST_DEVICE = the device."""
    subset = TINY_TEST_SUBSET if ctx.tiny else TEST_SUBSET
    log = ctx.work / "tests.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *subset]
    run = run_timed(cmd, log, budget, env={"LCPDN_TEST_DEVICE": ctx.device, "PYTHONPATH": str(ROOT)})
    text = log.read_text(encoding="utf-8", errors="replace")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", text)}
    out = {"device": ctx.device, "subset": subset, "counts": counts, "seconds": run["seconds"],
           "command": f"LCPDN_TEST_DEVICE={ctx.device} " + " ".join(cmd[1:]), "log": str(log)}
    bad = failure(run, log, "pytest") or (None if counts.get("passed") else {"status": "failed", "error": "pytest ran no test"})
    out.update(bad or {"status": ctx.ok()})
    out["summary"] = ", ".join(f"{n} {k}" for k, n in counts.items()) or out.get("error", "")
    return out


# ------------------------------------------------------------------- 2. bundle workflows with amp


def epoch_seconds(log: Path) -> tuple[list[float], list[float]]:
    """Per-epoch seconds of the trainer and of the evaluator from ignite's "Epoch[n] Complete" lines."""
    times: dict[str, list[float]] = {"SupervisedTrainer": [], "SupervisedEvaluator": []}
    for engine, h, m, s in re.findall(r"\.(Supervised\w+) - INFO - Epoch\[\d+\] Complete\. Time taken: (\d+):(\d+):([\d.]+)",
                                      log.read_text(encoding="utf-8", errors="replace")):
        if engine in times:
            times[engine].append(int(h) * 3600 + int(m) * 60 + float(s))
    return times["SupervisedTrainer"], times["SupervisedEvaluator"]


def command(run_id: str, config_files: Sequence[str], options: dict[str, Any]) -> list[str]:
    """``scripts.bench_runs.bundle_command`` with booleans and lists written as Python literals.

    The bundle CLI parses values with python-fire, which reads ``True`` / ``[False, True]`` as booleans but
    ``true`` / ``[false, true]`` (JSON) as strings, and the string "false" is truthy.
    """
    literal = {k: repr(v) if isinstance(v, (bool, list, tuple)) else v for k, v in options.items()}
    return bundle_command(run_id, config_files, literal)


def wrapped(cmd: list[str]) -> list[str]:
    """``python -m monai.bundle ...`` -> the same run under the peak-memory wrapper."""
    assert cmd[1:3] == ["-m", "monai.bundle"], cmd
    return [cmd[0], "-c", PEAK_WRAPPER, *cmd[3:]]


def bundle_run(ctx: Context, name: str, device: str, amp_dtype: str | None, budget: float) -> dict[str, Any]:
    """Train, evaluate and predict with the bundle's configs as a user does; metrics, speed, memory."""
    from bundle.data import load_datalist

    end = time.monotonic() + budget
    folder = ctx.work / "bundle" / name
    datalist = ctx.extra.get("datalist") or str(DEMO_DATALIST)
    network = dict(SMOKE_OPTIONS) if ctx.tiny else {}
    precision = {"amp": amp_dtype is not None, "amp_dtype": amp_dtype or "float16",
                 "device": f"$torch.device({device!r})"}
    common = {**network, **precision, "datalist": datalist, "ckpt_dir": str(folder / "models"),
              "log_dir": str(folder / "runs"), "output_dir": str(folder / "eval")}
    train_opts = {**common, "epochs": ctx.epochs, "seed": 0, **({"batch_size": 2} if ctx.tiny else {})}
    out: dict[str, Any] = {"device": device, "amp_dtype": amp_dtype, "epochs": ctx.epochs}

    def fail(error: str | dict[str, str]) -> dict[str, Any]:
        return {**out, **(error if isinstance(error, dict) else {"status": "failed", "error": error})}

    log = folder / "train.log"
    train = run_timed(wrapped(command("training", [TRAIN], train_opts)), log, end - time.monotonic())
    out["train"] = train
    if error := failure(train, log, "training"):
        return fail(error)
    curve = parse_curve(log)
    trainer, evaluator = epoch_seconds(log)
    n_train = len(load_datalist(datalist, "training"))
    train_seconds = sum(trainer) - sum(evaluator)  # the trainer's epochs include the validation handler
    out.update(curve=curve, train_images=n_train, train_seconds=round(train_seconds, 3))
    if train_seconds > 0 and trainer:
        out["train_images_per_s"] = round(n_train * len(trainer) / train_seconds, 3)
    if len(trainer) > 1:  # without the first epoch (warm-up, cuDNN autotuning, caching)
        later = sum(trainer[1:]) - sum(evaluator[1:])
        out["train_images_per_s_after_epoch_1"] = round(n_train * (len(trainer) - 1) / later, 3) if later > 0 else None
    if device == "cuda":
        peak = marked_json(log, PEAK_MARK)
        if not peak:
            return fail(f"training printed no CUDA peak memory (log {log})")
        out["train_peak_gpu_memory_gib"] = gib(peak["max_memory_allocated"])
        out["train_peak_gpu_reserved_gib"] = gib(peak["max_memory_reserved"])
    values = [v for key in curve for v in curve[key]]
    if not values or not finite(*values):
        return fail(f"training metrics not finite: {curve}")

    log = folder / "evaluate.log"
    evaluate = run_timed(wrapped(command("evaluating", [TRAIN, EVALUATE], common)), log, end - time.monotonic())
    out["evaluate"] = evaluate
    if error := failure(evaluate, log, "evaluating"):
        return fail(error)
    summary = json.loads((folder / "eval" / "evaluation_validation.json").read_text())
    metrics = {k: summary.get(k) for k in ("per_image_mean_dice", "per_image_mean_iou", "global_dice", "global_iou")}
    out["metrics"] = metrics
    if device == "cuda" and (peak := marked_json(log, PEAK_MARK)):
        out["evaluate_peak_gpu_memory_gib"] = gib(peak["max_memory_allocated"])
    if not finite(*metrics.values()):
        return fail(f"evaluation metrics not finite: {metrics}")

    log = folder / "inference.log"
    infer_opts = {**network, **precision, "datalist": datalist, "split": "validation",
                  "model_path": str(folder / "models" / "model.pt"), "output_dir": str(folder / "predictions")}
    infer = run_timed(wrapped(command("inference", [INFERENCE], infer_opts)), log, end - time.monotonic())
    out["inference"] = infer
    if error := failure(infer, log, "inference"):
        return fail(error)
    written = sorted(p.name for p in (folder / "predictions").rglob("*") if p.is_file())
    n_val = len(load_datalist(datalist, "validation"))
    out["predictions"] = len(written)
    if len(written) < n_val:
        return fail(f"inference wrote {len(written)} predictions for {n_val} validation images")
    if device == "cuda" and (peak := marked_json(log, PEAK_MARK)):
        out["inference_peak_gpu_memory_gib"] = gib(peak["max_memory_allocated"])
    return {**out, "status": "ok"}


def section_bundle(ctx: Context, budget: float) -> dict[str, Any]:
    """Training / evaluating / inference in float16 and bfloat16 amp on CUDA, against an fp32 CPU run."""
    import torch

    end = time.monotonic() + budget
    if ctx.tiny and "datalist" not in ctx.extra:
        ctx.extra["datalist"] = str(smoke_datalist(ctx.work / "bundle"))
    runs: dict[str, dict[str, Any]] = {}
    plan: list[tuple[str, str, str | None]] = []
    for dtype in ("float16", "bfloat16"):
        if not ctx.cuda:
            runs[f"cuda_{dtype}"] = {"status": NO_CUDA}
        elif dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            runs[f"cuda_{dtype}"] = {"status": "skipped: this GPU has no bfloat16"}
        else:
            plan.append((f"cuda_{dtype}", "cuda", dtype))
    plan.append(("cpu_float32", "cpu", None))  # the reference (last: the CUDA runs matter most)
    for i, (name, device, dtype) in enumerate(plan):
        left = end - time.monotonic()
        if left < 10:
            runs[name] = {"status": OUT_OF_TIME}
            continue
        runs[name] = bundle_run(ctx, name, device, dtype, left / (len(plan) - i))
    ref = runs["cpu_float32"]
    ref_dice = (ref.get("metrics") or {}).get("per_image_mean_dice")
    problems = [f"{name}: {r['error']}" for name, r in runs.items() if "error" in r]
    for name, r in runs.items():
        if name.startswith("cuda_") and r["status"] == "ok" and ref_dice is not None:
            dice = r["metrics"]["per_image_mean_dice"]
            r["dice_vs_cpu"] = round(dice - ref_dice, 4)
            r["dice_close_to_cpu"] = abs(dice - ref_dice) <= ctx.dice_tolerance
            if not r["dice_close_to_cpu"]:
                problems.append(f"{name}: Dice {dice:.4f} vs {ref_dice:.4f} on CPU (tolerance {ctx.dice_tolerance})")
    out: dict[str, Any] = {"runs": runs, "epochs": ctx.epochs, "dice_tolerance": ctx.dice_tolerance,
                           "data": "tests/data/lvit_tiny (4 px64 tiles)" if ctx.tiny else "docs/demo_data/monuseg (8 + 4 tiles)"}
    out["status"] = combined(ctx, [r["status"] for r in runs.values()])
    if any(not r.get("dice_close_to_cpu", True) for r in runs.values()):
        out["status"] = "failed"
    if problems:
        out["error"] = "; ".join(problems)
    parts = []
    for name, r in runs.items():
        if r["status"] == "ok":
            bits = [f"Dice {r['metrics']['per_image_mean_dice']:.3f}"]
            if "train_images_per_s" in r:
                bits.append(f"{r['train_images_per_s']:.1f} img/s")
            if "train_peak_gpu_memory_gib" in r:
                bits.append(f"peak {r['train_peak_gpu_memory_gib']:.2f} GiB")
            parts.append(f"{name}: " + ", ".join(bits))
        else:
            parts.append(f"{name}: {r['status']}")
    out["summary"] = "; ".join(parts)
    return out


# ------------------------------------------------------------------------------------ 3. ADM preset


def adm_layout(adm: Any) -> dict[str, Any]:
    """Check an ADMUNet's state dict against the checkpoint manifest, key for key and shape for shape."""
    import torch

    from bundle.utils import check_state_dict

    manifest = json.loads(ADM_MANIFEST.read_text())
    optional = set(adm.checkpoint_optional_keys())
    state = adm.state_dict()
    own = [k for k in state if k not in optional]
    if own != list(manifest["state_dict"]):
        first = next((a for a, b in zip(own, manifest["state_dict"]) if a != b), None)
        raise BundleInputError(f"ADM keys are not the checkpoint's, in its order (first difference: {first!r}; "
                               f"{len(own)} keys vs {len(manifest['state_dict'])})")
    reference = {k: torch.empty(shape, device="meta") for k, shape in manifest["state_dict"].items()}
    check_state_dict(state, reference, str(ADM_MANIFEST.relative_to(ROOT)), "the ADM preset no longer builds ADM-256",
                     optional=optional, what="ADM manifest")
    params = sum(state[k].numel() for k in own)
    if params != manifest["num_parameters"]:
        raise BundleInputError(f"ADM has {params} parameters, the checkpoint {manifest['num_parameters']}")
    return {"status": "ok", "tensors": len(own), "parameters": params,
            "cross_attention_tensors": len(optional), "cross_attention_parameters": sum(state[k].numel() for k in optional)}


def adm_parser(tiny: bool):
    """A ConfigParser of train.json + the ADM preset, random weights (no checkpoint file)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([TRAIN, *ADM_LAYERS])
    parser.update({"backbone_ckpt": None})
    if tiny:  # same topology, 1/8 of the width (as tests/configs/test_presets.py)
        parser["backbone"].update({"model_channels": 32, "num_head_channels": 16})
    return parser


def adm_worker(device_name: str, tiny: bool, budget: float, max_batch: int = 64) -> dict[str, Any]:
    """Random-weight ADM preset: layout, timed training steps and inference; run in its own process."""
    import torch
    from monai.losses import DiceCELoss

    end = time.monotonic() + budget
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    with torch.device("meta"):  # the full-width preset backbone, built without memory: its exact layout
        layout = adm_layout(adm_parser(tiny=False).get_parsed_content("backbone"))
    layout["checked"] = "the preset's backbone at full width on the meta device"
    torch.manual_seed(0)
    parser = adm_parser(tiny)
    net = parser.get_parsed_content("network_def")
    adm = net.extractor.backbone
    if not tiny:
        layout = {**adm_layout(adm), "checked": "the network built by the preset"}
    amp = bool(parser.get_parsed_content("amp")) and cuda  # the preset: autocast on CUDA
    dtype = getattr(torch, parser.get_parsed_content("amp_dtype"))
    size = 32 if tiny else parser.get_parsed_content("image_size")[0]  # sides: multiples of 32
    net.to(device)
    cross = [p for m in adm.cross_attention_modules() for p in m.parameters()]
    trainable = [p for p in net.parameters() if p.requires_grad]
    backbone_trainable = sum(p.numel() for p in adm.parameters() if p.requires_grad)
    opt = torch.optim.Adam(trainable, lr=parser.get_parsed_content("learning_rate"))
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out: dict[str, Any] = {
        "device": str(device), "tiny": tiny, "image_size": size, "blocks": list(net.extractor.blocks),
        "timesteps": list(net.extractor.timesteps), "amp": amp, "amp_dtype": str(dtype).replace("torch.", "") if amp else None,
        "layout": layout, "trainable_parameters": sum(p.numel() for p in trainable),
        "backbone_trainable_parameters": backbone_trainable,
        "backbone_trainable_is_cross_attention": backbone_trainable == sum(p.numel() for p in cross),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
    }
    if cuda:
        out["weights_gpu_memory_gib"] = gib(torch.cuda.memory_allocated(device))

    def train_steps(batch: int, steps: int) -> dict[str, Any]:
        x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
        y = (torch.rand(batch, 1, size, size, device=device) > 0.6).float()
        text = [SENTENCE] * batch
        net.train()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        losses, start = [], 0.0
        for i in range(steps + 1):  # step 0 warms up (cuDNN autotuning, allocator)
            if i == 1:
                sync()
                start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                loss = loss_fn(net(x, text), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.detach())
        sync()
        seconds = (time.perf_counter() - start) / steps
        losses = [float(v) for v in losses]
        grads = [p.grad for p in cross if p.grad is not None]
        row = {"batch": batch, "steps": steps, "seconds_per_step": round(seconds, 4),
               "images_per_s": round(batch / seconds, 3), "loss": losses[-1], "loss_finite": finite(*losses),
               "cross_attention_gets_gradient": bool(grads) and any(bool(g.abs().sum() > 0) for g in grads)}
        if cuda:
            row["peak_gpu_memory_gib"] = gib(torch.cuda.max_memory_allocated(device))
        return row

    steps = 1 if tiny or not cuda else 3
    first = None
    try:
        first = train_steps(1, steps)
    except torch.cuda.OutOfMemoryError:
        pass  # reported below, once the exception (and the frames it holds) is gone
    if first is None:
        total = gib(torch.cuda.get_device_properties(device).total_memory)
        return {**out, "status": "failed", "error": f"out of memory in a training step at batch 1 ({size} px) on a "
                f"{total} GiB GPU: the preset does not fit this GPU (docs/gpu_check.md)"}
    out["train_batch_1"] = first
    net.eval()
    times = []
    x = torch.rand(1, 3, size, size, device=device) * 2 - 1
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=amp):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(1 + (2 if tiny or not cuda else 5)):
            sync()
            start = time.perf_counter()
            logits = net(x, [SENTENCE])
            sync()
            times.append(time.perf_counter() - start)
    out["inference_batch_1"] = {"seconds_per_image": round(sorted(times[1:])[len(times[1:]) // 2], 4),
                                "output_shape": list(logits.shape), "finite": bool(torch.isfinite(logits.float()).all())}
    if cuda:
        out["inference_batch_1"]["peak_gpu_memory_gib"] = gib(torch.cuda.max_memory_allocated(device))
    del logits, x

    if not cuda:
        out["largest_batch"] = {"status": NO_CUDA}
    else:
        tried, best, stop = [], None, f"reached the cap of batch {max_batch}"
        batch, last = 2, out["train_batch_1"]
        while batch <= max_batch:
            # a step costs about batch x (seconds per image); warm-up + `steps` steps, with room to spare
            guess = 2.5 * (steps + 1) * last["seconds_per_step"] * batch / last["batch"]
            if time.monotonic() + guess > end:
                stop = f"time budget before batch {batch}"
                break
            row = None
            try:
                row = train_steps(batch, steps)
            except torch.cuda.OutOfMemoryError:
                pass  # freed below, once the exception (and the frames it holds) is gone
            if row is None:
                stop = f"out of memory at batch {batch}"
                tried.append({"batch": batch, "status": "out of memory"})
                opt.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
                break
            tried.append(row)
            best = last = row
            batch *= 2
        out["largest_batch"] = {"status": "ok", **(best or out["train_batch_1"]), "stopped_by": stop, "tried": tried}
    ok = (layout["status"] == "ok" and out["train_batch_1"]["loss_finite"] and out["inference_batch_1"]["finite"]
          and out["train_batch_1"]["cross_attention_gets_gradient"] and out["backbone_trainable_is_cross_attention"])
    out["status"] = "ok" if ok else "failed"
    if not ok:
        out["error"] = "non-finite loss or output, no gradient into the cross-attention, or a trainable ADM weight"
    return out


def section_adm(ctx: Context, budget: float) -> dict[str, Any]:
    """The ADM preset in its own process (a hard deadline, and its own peak memory)."""
    log = ctx.work / "adm.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "adm", "--device", ctx.device,
           "--budget-s", str(max(budget - 15, 5))] + (["--tiny"] if ctx.tiny else [])
    run = run_timed(cmd, log, budget)
    if error := failure(run, log, "the ADM worker"):
        return {**error, "seconds": run["seconds"], "log": str(log)}
    result = marked_json(log, RESULT_MARK)
    if result is None:
        return {"status": "failed", "error": f"the ADM worker printed no result (log {log})", "log": str(log)}
    result.update(seconds=run["seconds"], peak_rss_gb=run["peak_rss_gb"], log=str(log))
    if result["status"] != "ok":
        return result
    result["status"] = ctx.ok()
    b1, inf = result["train_batch_1"], result["inference_batch_1"]
    text = f"{result['image_size']} px: train step {b1['seconds_per_step']:.3f} s at batch 1"
    if "peak_gpu_memory_gib" in b1:
        text += f" ({b1['peak_gpu_memory_gib']:.1f} GiB)"
    text += f", inference {inf['seconds_per_image']:.3f} s/image"
    big = result["largest_batch"]
    text += (f"; largest batch {big['batch']} ({big['images_per_s']:.1f} img/s, {big.get('peak_gpu_memory_gib', 0):.1f} GiB, "
             f"{big['stopped_by']})" if big["status"] == "ok" else f"; largest batch {big['status']}")
    result["summary"] = text
    return result


# ------------------------------------------------------------------------------------- 4. torchrun


def section_torchrun(ctx: Context, budget: float) -> dict[str, Any]:
    """configs/multi_gpu_train.json under torchrun on every visible GPU (NCCL), 1-2 epochs."""
    import torch

    from bundle.data import load_datalist, write_datalist

    if not ctx.cuda:
        return {"status": NO_CUDA}
    n = torch.cuda.device_count()
    if n < 2:
        return {"status": f"skipped: fewer than 2 GPUs ({n} visible)", "gpus": n}
    folder = ctx.work / "torchrun"
    source = ctx.extra.get("datalist") or str(DEMO_DATALIST)
    training, validation = load_datalist(source, "training"), load_datalist(source, "validation")
    datalist = folder / "datalist.json"  # every rank needs a validation image
    write_datalist(str(datalist), {"training": training, "validation": (validation * n)[: max(n, len(validation))]},
                   relative=False)
    epochs = 2
    options = {**(SMOKE_OPTIONS if ctx.tiny else {}), "datalist": str(datalist), "epochs": epochs,
               "ckpt_dir": str(folder / "models"), "log_dir": str(folder / "runs"), "output_dir": str(folder / "eval")}
    single = command("run", [TRAIN, MULTI_GPU], options)  # multi_gpu_train.json's entry point is "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(free_port()),
           "-m", "monai.bundle", *single[3:]]
    log = folder / "torchrun.log"
    run = run_timed(cmd, log, budget, env={"OMP_NUM_THREADS": "1"})
    out = {"gpus": n, "backend": "nccl", "epochs": epochs, "seconds": run["seconds"], "command": run["command"], "log": str(log)}
    if error := failure(run, log, "torchrun"):
        return {**out, **error}
    text = log.read_text(encoding="utf-8", errors="replace")
    logged = text.count("val_mean_dice best value")
    if not (folder / "models" / "model.pt").is_file() or logged != epochs:
        return {**out, "status": "failed", "error": f"expected models/model.pt and {epochs} validations logged by rank 0, "
                f"got {logged} (log {log})"}
    curve = parse_curve(log)
    return {**out, "status": ctx.ok(), "curve": curve,
            "summary": f"{n} GPUs, {epochs} epochs in {run['seconds']:.0f} s, last val Dice {curve['val_mean_dice'][-1]:.3f}"}


# ---------------------------------------------------------------------------------------- 5. speed


def section_speed(ctx: Context, budget: float) -> dict[str, Any]:
    """scripts/benchmark.py's speed workers (every pipeline) on CUDA."""
    if not ctx.cuda:
        return {"status": NO_CUDA, "note": "the CPU speed table is `python scripts/benchmark.py speed`"}
    end = time.monotonic() + budget
    if ctx.tiny:
        pipelines, extra = list(PIPELINES), ["--smoke", "--steps", "1", "--repeats", "1", "--batch", "2"]
    else:
        pipelines, extra = list(PIPELINES), ["--steps", "3", "--repeats", "5", "--batch", "4"]
    rows: dict[str, dict[str, Any]] = {}
    for i, pipeline in enumerate(pipelines):
        left = end - time.monotonic()
        if left < 10:
            rows[pipeline] = {"status": OUT_OF_TIME}
            continue
        log = ctx.work / "speed" / f"{pipeline}.log"
        cmd = [sys.executable, BENCHMARK, "_speed-worker", "--pipeline", pipeline, "--device", ctx.device, *extra]
        run = run_timed(cmd, log, left / (len(pipelines) - i))
        if error := failure(run, log, f"speed worker {pipeline}"):
            rows[pipeline] = error
            continue
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.startswith("{")]
        record = json.loads(lines[-1])
        record.pop("machine", None)
        rows[pipeline] = {"status": "ok", **record}
    problems = [f"{p}: {r['error']}" for p, r in rows.items() if "error" in r]
    out: dict[str, Any] = {"device": ctx.device, "pipelines": rows, "options": extra,
                           "status": combined(ctx, [r["status"] for r in rows.values()])}
    if problems:
        out["error"] = "; ".join(problems)
    out["summary"] = "; ".join(
        f"{p}: {r['train_images_per_s']:.1f} img/s, {1000 * r['inference_seconds_per_image']:.0f} ms/image"
        + (f", {r['peak_gpu_memory_gib']:.1f} GiB" if "peak_gpu_memory_gib" in r else "")
        if r["status"] == "ok" else f"{p}: {r['status']}" for p, r in rows.items())
    return out


# ----------------------------------------------------------------------------------------- runner

#: name, what it checks, share of the time budget
SECTIONS: list[tuple[str, Section, float]] = [
    ("tests", section_tests, 0.13),
    ("bundle_amp", section_bundle, 0.35),
    ("adm", section_adm, 0.22),
    ("torchrun", section_torchrun, 0.10),
    ("speed", section_speed, 0.20),
]
MIN_SECTION_S = 15.0  # a section with less time left than this is not started


def environment(device: str) -> dict[str, Any]:
    """Versions and GPUs."""
    import torch

    env: dict[str, Any] = {"machine": machine(), "cuda_available": torch.cuda.is_available(), "device": device,
                           "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["gpu_memory_gib"] = [gib(torch.cuda.get_device_properties(i).total_memory) for i in range(torch.cuda.device_count())]
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        try:
            env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:  # a build without NCCL
            env["nccl"] = one_line(e)
    return env


def write_report(report: dict[str, Any], path: Path) -> None:
    with atomic_write(str(path)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=str)


def run_sections(ctx: Context, sections: Sequence[tuple[str, Section, float]], report: dict[str, Any],
                 out: Path | None = None) -> dict[str, Any]:
    """Run each section within its share of the time left; a failing section never stops the others."""
    results: dict[str, Any] = report.setdefault("sections", {})
    for i, (name, fn, _) in enumerate(sections):
        left = ctx.remaining()
        if left < MIN_SECTION_S:
            results[name] = {"status": OUT_OF_TIME, "seconds": 0.0}
        else:
            shares = sum(share for _, _, share in sections[i:])
            budget = left * sections[i][2] / shares if shares > 0 else left
            start = time.monotonic()
            try:
                result = fn(ctx, budget)
            except Exception as e:
                result = {"status": "failed", "error": one_line(e), "traceback": traceback.format_exc()[-3000:]}
            result.setdefault("seconds", round(time.monotonic() - start, 2))
            result["budget_s"] = round(budget, 1)
            results[name] = result
        print(f"[gpu_check] {name}: {results[name]['status']}", flush=True)
        if out is not None:
            write_report(report, out)
    return report


def summary_table(report: dict[str, Any]) -> str:
    """The report as a short table."""
    env = report["environment"]
    gpu = ", ".join(env.get("gpus") or []) or "no GPU"
    lines = [f"GPU check on {report['device']} ({gpu}; torch {env['machine']['torch']}), "
             f"{report['seconds']:.0f} s of {report['budget_s']:.0f} s -> {report['out']}",
             f"{'section':<11} {'status':<28} {'seconds':>8}  result"]
    for name, r in report["sections"].items():
        detail = r.get("error") if r["status"] in ("failed", INCOMPLETE) else r.get("summary", "")
        lines.append(f"{name:<11} {r['status']:<28} {r.get('seconds', 0):>8.1f}  {detail or ''}")
    lines.append("overall: " + report["status"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="eval/gpu_check.json", help="JSON report (written after every section)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: CUDA when available")
    p.add_argument("--tiny", action="store_true", help="tiny settings (implied on CPU); the tests use it")
    p.add_argument("--budget-s", type=float, default=480.0, help="overall time budget in seconds (default 480)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of section bundle_amp (default 5, tiny 1)")
    p.add_argument("--dice-tolerance", type=float, default=0.05, help="|Dice(amp on CUDA) - Dice(fp32 CPU)| allowed")
    p.add_argument("--sections", nargs="+", choices=[s[0] for s in SECTIONS], default=None, help="run only these")
    p.add_argument("--work", default=None, help="folder for logs and checkpoints, emptied first "
                   "(default: gpu_check_work/ beside --out)")
    p.add_argument("--worker", choices=("adm",), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None, sections: Sequence[tuple[str, Section, float]] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("ERROR: --device cuda but torch.cuda.is_available() is False (no GPU, driver or CUDA build of torch)",
              file=sys.stderr)
        return 2
    tiny = args.tiny or device == "cpu"
    if args.worker == "adm":
        result = adm_worker(device, tiny, args.budget_s)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    chosen = list(sections if sections is not None else SECTIONS)
    if args.sections:
        chosen = [s for s in chosen if s[0] in args.sections]
    out = Path(args.out)
    start = time.monotonic()
    report: dict[str, Any] = {
        "tool": "scripts/gpu_check.py", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": device, "tiny": tiny, "budget_s": args.budget_s, "out": str(out), "status": "running",
        "environment": environment(device), "sections": {},
    }
    work = Path(args.work) if args.work else out.parent / "gpu_check_work"
    if work.is_dir() and any(work.iterdir()):
        if not (work / WORK_MARK).is_file():
            raise BundleInputError(f"work folder '{work}' is not empty and was not made by gpu_check.py (option --work)")
        shutil.rmtree(work)  # this tool's own scratch folder from a previous run
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARK).write_text("scratch folder of scripts/gpu_check.py, emptied by its next run\n")
    report["work"] = str(work)
    ctx = Context(device=device, tiny=tiny, work=work, deadline=start + args.budget_s,
                  epochs=args.epochs or (1 if tiny else 5), dice_tolerance=args.dice_tolerance)
    run_sections(ctx, chosen, report, out)
    report["seconds"] = round(time.monotonic() - start, 1)
    failed = [n for n, r in report["sections"].items() if r["status"] == "failed"]
    short = [n for n, r in report["sections"].items() if r["status"] in (INCOMPLETE, OUT_OF_TIME)]
    report["status"] = (f"failed: {', '.join(failed)}" if failed
                        else f"incomplete (time budget): {', '.join(short)}" if short else "ok")
    write_report(report, out)
    print(summary_table(report), flush=True)
    return 1 if failed else 0


def cli(argv: Sequence[str] | None = None, sections: Sequence[tuple[str, Section, float]] | None = None) -> int:
    """``main`` with the repository's one-line ``ERROR:`` handling of bad input."""
    code = 0

    def action() -> None:
        nonlocal code
        code = main(argv, sections)

    return run_cli(action) or code


if __name__ == "__main__":
    sys.exit(cli())
