"""scripts/benchmark.py (and its bench_* modules) on tiny settings: every table runs end to end and the report renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from scripts import bench_report, bench_runs, bench_speed, benchmark


@pytest.mark.slow
def test_accuracy_smoke_runs_the_bundle_configs(tmp_path):
    out = tmp_path / "accuracy"
    assert benchmark.main(["accuracy", "--smoke", "--out", str(out), "--variants", "lcpdn_pretrained", "unet",
                           "--epochs", "1", "--pretrain-epochs", "1"]) == 0
    pretrain, *records = bench_runs.read_results(out)
    assert pretrain["name"] == "pretrain" and pretrain["options"]["pretrain_splits"] == ["training"]
    assert [r["name"] for r in records] == ["lcpdn_pretrained_seed0", "unet_seed0"]
    ckpt = records[0]["options"]["backbone_ckpt"]
    assert ckpt.endswith("backbone_pretrained.pt") and (out / "pretrain" / "models" / "backbone_pretrained.pt").is_file()
    for r in records:
        assert 0 <= r["metrics"]["per_image_mean_dice"] <= 1 and r["train"]["returncode"] == 0
        assert "monai.bundle run training" in r["train"]["command"]  # measured through the shipped configs
        assert len(r["curve"]["val_mean_dice"]) == 1
    table = bench_report.accuracy_table(records)
    assert "| lcpdn_pretrained | 1 |" in table and "| unet | 1 |" in table


@pytest.mark.slow
def test_speed_and_text_encoder_smoke(tmp_path):
    assert benchmark.main(["speed", "--smoke", "--out", str(tmp_path / "speed"), "--pipelines", "lcpdn",
                           "textdiff_faithful", "--steps", "1", "--repeats", "1", "--batch", "2"]) == 0
    records = bench_runs.read_results(tmp_path / "speed")
    assert {r["pipeline"] for r in records} == {"lcpdn", "textdiff_faithful"}
    assert all(r["train_images_per_s"] > 0 and 0 < r["peak_rss_gb"] < 4 for r in records)  # the worker's own peak
    # the test-time average runs the identity and the four reflections (seconds: no ratio is asserted, a
    # busy machine can time one single pass slower than five)
    assert all(r["inference_tta_passes"] == 5 and r["inference_tta_seconds_per_image"] > 0 for r in records)
    assert benchmark.main(["text-encoders", "--smoke", "--out", str(tmp_path / "text_encoders"), "--batches", "2"]) == 0
    text = bench_runs.read_results(tmp_path / "text_encoders")
    assert {(r["encoder"], r["cache"]) for r in text} == {(e, c) for e in ("bert", "modernbert") for c in (False, True)}
    assert benchmark.main(["report", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## Speed" in report and "## Text encoders" in report


def test_parse_sets_and_curve(tmp_path):
    assert bench_runs.parse_sets(["epochs=3", "blocks=[1, 2]", "fusion=ltfr"]) == {"epochs": 3, "blocks": [1, 2], "fusion": "ltfr"}
    log = tmp_path / "train.log"
    log.write_text("x - INFO - epoch 1/2: train loss 1.2500, train Dice 0.4000, val Dice 0.5000, val IoU 0.3000 "
                   "(best 0.5000, epoch 1), lr 1.0e-03, 3 s\n"
                   "x - INFO - epoch 2/2: train loss 1.1000, train Dice 0.4500, lr 5.0e-04, 3 s\n")  # no validation
    assert bench_runs.parse_curve(log) == {"val_mean_dice": [0.5], "val_mean_iou": [0.3], "train_loss_avg": [1.25, 1.1],
                                           "best_epoch": [1]}
    assert json.loads(json.dumps(bench_runs.machine()))["cores"] >= 1


def test_repeated_set_options_accumulate():
    args = benchmark.build_parser().parse_args(
        ["accuracy", "--set", "backbone_res_blocks=2", "--set", "blocks=[3, 6]", "epochs=2"])
    assert bench_runs.parse_sets(args.set) == {"backbone_res_blocks": 2, "blocks": [3, 6], "epochs": 2}


def test_speed_table_reports_ratios_against_the_textdiff_pipeline():
    rows = [{"pipeline": "lcpdn", "trainable_parameters": 5e6, "batch": 4, "train_images_per_s": 1.0,
             "inference_seconds_per_image": 0.2, "inference_tta_passes": 5, "inference_tta_seconds_per_image": 1.1,
             "peak_rss_gb": 5.0},
            {"pipeline": "textdiff_faithful", "trainable_parameters": 9e6, "batch": 1, "train_images_per_s": 0.25,
             "inference_seconds_per_image": 1.0, "peak_rss_gb": 6.0}]  # a record from before the test-time column
    table = bench_report.speed_table(rows)
    assert "| lcpdn | 5.00M | 4 | 1.000 | 0.200 | 1.100 (5) | 5.00 | 4.0x | 5.0x |" in table
    assert "| textdiff_faithful | 9.00M | 1 | 0.250 | 1.000 | - | 6.00 | 1.0x | 1.0x |" in table
    assert bench_report.speed_table(rows[:1]).endswith("| - | - |")  # no reference in the run: no ratios


def test_accuracy_table_reports_the_best_epoch():
    record = {"name": "lcpdn_seed0", "train": {"seconds": 120.0, "peak_rss_gb": 3.0}, "curve": {"val_mean_dice": [0.5, 0.7, 0.6]},
              "metrics": {"per_image_mean_dice": 0.7, "per_image_mean_iou": 0.55, "global_dice": 0.72, "global_iou": 0.56}}
    assert "| lcpdn | 1 | 70.00 | 55.00 | 72.00 | 56.00 | 2 | 2.0 | 3.0 |" in bench_report.accuracy_table([record])
    # a 4-decimal tie in the logged curve: the engine's full-precision best epoch (the saved model) is reported
    record["curve"] = {"val_mean_dice": [0.5, 0.7, 0.7], "best_epoch": [1, 2, 3]}
    assert "| 70.00 | 55.00 | 72.00 | 56.00 | 3 |" in bench_report.accuracy_table([record])


@pytest.mark.parametrize("pipeline", ["lcpdn_paper_timesteps", "textdiff_faithful"])
def test_paper_timestep_pipelines_do_not_follow_the_default(tmp_path, pipeline):
    net, needs_text = bench_speed.build_pipeline(pipeline, smoke=True, tmp=tmp_path)
    assert tuple(net.extractor.timesteps) == bench_runs.PAPER_TIMESTEPS and needs_text


def test_speed_worker_runs_on_the_requested_device(capsys):
    assert benchmark.main(["_speed-worker", "--pipeline", "unet", "--smoke", "--steps", "1", "--repeats", "1",
                           "--batch", "2", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["device"] == "cpu" and record["train_images_per_s"] > 0
    assert "peak_gpu_memory_gib" not in record  # only a CUDA run reports GPU memory


def test_speed_worker_refuses_a_missing_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the no-CUDA message")
    assert benchmark.main(["_speed-worker", "--pipeline", "unet", "--smoke", "--device", "cuda"]) == 2
    assert "ERROR: --device cuda: torch.cuda.is_available() is False" in capsys.readouterr().err


@pytest.mark.slow
def test_lesions_and_steering_smoke(tmp_path, root):
    """The CXR table on the committed tiny chest X-rays: one split per sentence source, then the steering probe."""
    data = root / "tests" / "data" / "cxr_tiny"
    out = tmp_path / "lesions"
    argv = ["lesions", "--smoke", "--out", str(out), "--images", str(data / "img"), "--masks", str(data / "lesion"),
            "--lungs", str(data / "lungs"), "--csv", str(data / "meta.csv"), "--epochs", "1", "--val-fraction", "0.34"]
    assert benchmark.main([*argv, "--text-sources", "generated", "constant", "--variants", "lcpdn"]) == 0
    # another LCPDN variant: its layer, a run per sentence source named after it
    assert benchmark.main([*argv, "--text-sources", "constant", "--variants", "lcpdn_diffusion_unet"]) == 0
    generated = json.loads((out / "datalist_generated.json").read_text())
    constant = json.loads((out / "datalist_constant.json").read_text())
    assert [i["image"] for i in generated["validation"]] == [i["image"] for i in constant["validation"]]  # same split
    assert {i["text"] for i in constant["training"]} == {"Pulmonary infection in the lungs."}
    runs = {r["name"]: r for r in bench_runs.read_results(out) if "metrics" in r}
    assert set(runs) == {"cxr_lcpdn_generated_seed0", "cxr_lcpdn_constant_seed0", "cxr_lcpdn_constant_diffusion_unet_seed0"}
    assert runs["cxr_lcpdn_constant_diffusion_unet_seed0"]["layers"][-1].endswith("diffusion_model_unet.json")
    assert benchmark.main(["steering", "--results", str(out), "--run", "cxr_lcpdn_generated_seed0", "--datalist",
                           str(out / "datalist_generated.json"), "--out", str(tmp_path / "steer")]) == 0
    (record,) = bench_runs.read_results(tmp_path / "steer")
    assert record["run"] == "cxr_lcpdn_generated_seed0" and isinstance(record["items"], list)
    bilateral = [i for i in generated["validation"] if i["text"].startswith("Bilateral")]
    referring = [r for r in record["items"] if r["axis"] == "referring"]
    assert len(referring) <= 2 * len(bilateral)  # each lung of each bilateral item, at most
    assert all(r["text"].startswith("Unilateral") and 0 <= r["dice_named_lung"] <= 1 for r in referring)
    # the location prompt trains, and steering reads it through the items' orientation
    assert benchmark.main([*argv, "--text-sources", "generated", "--variants", "lcpdn", "--tag", "_location",
                           "--set", "location_prompt=true"]) == 0
    runs = {r["name"]: r for r in bench_runs.read_results(out) if "metrics" in r}
    assert runs["cxr_lcpdn_generated_location_seed0"]["options"]["location_prompt"] is True
    assert benchmark.main(["steering", "--results", str(out), "--run", "cxr_lcpdn_generated_location_seed0",
                           "--datalist", str(out / "datalist_generated.json"), "--out", str(tmp_path / "steer_location")]) == 0
    assert benchmark.main(["label-resize", "--results", str(out), "--run", "cxr_lcpdn_generated_seed0", "--datalist",
                           str(out / "datalist_generated.json"), "--out", str(tmp_path / "resize")]) == 0
    (record,) = bench_runs.read_results(tmp_path / "resize")
    assert len(record["items"]) == len(generated["validation"])
    assert all(0 <= record[k] <= 1 for k in ("dice_bundle_label", "dice_nearest", "dice_bilinear", "dice_original_size"))
    assert benchmark.main(["tta", "--results", str(out), "--runs", "cxr_lcpdn_generated_seed0", "--out", str(tmp_path / "tta")]) == 0
    (record,) = bench_runs.read_results(tmp_path / "tta")
    trained = next(r for r in bench_runs.read_results(out) if r["name"] == "cxr_lcpdn_generated_seed0")
    off, on = record["tta_off"], record["tta_on"]
    assert off["per_image_mean_dice"] == pytest.approx(trained["metrics"]["per_image_mean_dice"], abs=1e-6)  # one pass
    assert "--tta false" in off["command"] and "--tta true" in on["command"] and 0 <= on["per_image_mean_dice"] <= 1


@pytest.mark.slow
def test_lesions_label_efficiency_smoke(tmp_path, root):
    """CT label efficiency on the committed tiny CT slices: a training subset, stage 1 on an unlabelled folder."""
    data = root / "tests" / "data" / "ct_covid_tiny"
    out = tmp_path / "ct"
    argv = ["lesions", "--smoke", "--out", str(out), "--name", "ct", "--images", str(data / "img"), "--masks",
            str(data / "mask"), "--modality", "ct", "--orientation", "transposed", "--val-fraction", "0.5",
            "--text-sources", "generated", "--epochs", "1", "--train-items", "1"]
    assert benchmark.main([*argv, "--variants", "lcpdn_pretrained"]) == 2  # no unlabelled images named
    assert benchmark.main([*argv, "--variants", "lcpdn_pretrained", "unet", "--pretrain-folder", str(data / "img"),
                           "--pretrain-epochs", "1"]) == 0
    datalist = json.loads((out / "datalist_generated_few1.json").read_text())
    assert len(datalist["training"]) == 1 and len(datalist["validation"]) == 1
    records = bench_runs.read_results(out)
    pretrain = next(r for r in records if r["name"] == "pretrain")
    assert pretrain["options"]["image_folder"] == str(data / "img") and pretrain["train"]["returncode"] == 0
    runs = {r["name"]: r for r in records if "metrics" in r}
    assert set(runs) == {"ct_few1_lcpdn_generated_pretrained_seed0", "ct_few1_unet_seed0"}
    ckpt = Path(runs["ct_few1_lcpdn_generated_pretrained_seed0"]["options"]["backbone_ckpt"])
    assert ckpt.is_file() and ckpt.parent.parent == out / "pretrain"


def documented_commands(root) -> list[list[str]]:
    """The argument lists of every ``python scripts/benchmark.py ...`` in README.md, docs/*.md and the script's
    docstring; shell blocks run under bash with ``python`` as a recorder, so variables and quoting are bash's."""
    import re
    import shlex
    import subprocess

    texts = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    blocks, inline = [], []
    for path in texts:
        text = path.read_text(encoding="utf-8")
        blocks += [b for b in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S) if "scripts/benchmark.py" in b]
        inline += re.findall(r"`(python scripts/benchmark\.py[^`]*)`", text)
    inline += [line.strip() for line in benchmark.__doc__.splitlines() if line.strip().startswith("python scripts/benchmark.py")]
    commands = [shlex.split(c)[2:] for c in inline]
    recorder = 'python() { [ "$1" = scripts/benchmark.py ] || return 0; shift; printf "%s\\x1f" "$@"; echo; }\n'
    for block in blocks:
        out = subprocess.run(["bash", "-c", recorder + block], capture_output=True, text=True, check=True).stdout
        commands += [line.split("\x1f")[:-1] for line in out.splitlines()]
    return commands


def test_every_documented_command_parses(root):
    """The split into bench_* modules keeps the command line: each documented command is still accepted."""
    commands = documented_commands(root)
    assert len(commands) >= 20 and {c[0] for c in commands} >= {"accuracy", "ct", "label-efficiency", "speed",
                                                                  "text-encoders", "figure", "report", "lesions", "steering",
                                                                  "label-resize", "tta"}
    parser = benchmark.build_parser()
    config = ConfigParser()
    config.read_config(bench_runs.TRAIN)
    for argv in commands:
        args = parser.parse_args(argv)  # argparse exits (SystemExit 2) on an unknown subcommand or option
        for key in bench_runs.parse_sets(getattr(args, "set", [])):  # a config path's parent must exist
            if "#" in key:
                assert key.rsplit("#", 1)[0] in config, (argv, key)
    resize = config["train"]["deterministic_transforms"][7]  # the index the documented commands name
    assert resize["_target_"] == "Resized" and resize["mode"] == ["bilinear", "nearest-exact"]


@pytest.mark.slow
def test_start_probe_records_a_curve(tmp_path):
    """`benchmark.py start`: the bundle's network and loaders in a plain loop, one curve row per epoch."""
    out = tmp_path / "start"
    assert benchmark.main(["start", "--smoke", "--out", str(out), "--modality", "he", "--size", "32", "--epochs", "2"]) == 0
    (record,) = bench_runs.read_results(out)
    assert record["name"] == "start_lcpdn_seed0" and [r["epoch"] for r in record["curve"]] == [1, 2]
    for row in record["curve"]:
        assert 0.0 <= row["val_dice"] <= 1.0 and 0.0 <= row["p_fg_on_bg"] <= 1.0 and row["loss"] > 0
