"""configs/multi_gpu_train.json under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bundle_cli import MULTI_GPU, ROOT, TRAIN, cli_args


@pytest.mark.slow
def test_torchrun_two_cpu_processes(run_options, tmp_path):
    from bundle.data import load_datalist

    training = load_datalist(run_options["datalist"], "training")  # absolute paths
    # every rank needs at least one validation image
    (tmp_path / "datalist.json").write_text(json.dumps({"training": training, "validation": training}))
    run_options = {**run_options, "datalist": str(tmp_path / "datalist.json")}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "monai.bundle", "run", "--config_file", repr([TRAIN, MULTI_GPU]), *cli_args(run_options)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_epoch=2.pt").is_file()
    log = result.stdout + result.stderr
    assert log.count("val_mean_dice best value") == 2  # two epochs, logged by rank 0 only


@pytest.mark.slow
def test_torchrun_input_error_is_one_line_from_rank_0(run_options, tmp_path):
    """A bad mask under torchrun: each worker exits 1, and the ERROR line is printed once, not once per rank."""
    import numpy as np
    from PIL import Image

    from bundle.data import load_datalist

    training = load_datalist(run_options["datalist"], "training")
    size = Image.open(training[0]["label"]).size
    bad = np.zeros(size[::-1], np.uint8)
    bad[:4, :4], bad[4:8, 4:8] = 100, 200  # three levels
    Image.fromarray(bad).save(tmp_path / "bad.png")
    broken = [{**item, "label": str(tmp_path / "bad.png")} for item in training]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": broken, "validation": training}))
    run_options = {**run_options, "datalist": str(tmp_path / "datalist.json")}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("LCPDN_TRACEBACK", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
           "-m", "monai.bundle", "run", "--config_file", repr([TRAIN, MULTI_GPU]), *cli_args(run_options)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert log.count("ERROR: mask") == 1, log[-4000:]
    assert "SIGABRT" not in log and "exitcode  : -" not in log, log[-3000:]  # workers exit 1, never by a signal
