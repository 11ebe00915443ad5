"""scripts/gpu_check.py: the CPU run end to end, and the runner's failure, deadline and honesty rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scripts import gpu_check

ROOT = Path(__file__).resolve().parents[2]
CPU_OK = "ok (cpu, tiny)"


def keys(tree) -> set[str]:
    """Every key of a nested JSON value."""
    if isinstance(tree, dict):
        return set(tree) | {k for v in tree.values() for k in keys(v)}
    if isinstance(tree, list):
        return {k for v in tree for k in keys(v)}
    return set()


@pytest.mark.slow
def test_cpu_tiny_run_writes_an_honest_report(tmp_path):
    out = tmp_path / "eval" / "gpu_check.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out)]
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                            timeout=900)
    seconds = time.monotonic() - start
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert report["status"] == "ok" and report["device"] == "cpu" and report["tiny"]
    assert list(sections) == ["tests", "bundle_amp", "adm", "torchrun", "speed"]
    assert seconds < report["budget_s"] + 60  # it stops by itself
    # what ran, ran on the CPU and says so
    assert {sections[s]["status"] for s in ("tests", "bundle_amp", "adm")} == {CPU_OK}
    assert sections["tests"]["counts"]["passed"] >= 5 and sections["tests"]["device"] == "cpu"
    ref = sections["bundle_amp"]["runs"]["cpu_float32"]
    assert ref["status"] == "ok" and ref["device"] == "cpu" and ref["predictions"] >= 1
    assert all(0 <= v <= 1 for v in ref["metrics"].values())
    adm = sections["adm"]
    assert adm["layout"]["status"] == "ok" and adm["layout"]["parameters"] == 552_814_086
    assert adm["train_batch_1"]["loss_finite"] and adm["train_batch_1"]["cross_attention_gets_gradient"]
    assert adm["backbone_trainable_is_cross_attention"] and adm["device"] == "cpu"
    # nothing CUDA-only pretends to have run
    if not torch.cuda.is_available():
        assert sections["torchrun"]["status"] == sections["speed"]["status"] == gpu_check.NO_CUDA
        assert sections["bundle_amp"]["runs"]["cuda_float16"]["status"] == gpu_check.NO_CUDA
        assert sections["bundle_amp"]["runs"]["cuda_bfloat16"]["status"] == gpu_check.NO_CUDA
        assert adm["largest_batch"]["status"] == gpu_check.NO_CUDA
        assert not any("gpu_memory" in k for k in keys(sections))
    # the readable summary
    for name in sections:
        assert f"\n{name} " in result.stdout
    assert "overall: ok" in result.stdout and f"-> {out}" in result.stdout


def _ok(ctx, budget):
    return {"status": ctx.ok(), "summary": "fine"}


def _boom(ctx, budget):
    raise RuntimeError("the GPU caught fire")


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, capsys):
    out = tmp_path / "report.json"
    sections = [("first", _ok, 1.0), ("boom", _boom, 1.0), ("last", _ok, 1.0)]
    code = gpu_check.main(["--device", "cpu", "--out", str(out)], sections=sections)
    assert code == 1
    report = json.loads(out.read_text())
    assert report["status"] == "failed: boom"
    assert report["sections"]["boom"]["status"] == "failed"
    assert report["sections"]["boom"]["error"] == "RuntimeError: the GPU caught fire"
    assert report["sections"]["first"]["status"] == report["sections"]["last"]["status"] == CPU_OK
    printed = capsys.readouterr().out
    assert "boom        failed" in printed and "RuntimeError: the GPU caught fire" in printed


def test_the_deadline_skips_the_remaining_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_SECTION_S", 0.5)
    calls, budgets = [], []

    def slow(ctx, budget):
        budgets.append(budget)
        time.sleep(1.2)
        return {"status": ctx.ok()}

    def never(ctx, budget):
        calls.append("never")
        return {"status": ctx.ok()}

    out = tmp_path / "report.json"
    code = gpu_check.main(["--device", "cpu", "--out", str(out), "--budget-s", "1.5"],
                          sections=[("slow", slow, 1.0), ("never", never, 2.0)])
    report = json.loads(out.read_text())
    assert code == 0 and not calls
    assert report["sections"]["never"]["status"] == gpu_check.OUT_OF_TIME == "skipped: time budget"
    assert 0.3 < budgets[0] < 0.6  # its share (1 of 3) of the time left


def test_run_timed_kills_a_child_at_its_deadline(tmp_path):
    start = time.monotonic()
    run = gpu_check.run_timed([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                              tmp_path / "sleep.log", timeout=1.0)
    assert run["timed_out"] and run["returncode"] != 0 and time.monotonic() - start < 15
    assert "stopped at its time budget" in gpu_check.child_failed(run, tmp_path / "sleep.log", "sleep")
    ok = gpu_check.run_timed([sys.executable, "-c", "print('ERROR: bad option x')"], tmp_path / "ok.log", timeout=30)
    assert ok["returncode"] == 0 and not ok["timed_out"] and gpu_check.child_failed(ok, tmp_path / "ok.log", "x") is None
    bad = gpu_check.run_timed([sys.executable, "-c", "import sys; print('ERROR: bad option x'); sys.exit(2)"],
                              tmp_path / "bad.log", timeout=30)
    assert "exited with 2: ERROR: bad option x" in gpu_check.child_failed(bad, tmp_path / "bad.log", "x")


def test_log_parsers(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "t - ignite.engine.engine.SupervisedEvaluator - INFO - Epoch[1] Complete. Time taken: 00:00:00.500\n"
        "t - ignite.engine.engine.SupervisedTrainer - INFO - Epoch[1] Complete. Time taken: 00:00:02.000\n"
        "t - ignite.engine.engine.SupervisedEvaluator - INFO - Epoch[2] Complete. Time taken: 00:00:00.250\n"
        "t - ignite.engine.engine.SupervisedTrainer - INFO - Epoch[2] Complete. Time taken: 00:01:01.250\n"
        f"progress 100%{gpu_check.PEAK_MARK}" + '{"max_memory_allocated": 1073741824, "max_memory_reserved": 0}\n'
    )
    assert gpu_check.epoch_seconds(log) == ([2.0, 61.25], [0.5, 0.25])
    assert gpu_check.marked_json(log, gpu_check.PEAK_MARK)["max_memory_allocated"] == 2**30
    assert gpu_check.marked_json(log, gpu_check.RESULT_MARK) is None
    cmd = gpu_check.wrapped([sys.executable, "-m", "monai.bundle", "run", "training"])
    assert cmd[1] == "-c" and "torch.cuda.max_memory_allocated()" in cmd[2] and cmd[3:] == ["run", "training"]


def test_speed_section_runs_the_benchmark_workers_on_the_device(tmp_path, monkeypatch):
    """The CUDA branch's plumbing with a stand-in worker (the real one needs a GPU)."""
    seen = []

    def fake_run(cmd, log, timeout, env=None):
        seen.append(cmd)
        pipeline = cmd[cmd.index("--pipeline") + 1]
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("loading\n" + json.dumps({"pipeline": pipeline, "device": "cuda", "train_images_per_s": 40.0,
                                                 "inference_seconds_per_image": 0.02, "peak_gpu_memory_gib": 1.5,
                                                 "machine": {}}) + "\n")
        return {"returncode": 0, "seconds": 1.0, "peak_rss_gb": 1.0, "timed_out": False, "command": " ".join(cmd)}

    monkeypatch.setattr(gpu_check, "run_timed", fake_run)
    ctx = gpu_check.Context(device="cuda", tiny=False, work=tmp_path, deadline=time.monotonic() + 600)
    result = gpu_check.section_speed(ctx, 300)
    assert result["status"] == "ok" and list(result["pipelines"]) == list(gpu_check.PIPELINES)
    assert all(c[2] == "_speed-worker" and c[c.index("--device") + 1] == "cuda" for c in seen)
    assert "lcpdn: 40.0 img/s, 20 ms/image, 1.5 GiB" in result["summary"]
    cpu = gpu_check.Context(device="cpu", tiny=True, work=tmp_path, deadline=time.monotonic() + 600)
    assert gpu_check.section_speed(cpu, 300)["status"] == gpu_check.NO_CUDA
    assert gpu_check.section_torchrun(cpu, 300)["status"] == gpu_check.NO_CUDA


def test_work_folder_of_someone_else_is_never_emptied(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code = gpu_check.cli(["--device", "cpu", "--out", str(tmp_path / "r.json"), "--work", str(tmp_path / "mine")],
                         sections=[])
    assert code == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert "not made by gpu_check.py" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_device_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path / "r.json")]) == 2
    assert "ERROR: --device cuda but torch.cuda.is_available() is False" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
