"""scripts/check_dataset.py: every kind of broken file is reported in one run; valid inputs pass."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from scripts.check_dataset import check_datalist, check_items, check_splits, main
from scripts.prepare_lvit import main as prepare_lvit

RNG = np.random.default_rng(0)


def noise(shape: tuple[int, ...], dtype=np.uint8, high: int = 255) -> np.ndarray:
    return RNG.integers(0, high, shape, dtype=dtype)


def png(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    Image.fromarray(array, mode).save(path)
    return str(path)


def run_script(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LCPDN_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        timeout=300,
    )


def test_every_problem_in_one_run(tmp_path: Path) -> None:
    good = png(tmp_path / "good.png", noise((40, 48)))
    truncated = tmp_path / "truncated.png"
    whole = Path(png(tmp_path / "whole.png", noise((40, 48)))).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    grey3 = png(tmp_path / "grey3.png", np.choose(noise((40, 48), high=3), [0, 100, 200]).astype(np.uint8))
    wrong_size = png(tmp_path / "wrong_size.png", (noise((30, 48)) > 128).astype(np.uint8) * 255)
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(noise((40, 48, 5)).astype(np.float32), np.eye(4)), volume)
    with_nan = noise((40, 48)).astype(np.float32)
    with_nan[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "with_nan.tif", with_nan)
    with_inf = noise((40, 48)).astype(np.float32)
    with_inf[5, 6] = np.inf
    nib.save(nib.Nifti1Image(with_inf, np.eye(4)), tmp_path / "with_inf.nii.gz")
    constant = png(tmp_path / "constant.png", np.full((40, 48), 7, np.uint8))
    (tmp_path / "zero_bytes.png").write_bytes(b"")
    tiny = png(tmp_path / "tiny.png", noise((16, 16)))
    items = [
        {"image": good, "label": grey3},
        {"image": str(truncated)},
        {"image": png(tmp_path / "good2.png", noise((40, 48))), "label": wrong_size},
        {"image": str(volume)},
        {"image": str(tmp_path / "with_nan.tif")},
        {"image": str(tmp_path / "with_inf.nii.gz")},
        {"image": constant},
        {"image": str(tmp_path / "zero_bytes.png")},
        {"image": tiny},
        {"image": str(truncated)},  # the same image twice
    ]
    problems = check_items(items, progress=False)
    expected = {
        "truncated.png": r"cannot read image file '.*truncated\.png' \(OSError: image file is truncated\)",
        "grey3.png": r"mask '.*grey3\.png' has values \{0, 100, 200\}; expected a binary mask",
        "wrong_size.png": r"mask '.*wrong_size\.png' is \(48, 30\) but image '.*good2\.png' is \(48, 40\)",
        "volume.nii.gz": r"image '.*volume\.nii\.gz' is a 3D volume .*slice_ct\.py",
        "with_nan.tif": r"image '.*with_nan\.tif' has 1 NaN pixel",
        "with_inf.nii.gz": r"image '.*with_inf\.nii\.gz' has 1 Inf pixel",
        "constant.png": r"image '.*constant\.png' is empty: every pixel has the value 7\.",
        "zero_bytes.png": r"image file '.*zero_bytes\.png' is empty \(0 bytes\)",
        "tiny.png": r"image '.*tiny\.png' has size \(16, 16\), smaller than 32 .*option image_size.*--min-size",
        "duplicate": r"image '.*truncated\.png' is listed 2 times in datalist \(items 1, 9\)",
    }
    for name, pattern in expected.items():
        assert sum(bool(re.search(pattern, p)) for p in problems) == 1, (name, problems)
    assert len(problems) == len(expected), problems  # one line per problem, the unreadable image read once
    assert check_items(items[8:9], min_size=16, progress=False) == []


def test_valid_inputs_pass(tmp_path: Path) -> None:
    mask = (noise((40, 48)) > 128).astype(np.uint8)
    rgb = noise((40, 48, 3))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    items = [
        {"image": png(tmp_path / "rgba.png", noise((40, 48, 4)), "RGBA"), "label": png(tmp_path / "m01.png", mask)},
        {"image": png(tmp_path / "grey.png", noise((40, 48))), "label": png(tmp_path / "m255.png", mask * 255)},
        {"image": png(tmp_path / "grey16.png", noise((40, 48), np.uint16, 65535)), "text": "x" * 2000},
        {"image": str(tmp_path / "cmyk.jpg"), "label": png(tmp_path / "empty_mask.png", mask * 0)},
        {
            "image": png(tmp_path / "Lunge_ä_肺.png", rgb),
            "label": png(tmp_path / "Maske_ø_病变.png", mask),
            "text": "Läsion im rechten Lungenflügel – 右肺病变。",
            "modality": "ct",
        },
    ]
    assert check_items(items, progress=False) == []


def test_leak_between_splits_and_bad_entries(tmp_path: Path) -> None:
    image = png(tmp_path / "a.png", noise((40, 48)))
    other = png(tmp_path / "b.png", noise((40, 48)))
    datalist = {
        "training": [{"image": image}, {"image": other, "text": "  "}],
        "testing": [{"image": image}, {"label": other}],
        "ct_window": [-1000, 400],
    }
    problems = check_splits(datalist, progress=False)
    assert len(problems) == 3, problems
    assert "text for image '" in problems[0] and "b.png" in problems[0]
    assert problems[1] == "item 1 of testing has no 'image' path: each item needs an image file"
    assert problems[2].startswith(f"image '{image}' is in training and testing: an image must be in one split only")


def test_check_datalist_lists_every_missing_file(tmp_path: Path) -> None:
    good = png(tmp_path / "a.png", noise((40, 48)))
    items = [{"image": "a.png", "modality": "he"}, {"image": "gone1.png"}, {"image": good, "label": "gone2.png"}]
    (tmp_path / "d.json").write_text(json.dumps({"training": items}))
    problems = check_datalist(tmp_path / "d.json", progress=False)
    assert len(problems) == 2, problems
    assert "gone1.png' of item 1 of 'training'" in problems[0] and "gone2.png" in problems[1]
    assert check_datalist(tmp_path / "nope.json", progress=False) == [
        f"datalist '{tmp_path / 'nope.json'}' does not exist (option --datalist)"
    ]
    (tmp_path / "e.json").write_text(json.dumps({"other": []}))
    assert "has none of the splits" in check_datalist(tmp_path / "e.json", progress=False)[0]


def test_traceback_only_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (tmp_path / "t.png").write_bytes(Path(png(tmp_path / "w.png", noise((40, 48)))).read_bytes()[:100])
    monkeypatch.delenv("LCPDN_TRACEBACK", raising=False)
    assert len(check_items([{"image": str(tmp_path / "t.png")}], progress=False)) == 1
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv("LCPDN_TRACEBACK", "1")
    assert len(check_items([{"image": str(tmp_path / "t.png")}], progress=False)) == 1
    assert "Traceback" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--datalist", str(tmp_path / "d.json"), "--min-size", "0"])
    assert e.value.code == 2


def test_cli_on_the_fixture_and_on_broken_data(root: Path, data_dir: Path, tmp_path: Path) -> None:
    datalist = tmp_path / "lvit.json"
    assert prepare_lvit(["--root", str(data_dir / "lvit_tiny"), "--out", str(datalist)]) == 0
    ok = run_script(root, "scripts/check_dataset.py", "--datalist", str(datalist))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("checked 4 images and 4 masks in ") and ok.stdout.rstrip().endswith(": no problems")

    (tmp_path / "trunc.png").write_bytes(Path(png(tmp_path / "w.png", noise((40, 48)))).read_bytes()[:100])
    png(tmp_path / "grey3.png", np.choose(noise((40, 48), high=3), [0, 100, 200]).astype(np.uint8))
    bad = {"training": [{"image": "trunc.png", "label": "w.png"}, {"image": "w.png", "label": "grey3.png"}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    run = run_script(root, "scripts/check_dataset.py", "--datalist", str(tmp_path / "bad.json"), "--split", "training")
    assert run.returncode == 1, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 3 and "Traceback" not in run.stderr, run.stderr
    assert "cannot read image file" in errors[0] and str(tmp_path / "trunc.png") in errors[0]
    assert errors[1].startswith(f"ERROR: mask '{tmp_path / 'w.png'}' has values {{")  # a noise image as mask
    assert errors[2].startswith(f"ERROR: mask '{tmp_path / 'grey3.png'}' has values {{0, 100, 200}}")
    assert not (tmp_path / "bad.json.tmp").exists()
