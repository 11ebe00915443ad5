"""scripts/package_zoo.py: a clean zoo zip that `monai.bundle download` installs and that runs on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.scripts import _safe_large_file_path
from PIL import Image

from bundle.errors import BundleInputError
from scripts.package_zoo import bundle_name, package_zoo
from tests.configs.bundle_cli import METADATA, ROOT, TRAIN, cli_args

META = json.loads(Path(METADATA).read_text())
NAME = bundle_name(META)
DEMO = "docs/demo_data/monuseg/Val_Folder/img/TCGA-18-5592-01Z-00-DX1.png"


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, tiny_network_options) -> Path:
    """models/model.pt of the tiny network trained 1 epoch on the bundle's own demo data (2 images)."""
    out = tmp_path_factory.mktemp("trained")
    options = {**tiny_network_options, "datalist": str(ROOT / "docs/demo_data/monuseg/datalist.json"), "max_items": 2,
               "ckpt_dir": str(out / "models"), "log_dir": str(out / "runs"), "epochs": 1, "batch_size": 2}
    wf = ConfigWorkflow(config_file=TRAIN, meta_file=METADATA, workflow_type="train", **options)
    wf.initialize()
    wf.run()
    wf.finalize()
    assert (out / "models" / "model.pt").is_file()
    return out / "models" / "model.pt"


@pytest.fixture(scope="module")
def zoo_zip(tmp_path_factory, trained_model) -> Path:
    """The zip written by the documented command, with the tiny model packed."""
    out = tmp_path_factory.mktemp("dist") / f"{NAME}_v{META['version']}.zip"
    cmd = [sys.executable, "scripts/package_zoo.py", "--out", str(out), "--model", str(trained_model)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    return out


def test_name_is_the_slug_of_the_metadata_name():
    name = bundle_name({"name": "LCPDN text-guided diffusion segmentation"})
    assert name == "lcpdn_text_guided_diffusion_segmentation"
    with pytest.raises(BundleInputError, match="no 'name'"):
        bundle_name({})


def test_zip_holds_the_bundle_and_nothing_else(zoo_zip):
    names = zipfile.ZipFile(zoo_zip).namelist()
    assert all(n.startswith(f"{NAME}/") for n in names)
    rel = {n[len(NAME) + 1:] for n in names}
    for required in ("configs/inference.json", "configs/train.json", "configs/metadata.json", "configs/logging.conf",
                     "configs/modality/cxr.json", "docs/network.md", "docs/demo_data/monuseg/datalist.json", DEMO,
                     "models/model.pt", "LICENSE", "large_files.yml", "bundle/__init__.py",
                     "bundle/networks/lcpdn.py", "scripts/prepare_lvit.py", "scripts/slice_ct.py"):
        assert required in rel, required
    assert {p for p in rel if p.startswith("models/")} == {"models/model.pt"}  # no resume checkpoints
    top = {p.split("/")[0] for p in rel}
    assert top <= {"configs", "docs", "models", "bundle", "scripts", "LICENSE", "large_files.yml"}, top
    assert not [p for p in rel if "__pycache__" in p or p.endswith((".pyc", ".tmp"))]
    assert not {"scripts/package_zoo.py", "scripts/benchmark.py", "scripts/make_fixtures.py"} & rel  # dev tools
    assert not [p for p in rel if p.startswith("scripts/bench_")]


def test_packed_scripts_import_only_packed_scripts():
    """prepare_lvit.py and slice_ct.py run from the installed zip: every ``scripts.*`` module they import is packed."""
    import ast

    from scripts.package_zoo import bundle_files

    packed = {rel for rel in bundle_files(ROOT, None) if rel.startswith("scripts/")}
    for rel in packed:
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        for module in sorted(m for m in imported if m.startswith("scripts.")):
            assert f"{module.replace('.', '/')}.py" in packed, f"{rel} imports {module}, which the zip lacks"


def test_installed_zip_runs_inference_from_its_own_folder(zoo_zip, tmp_path, tiny_network_options):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "download", "--name", NAME, "--url",
                             zoo_zip.as_uri(), "--bundle_dir", str(tmp_path / "zoo"), "--progress", "False"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "zoo" / NAME
    assert (folder / "configs" / "inference.json").is_file() and (folder / "models" / "model.pt").is_file()

    env = {**env, "PYTHONPATH": str(folder), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-c", "import bundle; print(bundle.__file__)"], cwd=folder, env=env,
                           capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(folder), where  # the zip's copy of the package, not the repo's
    options = {**tiny_network_options, "image": DEMO, "output_dir": str(tmp_path / "pred")}
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                             "configs/inference.json", "--meta_file", "configs/metadata.json", *cli_args(options)],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    mask = np.array(Image.open(tmp_path / "pred" / (Path(DEMO).stem + "_seg.png")))
    assert mask.shape == np.array(Image.open(folder / DEMO)).shape[:2] and set(np.unique(mask)) <= {0, 255}


def test_a_failed_write_leaves_no_zip(tmp_path, trained_model, monkeypatch):
    out = tmp_path / "bundle.zip"
    calls = []

    def broken_write(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    original = zipfile.ZipFile.write
    monkeypatch.setattr(zipfile.ZipFile, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        package_zoo(ROOT, out, trained_model)
    assert os.listdir(tmp_path) == []  # neither the zip nor its temporary file


def test_without_weights_the_zip_says_so(tmp_path, capsys):
    root = tmp_path / "bundle"
    for rel in ("configs/metadata.json", "configs/inference.json", "LICENSE", "large_files.yml", "bundle/__init__.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((ROOT / rel).read_bytes())
    out = package_zoo(root, tmp_path / "out.zip")
    assert not [n for n in zipfile.ZipFile(out).namelist() if "/models/" in n]
    assert "NO models/model.pt" in capsys.readouterr().out
    name = bundle_name(json.loads((root / "configs" / "metadata.json").read_text()))
    version = json.loads((root / "configs" / "metadata.json").read_text())["version"]
    assert package_zoo(root, f"{tmp_path / 'dist'}/") == tmp_path / "dist" / f"{name}_v{version}.zip"  # --out dist/
    assert package_zoo(root, tmp_path / "dist").name == f"{name}_v{version}.zip"  # an existing folder
    with pytest.raises(BundleInputError, match="neither a folder nor a .zip"):
        package_zoo(root, tmp_path / "bundle.tar")
    with pytest.raises(BundleInputError, match="option --model"):
        package_zoo(root, tmp_path / "other.zip", tmp_path / "missing.pt")
    (root / "LICENSE").unlink()
    with pytest.raises(BundleInputError, match="lacks LICENSE"):
        package_zoo(root, tmp_path / "other.zip")
    assert not (tmp_path / "other.zip").exists()


def test_large_files_lists_the_weights_in_zoo_format():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "large_files.yml"))  # as `monai.bundle download_large_files` reads it
    entries = parser.get()["large_files"]
    for entry in entries:
        assert set(entry) == {"path", "url", "hash_val", "hash_type"}, entry
        _safe_large_file_path(str(ROOT), entry["path"])  # stays inside the bundle
        assert entry["url"].startswith("https://"), entry  # `download_large_files` fetches every entry
    urls = " ".join(e["url"] for e in entries)
    for source in ("CLIP-ViT-B-32", "Bio_ClinicalBERT", "ModernBERT-base", "256x256_diffusion_uncond.pt"):
        assert source in urls, source
