"""scripts/make_sentences.py: mask folder (+ lungs) -> CSV / xlsx of sentences, on real downscaled fixtures."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.errors import BundleInputError
from scripts.make_sentences import main, read_mask, sentences_for_folder, write_sentence_table
from scripts.common import read_text_table

ROOT = Path(__file__).resolve().parents[2]

CXR = {  # real chest X-rays (tests/data/cxr_tiny), checked against the full-resolution masks
    "cxr011.png": "Bilateral pulmonary infection, two infected areas, middle left lung and middle right lung.",
    "cxr030.png": "Bilateral pulmonary infection, two infected areas, middle left lung and middle right lung.",
    "cxr089.png": "Unilateral pulmonary infection, one infected area, upper right lung.",
}
CT = {  # real ct_covid slices, stored transposed (patient's right at the top, anterior on the left)
    "ct002.png": "Unilateral pulmonary infection, one infected area, lower left lung.",
    "ct054.png": "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
}


def test_cxr_fixture_with_lungs(data_dir: Path) -> None:
    rows = sentences_for_folder(data_dir / "cxr_tiny" / "lesion", data_dir / "cxr_tiny" / "lungs")
    assert dict(rows) == CXR


def test_ct_fixture_orientation(data_dir: Path) -> None:
    masks = data_dir / "ct_covid_tiny" / "mask"
    assert dict(sentences_for_folder(masks, modality="ct", orientation="transposed")) == CT
    # read as merely upside down, both lungs of ct054 (stored at the top and the bottom) fall in one image half
    upside_down = dict(sentences_for_folder(masks, modality="ct", orientation="upside_down"))
    assert upside_down["ct054.png"].startswith("Unilateral")


def test_tables(tmp_path: Path) -> None:
    rows = [("a.png", "Unilateral pulmonary infection, one infected area, lower left lung."), ("b.png", "x, y.")]
    write_sentence_table(tmp_path / "t.csv", rows)
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["image", "sentence"], *map(list, rows)]
    write_sentence_table(tmp_path / "t.xlsx", rows)
    assert read_text_table(tmp_path / "t.xlsx") == dict(rows)  # an LViT text table
    with pytest.raises(BundleInputError, match="give a .csv or .xlsx"):
        write_sentence_table(tmp_path / "t.txt", rows)


def test_read_mask_and_folder_errors(tmp_path: Path, data_dir: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2, 3, 1] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").sum() == 1
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(BundleInputError, match="cannot read mask"):
        read_mask(tmp_path / "bad.png")
    with pytest.raises(BundleInputError, match="does not exist"):
        sentences_for_folder(tmp_path / "nope")
    lungs = tmp_path / "lungs"
    lungs.mkdir()
    with pytest.raises(BundleInputError, match="holds no image files"):
        sentences_for_folder(data_dir / "cxr_tiny" / "lesion", lungs)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(lungs / "cxr011.png")
    with pytest.raises(BundleInputError, match=r"2 mask\(s\) have no lung mask.*cxr030, cxr089"):
        sentences_for_folder(data_dir / "cxr_tiny" / "lesion", lungs)


def test_main(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ct.xlsx"
    argv = ["--masks", str(data_dir / "ct_covid_tiny" / "mask"), "--modality", "ct", "--orientation", "transposed"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "wrote 2 sentences" in capsys.readouterr().out and read_text_table(out) == CT
    assert main([*argv, "--out", str(tmp_path / "ct.txt")]) == 2
    assert "ERROR: option --out" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_subprocess(data_dir: Path, tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "make_sentences.py")
    cxr = data_dir / "cxr_tiny"
    out = tmp_path / "cxr.csv"
    argv = [sys.executable, script, "--masks", str(cxr / "lesion"), "--lungs", str(cxr / "lungs")]
    ok = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    with open(out, newline="", encoding="utf-8") as f:
        assert dict(list(csv.reader(f))[1:]) == CXR
    assert "Traceback" not in ok.stderr


def test_bad_option(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--masks", str(data_dir / "cxr_tiny" / "lesion"), "--out", str(tmp_path / "x.csv"), "--min-area", "-1"])
    assert e.value.code == 2 and "must be >= 0" in capsys.readouterr().err
