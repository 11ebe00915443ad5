"""configs/train.json: a real 2-epoch run, MONAI's workflow properties, determinism, clear errors on bad overrides."""

from __future__ import annotations

import os

import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle.errors import find_input_error

from bundle_cli import METADATA, TRAIN, run_bundle


def workflow(options, **extra):
    wf = ConfigWorkflow(config_file=TRAIN, meta_file=METADATA, workflow_type="train", **{**options, **extra})
    wf.initialize()
    return wf


def test_properties_and_two_epochs_write_models(run_options, tmp_path):
    wf = workflow(run_options)
    assert wf.check_properties() in (None, [])
    wf.run()
    trainer, evaluator = wf.parser.get_parsed_content("train#trainer"), wf.parser.get_parsed_content("validate#evaluator")
    assert trainer.state.epoch == 2
    assert {"val_mean_dice", "val_mean_iou"} <= set(evaluator.state.metrics)
    for name in ("model.pt", "model_final.pt", "checkpoint_epoch=2.pt"):
        assert (tmp_path / "models" / name).is_file(), name
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    net = wf.parser.get_parsed_content("network")
    assert set(state) == set(net.state_dict())  # a plain state dict: what MONAI Label and the zoo expect
    assert not any(k.startswith(("text_encoder", "image_encoder")) for k in state)
    assert list((tmp_path / "runs").iterdir())  # TensorBoard events
    wf.finalize()


def test_training_alias_and_run_are_the_same_job(run_options):
    wf = workflow(run_options)
    assert wf.parser.get("run") == "@training"


@pytest.mark.slow
def test_console_prints_one_line_per_epoch(run_options):
    """Piped output (a log file): one line per epoch with loss, Dice, IoU, best, lr and time; no progress-bar
    redraws, no ignite engine lines, no separate metric dumps; the closing summary goes through the logger."""
    result = run_bundle("training", [TRAIN], run_options)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = result.stdout + result.stderr
    epochs = [line for line in out.splitlines() if " - bundle.engine - INFO - epoch " in line]
    assert len(epochs) == 2, out[-3000:]
    for n, line in enumerate(epochs, 1):
        assert f"epoch {n}/2: " in line and "train loss " in line and "val Dice " in line and "val IoU " in line
        assert "(best " in line and ", lr " in line and line.endswith(" s")
    for noise in ("Engine run", "Metrics --", "Key metric", "Saved checkpoint", "it/s]", "Loading dataset", "Current learning rate"):
        assert noise not in out, noise
    after = result.stdout.split("trainable parameters", 1)[1].splitlines()[1:]
    assert len(after) == 3 and "bundle.engine - INFO - training done" in after[-1], after


def test_same_seed_same_first_epoch_loss(run_options):
    losses = []
    for _ in range(2):
        wf = workflow(run_options, epochs=1, seed=3)
        wf.run()
        losses.append(wf.parser.get_parsed_content("train#trainer").state.metrics["train_loss_avg"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    other = workflow(run_options, epochs=1, seed=4)
    other.run()
    assert other.parser.get_parsed_content("train#trainer").state.metrics["train_loss_avg"] != pytest.approx(losses[0], abs=1e-6)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"datalist": "/no/such/datalist.json"}, "does not exist (option datalist)"),
        ({"epochs": 0}, "option epochs must be a positive integer"),
        ({"text_encoder_path": "/no/such/encoder"}, "text_encoder_path"),
        ({"image_encoder_path": "/no/such/clip"}, "image_encoder_path"),
        ({"modality": "mri"}, "unknown modality"),
    ],
)
def test_bad_overrides_are_one_clear_line(run_options, override, message):
    result = run_bundle("training", [TRAIN], {**run_options, **override})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()
    assert any(line.startswith("ERROR:") and message in line for line in last), result.stderr[-2000:]
    assert not os.path.exists(run_options["ckpt_dir"]) or not os.listdir(run_options["ckpt_dir"])


def test_checkpoint_of_another_network_is_a_clear_error(run_options, tmp_path):
    workflow(run_options, epochs=1).run()
    result = run_bundle(
        "evaluating",
        [TRAIN, TRAIN.replace("train.json", "evaluate.json")],
        {**run_options, "fusion": "cross_attention"},
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "does not match the configured network" in result.stderr


def test_input_error_survives_monai_wrapping():
    from monai.transforms import Compose

    from bundle.transforms import EnsureTextd

    with pytest.raises(Exception) as info:
        Compose([EnsureTextd(modality="he")])({"image": "x.png", "text": "   "})
    assert "non-empty sentence" in find_input_error(info.value)
