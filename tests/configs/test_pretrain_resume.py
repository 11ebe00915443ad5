"""Stage-1 diffusion pretraining feeding stage 2, and kill -9 + --resume losing nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle_cli import METADATA, PRETRAIN, ROOT, TRAIN, cli_args


def test_pretrain_then_train_with_the_frozen_backbone(run_options, tmp_path):
    pre = ConfigWorkflow(config_file=[TRAIN, PRETRAIN], meta_file=METADATA, workflow_type="train",
                         **{**run_options, "pretrain_epochs": 1, "pretrain_crop": [32, 32]})
    pre.initialize()
    pre.run()
    ckpt = tmp_path / "models" / "backbone_pretrained.pt"
    state = torch.load(ckpt, weights_only=True)
    assert any(k.startswith("up_blocks") for k in state)  # a plain DiffusionModelUNet state dict

    wf = ConfigWorkflow(config_file=TRAIN, meta_file=METADATA, workflow_type="train",
                        **{**run_options, "epochs": 1, "backbone_ckpt": str(ckpt), "backbone_trainable": False,
                           "ckpt_dir": str(tmp_path / "stage2")})
    wf.initialize()
    net = wf.parser.get_parsed_content("network")
    unet = net.extractor.backbone.unet
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in state.items())  # loaded
    assert net.parameter_report()["backbone"] == 0  # frozen
    wf.run()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in state.items())  # still frozen after training


@pytest.mark.slow
def test_kill_9_then_resume_loses_nothing(run_options, tmp_path):
    options = {**run_options, "epochs": 6}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, *cli_args(options)]
    models = tmp_path / "models"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (models / "checkpoint_epoch=2.pt").exists():
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 3 (or while saving): no clean-up of any kind
    proc.wait()
    assert (models / "checkpoint_epoch=2.pt").exists()
    for f in models.iterdir():  # nothing half-written: every checkpoint file loads
        if f.suffix == ".pt":
            torch.load(f, weights_only=True)
    saved = torch.load(max(models.glob("checkpoint_epoch=*.pt"), key=os.path.getmtime), weights_only=True)
    done = saved["trainer"]["iteration"] // saved["trainer"]["epoch_length"]  # ignite keeps iterations
    best = saved["best"]["best_metric"]

    resumed = subprocess.run(cmd + ["--resume", "True"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "Restored all variables" in log
    assert f"Epoch[{done + 1}]" in log and "Epoch[1] Metrics" not in log  # continues, does not restart
    final = torch.load(models / "checkpoint_epoch=6.pt", weights_only=True)
    assert final["trainer"]["iteration"] // final["trainer"]["epoch_length"] == 6
    assert final["best"]["best_metric"] >= best  # the best metric survived the kill


def test_resume_without_checkpoint_is_a_clear_error(run_options):
    from bundle_cli import run_bundle

    result = run_bundle("training", [TRAIN], {**run_options, "resume": True})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no checkpoint" in result.stderr
