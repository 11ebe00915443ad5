"""Helpers to run the bundle's configs as a user would (``python -m monai.bundle run ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(ROOT / "configs" / "train.json")
EVALUATE = str(ROOT / "configs" / "evaluate.json")
INFERENCE = str(ROOT / "configs" / "inference.json")
PRETRAIN = str(ROOT / "configs" / "pretrain_diffusion.json")
MULTI_GPU = str(ROOT / "configs" / "multi_gpu_train.json")
METADATA = str(ROOT / "configs" / "metadata.json")


def cli_args(options: dict) -> list[str]:
    """``--key value`` pairs for ``python -m monai.bundle run`` (fire parses lists and booleans)."""
    args = []
    for key, value in options.items():
        args += [f"--{key}", repr(value) if isinstance(value, (list, tuple)) else str(value)]
    return args


def run_bundle_command(args: list[str], timeout: int = 300, extra_env: dict | None = None):
    """Run ``python -m monai.bundle <args>`` from the bundle root, offline; returns the CompletedProcess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(extra_env or {})}
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_bundle(run_id: str, config_files: list[str], options: dict, timeout: int = 300, extra_env: dict | None = None):
    """Run ``python -m monai.bundle run`` as a user would; returns the CompletedProcess."""
    files = config_files[0] if len(config_files) == 1 else repr(config_files)
    return run_bundle_command(["run", run_id, "--config_file", files, *cli_args(options)], timeout, extra_env)
