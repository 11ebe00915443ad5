"""TorchScript export (``python -m monai.bundle ckpt_export --use_trace True``) of the tiny network.

Scripting fails on MONAI's DiffusionModelUNet, so the bundle is exported by tracing with the default
sentence: the exported file must give the PyTorch network's logits for the same image (docs/export.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle_cli import INFERENCE, METADATA, ROOT, cli_args

pytestmark = pytest.mark.slow

SIZE = 32  # tiny_network_options' image_size


def build_network(options: dict) -> torch.nn.Module:
    """``network_def`` of configs/inference.json with the given overrides (as ckpt_export builds it)."""
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update(options)
    return parser.get_parsed_content("network_def")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_network_options) -> Path:
    """models/model.pt of a tiny network with random (seeded) weights, flat as the trainer saves it."""
    torch.manual_seed(0)
    net = build_network(tiny_network_options)
    path = tmp_path_factory.mktemp("export") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


def ckpt_export(checkpoint: Path, filepath: Path, options: dict, shape: list[int]) -> subprocess.CompletedProcess:
    """The documented export command (docs/export.md), run as a user would."""
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(filepath),
           "--ckpt_file", str(checkpoint), "--meta_file", METADATA, "--config_file", INFERENCE,
           "--key_in_ckpt", "model", "--use_trace", "True", "--input_shape", repr(shape),
           "--converter_kwargs", "{'check_trace': False}", *cli_args(options)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def exported(checkpoint, tiny_network_options) -> Path:
    """The tiny network exported to model.ts next to its checkpoint."""
    filepath = checkpoint.parent / "model.ts"
    result = ckpt_export(checkpoint, filepath, tiny_network_options, [1, 3, SIZE, SIZE])
    assert result.returncode == 0, result.stderr[-3000:]
    return filepath


def test_traced_model_matches_pytorch_with_the_default_text(exported, checkpoint, tiny_network_options):
    net = build_network(tiny_network_options)
    net.load_state_dict(torch.load(checkpoint, weights_only=True))
    net.eval()
    ts = torch.jit.load(str(exported), map_location="cpu").eval()
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):  # fresh images, not the random tensor the trace was recorded with
        image = torch.rand(1, 3, SIZE, SIZE, generator=gen) * 2 - 1
        with torch.no_grad():
            expected, got = net(image), ts(image)
        assert got.shape == (1, 2, SIZE, SIZE)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the default sentence is baked in: another sentence gives other logits
        other = net(image, text="two infected areas in the lower left lung.")
    assert not torch.allclose(other, expected, atol=1e-4)


def test_trace_holds_the_image_encoder_and_constants_for_noise_and_text(exported):
    graph = torch.jit.load(str(exported), map_location="cpu").inlined_graph
    kinds = {n.kind() for n in graph.nodes()}
    sources = " ".join(n.sourceRange() for n in graph.nodes())
    assert not {"aten::randn", "aten::normal", "aten::rand"} & kinds  # the seeded eps is baked in, not redrawn
    assert "modeling_clip" in sources  # the frozen image encoder (tiny CLIP here) runs inside the trace
    assert "modeling_bert" not in sources  # the default sentence is a constant: no text encoder in the file


def test_exported_file_carries_metadata_and_inference_config(exported):
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(exported), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    assert meta["version"] == json.loads(Path(METADATA).read_text())["version"]
    assert "network_def" in json.loads(extra["inference.json"])


def test_export_without_checkpoint_is_a_clear_error(tmp_path, tiny_network_options):
    result = ckpt_export(tmp_path / "none.pt", tmp_path / "model.ts", tiny_network_options, [1, 3, SIZE, SIZE])
    assert result.returncode != 0 and "not found" in result.stderr
    assert not (tmp_path / "model.ts").exists()
