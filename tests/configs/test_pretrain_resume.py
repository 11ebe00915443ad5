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
    assert pre.parser.get_parsed_content("pretrain#trainer").state.metrics["pretrain_loss_avg"] > 0  # logged per epoch
    ckpt = tmp_path / "models" / "backbone_pretrained.pt"
    state = torch.load(ckpt, weights_only=True)
    assert any(k.startswith("up.") for k in state) and not any(k.startswith("head") for k in state)  # the denoiser only

    wf = ConfigWorkflow(config_file=TRAIN, meta_file=METADATA, workflow_type="train",
                        **{**run_options, "epochs": 1, "backbone_ckpt": str(ckpt), "backbone_trainable": False,
                           "ckpt_dir": str(tmp_path / "stage2")})
    wf.initialize()
    net = wf.parser.get_parsed_content("network")
    unet = net.extractor.backbone.denoiser
    assert unet.state_dict().keys() == state.keys()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in state.items())  # loaded
    cross = {k for k in state if ".attn2." in k or ".norm2." in k and ".transformer_blocks." in k}
    assert cross and net.parameter_report()["backbone"] == sum(state[k].numel() for k in cross)
    wf.run()
    after = unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items() if k not in cross)  # frozen after training
    assert any(not torch.equal(after[k], state[k]) for k in cross)  # CPRFL's cross-attention learned


def test_pretrain_from_an_image_folder_needs_no_datalist(run_options, tmp_path, data_dir):
    options = {**run_options, "pretrain_epochs": 1, "pretrain_crop": [32, 32], "datalist": "/no/such/datalist.json",
               "image_folder": str(data_dir / "lvit_tiny" / "Train_Folder" / "img")}
    pre = ConfigWorkflow(config_file=[TRAIN, PRETRAIN], meta_file=METADATA, workflow_type="train", **options)
    pre.initialize()
    pre.run()
    assert len(pre.parser.get_parsed_content("pretrain#dataset")) == 2  # the folder's two images, unlabelled
    assert (tmp_path / "models" / "backbone_pretrained.pt").is_file()


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
    context = f"killed after epoch {done} (best {best}), files {sorted(f.name for f in models.iterdir())}:\n{log[-3000:]}"
    assert f"resumed from {models / f'checkpoint_epoch={done}.pt'} after epoch {done} of 6" in log, context
    assert f"epoch {done + 1}/6: " in log and "epoch 1/6: " not in log, context  # continues, does not restart
    final = torch.load(models / "checkpoint_epoch=6.pt", weights_only=True)
    assert final["trainer"]["iteration"] // final["trainer"]["epoch_length"] == 6, context
    assert final["best"]["best_metric"] >= best, context  # the best metric survived the kill


def test_resume_without_checkpoint_is_a_clear_error(run_options):
    from bundle_cli import run_bundle

    result = run_bundle("training", [TRAIN], {**run_options, "resume": True})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no checkpoint" in result.stderr


def test_resume_into_another_network_or_past_epochs_is_one_clear_line(run_options):
    from bundle_cli import run_bundle

    wf = ConfigWorkflow(config_file=TRAIN, meta_file=METADATA, workflow_type="train", **run_options)
    wf.initialize()
    wf.run()  # writes checkpoint_epoch=2.pt
    for override, message in (({"fusion": "cross_attention"}, "does not match the configured network"),
                              ({"epochs": 1}, "saved after epoch 2, beyond --epochs 1")):
        result = run_bundle("training", [TRAIN], {**run_options, **override, "resume": True})
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert any(line.startswith("ERROR:") and message in line for line in result.stderr.splitlines()), result.stderr[-2000:]
