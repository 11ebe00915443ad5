"""scripts/prepare_lvit.py: LViT layout -> datalist, naming rules, and every input error it must name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.data import DEFAULT_TEXT, load_datalist
from bundle.errors import BundleInputError
from scripts.common import read_text_table, write_text_table
from scripts.prepare_lvit import convert_lvit, detect_naming, main, mask_name


@pytest.fixture()
def png(data_dir: Path) -> bytes:
    """Bytes of a real small PNG (the converter only checks that files exist)."""
    return (data_dir / "lvit_tiny" / "Train_Folder" / "labelcol" / "TCGA-21-5784-01Z-00-DX1.png").read_bytes()


def make_split(
    root: Path, prefix: str, pairs: dict[str, str], png: bytes, rows: list[tuple[str, str]] | None = None
) -> Path:
    """Write ``root/<prefix>_Folder`` with image -> mask file pairs and a text table (default: one row per mask)."""
    folder = root / f"{prefix}_Folder"
    (folder / "img").mkdir(parents=True)
    (folder / "labelcol").mkdir()
    for image, mask in pairs.items():
        (folder / "img" / image).write_bytes(png)
        (folder / "labelcol" / mask).write_bytes(png)
    if rows is None:
        rows = [(mask, f"Sentence for {mask}.") for mask in pairs.values()]
    write_text_table(folder / f"{prefix}_text.xlsx", rows)
    return folder


def test_fixture_converts_with_monuseg_naming(data_dir: Path) -> None:
    datalist = convert_lvit(data_dir / "lvit_tiny", log=None)
    assert {k: len(v) for k, v in datalist.items()} == {"training": 2, "validation": 1, "testing": 1}
    test = datalist["testing"][0]
    assert test["image"].endswith("Test_Folder/img/TCGA-AY-A8YK-01A-01-TS1.tif")
    assert test["label"].endswith("Test_Folder/labelcol/TCGA-AY-A8YK-01A-01-TS1.png")  # .tif image, .png mask
    assert test["text"] == "The nuclei are evenly distributed."
    assert datalist["training"][1]["text"] == "The nuclei density in the upper right is high."
    assert all(i["modality"] == "he" for v in datalist.values() for i in v)


def test_main_writes_relative_datalist(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "datalist.json"
    assert main(["--root", str(data_dir / "lvit_tiny"), "--out", str(out), "--modality", "he"]) == 0
    assert "training 2, validation 1, testing 1" in capsys.readouterr().out
    raw = json.loads(out.read_text())
    assert not Path(raw["training"][0]["image"]).is_absolute()
    items = load_datalist(str(out), "testing", require_label=True)
    assert Path(items[0]["image"]).is_file() and Path(items[0]["label"]).is_file()


@pytest.mark.parametrize(
    "pairs, naming, modality",
    [
        ({"covid_1.png": "mask_covid_1.png", "covid_2.png": "mask_covid_2.png"}, "qata", "cxr"),
        ({"a.png": "a.png", "b.tif": "b.png"}, "monuseg", "he"),
        ({"a.tif": "a.tif", "b.tif": "b.tif"}, "mosmed", "he"),
    ],
)
def test_naming_detected(tmp_path: Path, png: bytes, pairs: dict, naming: str, modality: str) -> None:
    make_split(tmp_path, "Train", pairs, png)
    notes: list[str] = []
    datalist = convert_lvit(tmp_path, log=notes.append)
    assert f"mask naming: {naming} (detected)" in notes
    assert [Path(i["label"]).name for i in datalist["training"]] == [pairs[k] for k in sorted(pairs)]
    assert datalist["training"][0]["modality"] == modality  # QaTa's naming implies chest X-ray
    assert [mask_name(k, naming) for k in sorted(pairs)] == [pairs[k] for k in sorted(pairs)]


def test_modality_option_and_absent_splits(tmp_path: Path, png: bytes) -> None:
    make_split(tmp_path, "Val", {"s1.png": "s1.png"}, png)
    datalist = convert_lvit(tmp_path, modality="ct", log=None)
    assert list(datalist) == ["validation"] and datalist["validation"][0]["modality"] == "ct"


def test_missing_text_is_an_error_naming_the_mask(tmp_path: Path, png: bytes) -> None:
    make_split(
        tmp_path, "Train", {"a.png": "a.png", "b.png": "b.png"}, png, rows=[("a.png", "Text a."), ("b.png", "  ")]
    )
    with pytest.raises(BundleInputError, match=r"b\.png.*Train_text\.xlsx.*--allow-missing-text"):
        convert_lvit(tmp_path, log=None)


def test_allow_missing_text_fills_default_and_reports(tmp_path: Path, png: bytes) -> None:
    make_split(tmp_path, "Train", {"a.png": "a.png", "b.png": "b.png"}, png, rows=[("a.png", "Text a.")])
    notes: list[str] = []
    datalist = convert_lvit(tmp_path, modality="ct", allow_missing_text=True, log=notes.append)
    assert [i["text"] for i in datalist["training"]] == ["Text a.", DEFAULT_TEXT["ct"]]
    assert any("filled 1 missing sentence" in n for n in notes)


def test_missing_xlsx(tmp_path: Path, png: bytes) -> None:
    folder = make_split(tmp_path, "Train", {"a.png": "a.png"}, png)
    (folder / "Train_text.xlsx").unlink()
    with pytest.raises(BundleInputError, match=r"Train_text\.xlsx' does not exist"):
        convert_lvit(tmp_path, log=None)
    assert convert_lvit(tmp_path, allow_missing_text=True, log=None)["training"][0]["text"] == DEFAULT_TEXT["he"]


def test_missing_mask_names_the_image(tmp_path: Path, png: bytes) -> None:
    folder = make_split(tmp_path, "Train", {"a.png": "a.png", "b.png": "b.png"}, png)
    (folder / "labelcol" / "b.png").unlink()
    with pytest.raises(BundleInputError, match=r"1 image\(s\) in '.*img' have no mask.*b\.png -> b\.png"):
        convert_lvit(tmp_path, log=None)


def test_wrong_explicit_naming(tmp_path: Path, png: bytes) -> None:
    make_split(tmp_path, "Train", {"a.png": "a.png"}, png)
    with pytest.raises(BundleInputError, match=r"a\.png -> mask_a\.png"):
        convert_lvit(tmp_path, naming="qata", log=None)


def test_duplicate_xlsx_rows(tmp_path: Path, png: bytes) -> None:
    make_split(tmp_path, "Train", {"a.png": "a.png"}, png, rows=[("a.png", "One."), ("a.png", "Two.")])
    with pytest.raises(BundleInputError, match=r"Train_text\.xlsx' names mask 'a\.png' twice \(rows 2 and 3\)"):
        convert_lvit(tmp_path, log=None)


def test_two_images_one_mask(tmp_path: Path, png: bytes) -> None:
    folder = make_split(tmp_path, "Test", {"a.tif": "a.png"}, png)
    (folder / "img" / "a.png").write_bytes(png)  # a.png and a.tif both map to a.png under MoNuSeg naming
    with pytest.raises(BundleInputError, match=r"'.*a\.png' and '.*a\.tif' both map to mask '.*labelcol/a\.png'"):
        convert_lvit(tmp_path, log=None)


def test_bad_layouts(tmp_path: Path, png: bytes) -> None:
    with pytest.raises(BundleInputError, match="does not exist"):
        convert_lvit(tmp_path / "nope", log=None)
    with pytest.raises(BundleInputError, match="none of Train_Folder, Val_Folder, Test_Folder"):
        convert_lvit(tmp_path, log=None)
    (tmp_path / "Train_Folder" / "img").mkdir(parents=True)
    with pytest.raises(BundleInputError, match="no 'labelcol/' sub-folder"):
        convert_lvit(tmp_path, log=None)
    (tmp_path / "Train_Folder" / "labelcol").mkdir()
    with pytest.raises(BundleInputError, match="has no image files"):
        convert_lvit(tmp_path, log=None)
    (tmp_path / "Train_Folder" / "img" / "x.png").write_bytes(png)
    with pytest.raises(BundleInputError, match="no image in the dataset has a mask under any naming rule"):
        convert_lvit(tmp_path, log=None)


def test_bad_text_tables(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(BundleInputError, match=r"cannot read text table '.*bad\.xlsx'"):
        read_text_table(bad)
    write_text_table(tmp_path / "t.xlsx", [("a.png", "x")])
    import openpyxl

    wb = openpyxl.load_workbook(tmp_path / "t.xlsx")
    wb.active["A1"] = "Name"
    wb.save(tmp_path / "t.xlsx")
    with pytest.raises(BundleInputError, match=r"t\.xlsx' needs a header row with columns 'Image'"):
        read_text_table(tmp_path / "t.xlsx")


def test_ambiguous_naming(png: bytes, tmp_path: Path) -> None:
    make_split(tmp_path, "Train", {"a.png": "a.png"}, png)
    (tmp_path / "Train_Folder" / "labelcol" / "mask_a.png").write_bytes(png)  # both qata and mosmed fit
    with pytest.raises(BundleInputError, match="give different masks: pass --naming"):
        convert_lvit(tmp_path, log=None)
    assert detect_naming({Path("x"): ["a.png"]}, {Path("x"): {"a.png"}}) == "monuseg"  # identical rules: fine


def test_failed_conversion_leaves_no_output(tmp_path: Path, png: bytes, capsys: pytest.CaptureFixture) -> None:
    folder = make_split(tmp_path / "data", "Train", {"a.png": "a.png"}, png)
    (folder / "labelcol" / "a.png").unlink()
    out = tmp_path / "out" / "datalist.json"
    assert main(["--root", str(tmp_path / "data"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("ERROR: ")
    assert not out.exists()
    out.parent.mkdir()
    out.write_text("old")  # an existing datalist survives a failed run untouched
    assert main(["--root", str(tmp_path / "data"), "--out", str(out)]) == 2
    assert out.read_text() == "old" and sorted(p.name for p in out.parent.iterdir()) == ["datalist.json"]


def test_cli_as_a_script(root: Path, tmp_path: Path) -> None:
    """`python scripts/prepare_lvit.py` from the bundle root: exit 2 and a one-line error, no traceback."""
    shutil.copytree(root / "tests" / "data" / "lvit_tiny", tmp_path / "d")
    (tmp_path / "d" / "Val_Folder" / "Val_text.xlsx").unlink()
    cmd = [sys.executable, "scripts/prepare_lvit.py", "--root", str(tmp_path / "d"), "--out", str(tmp_path / "o.json")]
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("ERROR: text table") and "Traceback" not in run.stderr
    assert not (tmp_path / "o.json").exists()


def test_broken_files_stop_the_conversion(root: Path, tmp_path: Path) -> None:
    """Every problem of the data check is listed, exit 1, no datalist; --no-check writes it anyway."""
    import numpy as np
    from PIL import Image

    shutil.copytree(root / "tests" / "data" / "lvit_tiny", tmp_path / "d")
    train = tmp_path / "d" / "Train_Folder"
    grey3 = np.zeros((64, 64), np.uint8)
    grey3[:20], grey3[20:40] = 100, 200
    Image.fromarray(grey3).save(train / "labelcol" / "TCGA-21-5784-01Z-00-DX1.png")
    val_mask = tmp_path / "d" / "Val_Folder" / "labelcol" / "TCGA-18-5592-01Z-00-DX1.png"
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(val_mask)  # the image is 64 x 64
    image = train / "img" / "TCGA-21-5786-01Z-00-DX1.png"
    image.write_bytes(image.read_bytes()[:200])
    out = tmp_path / "o.json"
    cmd = [sys.executable, "scripts/prepare_lvit.py", "--root", str(tmp_path / "d"), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LCPDN_TRACEBACK": ""}
    run = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 3 and "Traceback" not in run.stderr, run.stderr
    assert "TCGA-21-5784-01Z-00-DX1.png' has values {0, 100, 200}" in errors[0]
    assert "cannot read image file" in errors[1] and "TCGA-21-5786-01Z-00-DX1.png" in errors[1]
    assert "TCGA-18-5592-01Z-00-DX1.png' is (64, 32) but image" in errors[2]
    assert f"nothing was written to {out}" in run.stderr and not out.exists()
    assert main(["--root", str(tmp_path / "d"), "--out", str(out), "--no-check"]) == 0 and out.is_file()
