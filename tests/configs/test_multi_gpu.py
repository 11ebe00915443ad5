"""configs/multi_gpu_train.json and multi_gpu_evaluate.json under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bundle_cli import EVALUATE, MULTI_GPU, ROOT, TRAIN, cli_args, run_bundle

MULTI_GPU_EVALUATE = str(ROOT / "configs" / "multi_gpu_evaluate.json")


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
    assert log.count("bundle.engine - INFO - epoch ") == 2, log[-4000:]  # two epochs, logged by rank 0 only
    assert log.count("training done") == 1 and log.count("trainable parameters") == 1  # other ranks are quiet


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


def read_outputs(folder) -> dict:
    """An evaluation's output files: MetricsSaver's CSVs as {file: rows} (per-image rows sorted by image: each rank
    evaluates every n-th image), metrics.csv as {name: float}, and the evaluation summary JSON."""
    out = {}
    for path in sorted(folder.iterdir()):
        if path.name == "metrics.csv":
            out[path.name] = {k: float(v) for k, v in (line.split(",") for line in path.read_text().splitlines())}
        elif path.suffix == ".csv":
            header, *rows = path.read_text().splitlines()
            out[path.name] = [header, *sorted(rows)]
        else:
            summary = json.loads(path.read_text())
            summary["per_image"] = sorted(summary["per_image"], key=lambda row: row["image"])
            out[path.name] = summary
    return out


@pytest.mark.slow
def test_torchrun_evaluation_equals_one_process(trained, tmp_path):
    """configs/multi_gpu_evaluate.json on 2 ranks writes the metrics files a single-process evaluation writes
    (3 images: rank 0 scores two, rank 1 one; the per-image rows are gathered and written by rank 0)."""
    import torch

    from bundle.data import load_datalist

    items = [*load_datalist(trained["datalist"], "training"), *load_datalist(trained["datalist"], "validation")]
    assert len(items) == 3  # not divisible by the 2 ranks: even_divisible false must not pad or drop
    (tmp_path / "datalist.json").write_text(json.dumps({"validation": items}))
    # the 2-epoch tiny model finds no foreground (every Dice 0, whichever image): raise the foreground bias of its
    # output layer so that it marks every pixel, and each image's Dice is its own number, 2 m / (1 + m) for mask share m
    state = torch.load(os.path.join(trained["ckpt_dir"], "model.pt"), map_location="cpu", weights_only=True)
    bias = next(k for k in reversed(state) if k.endswith("bias") and state[k].shape == (2,))
    state[bias][1] += 1e3
    (tmp_path / "models").mkdir()
    torch.save(state, tmp_path / "models" / "model.pt")
    # one image per forward and one thread in both runs: each image's prediction is computed the same way
    options = {**trained, "datalist": str(tmp_path / "datalist.json"), "ckpt_dir": str(tmp_path / "models"),
               "batch_size": 1}
    single = run_bundle("evaluating", [TRAIN, EVALUATE], {**options, "output_dir": str(tmp_path / "single")},
                        extra_env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, (single.stdout + single.stderr)[-4000:]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29535",
           "-m", "monai.bundle", "run", "evaluating", "--config_file", repr([TRAIN, EVALUATE, MULTI_GPU_EVALUATE]),
           *cli_args({**options, "output_dir": str(tmp_path / "multi")})]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert log.count("evaluation on 'validation'") == 1, log[-4000:]  # printed by rank 0 only

    one, two = read_outputs(tmp_path / "single"), read_outputs(tmp_path / "multi")
    assert sorted(two) == sorted(one) and "metrics.csv" in one and "evaluation_validation.json" in one
    assert two["metrics.csv"] == pytest.approx(one["metrics.csv"], rel=1e-6)  # means over the images in rank order
    summary_one, summary_two = one.pop("evaluation_validation.json"), two.pop("evaluation_validation.json")
    assert len({row["dice"] for row in summary_one["per_image"]}) == 3  # a mix-up of images would show
    assert summary_two["per_image"] == summary_one["per_image"]  # same score under the same image name
    for key in ("per_image_mean_dice", "per_image_mean_iou", "global_dice", "global_iou"):
        assert summary_two[key] == pytest.approx(summary_one[key], rel=1e-6), key
    assert summary_two["images"] == 3
    del one["metrics.csv"], two["metrics.csv"]
    assert two == one  # per-image CSVs (rows of every image, once) and their summaries
