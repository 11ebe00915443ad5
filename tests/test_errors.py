"""bundle/errors.py: a failed run exits 1 with one ERROR line, also with its output in a pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "docs" / "demo_data" / "monuseg"


def piped(cmd: str, env: dict | None = None) -> tuple[int, str]:
    """Run ``cmd 2>&1 | cat`` in bash; returns the command's own exit status (PIPESTATUS) and its output."""
    script = f"{cmd} 2>&1 | cat; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})})
    return result.returncode, result.stdout


def test_an_input_error_exits_1_with_one_line_even_through_a_pipe(tmp_path):
    code = "import bundle; from bundle.errors import BundleInputError; raise RuntimeError('wrapped') from BundleInputError('mask x.png is bad')"
    status, out = piped(f"{sys.executable} -c \"{code}\"")
    assert status == 1
    assert out.strip().splitlines() == ["ERROR: mask x.png is bad", "(set LCPDN_TRACEBACK=1 for the full traceback)"]
    status, out = piped(f"{sys.executable} -c \"{code}\"", {"LCPDN_TRACEBACK": "1"})
    assert status == 1 and "Traceback" in out


def test_other_errors_keep_their_traceback_and_exit_1():
    status, out = piped(f"{sys.executable} -c \"import bundle; raise KeyError('bug')\"")
    assert status == 1 and "Traceback" in out and "KeyError" in out


def test_a_torchrun_worker_other_than_rank_0_keeps_quiet():
    code = "import bundle; from bundle.errors import BundleInputError; raise BundleInputError('bad')"
    status, out = piped(f"{sys.executable} -c \"{code}\"", {"RANK": "1"})
    assert status == 1 and out.strip() == ""


@pytest.mark.slow
def test_training_on_a_bad_mask_exits_1_with_one_line_through_a_pipe(tmp_path, tiny_network_options):
    """The issue's reproduction: a 3-level mask met during training (cache off), output piped."""
    from scripts.prepare_lvit import convert_lvit

    items = convert_lvit(str(ROOT / "tests" / "data" / "lvit_tiny"), "he", log=None)
    size = Image.open(items["training"][0]["label"]).size
    bad = np.zeros(size[::-1], np.uint8)
    bad[:4, :4], bad[4:8, 4:8] = 100, 200
    Image.fromarray(bad).save(tmp_path / "bad.png")
    datalist = {"training": [{**items["training"][0], "label": str(tmp_path / "bad.png")}],
                "validation": items["validation"]}
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    options = {**tiny_network_options, "datalist": str(tmp_path / "datalist.json"), "epochs": 1, "cache_rate": 0,
               "ckpt_dir": str(tmp_path / "models"), "log_dir": str(tmp_path / "runs"), "output_dir": str(tmp_path / "eval")}
    args = " ".join(f"--{k} {json.dumps(json.dumps(v) if isinstance(v, list) else str(v))}" for k, v in options.items())
    status, out = piped(f"{sys.executable} -m monai.bundle run training --config_file configs/train.json {args}")
    assert status == 1, out[-3000:]
    assert out.count("ERROR") == 1 and "ERROR: mask" in out and "Traceback" not in out, out[-3000:]
    assert "terminating due to exception" not in out
    assert not (tmp_path / "models" / "model_final.pt").exists()  # no "final" model of a failed run
