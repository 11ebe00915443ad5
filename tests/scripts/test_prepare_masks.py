"""scripts/prepare_masks.py: image + mask folders (+ lungs, + CSV) -> datalist with a patient-grouped split."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.data import DEFAULT_TEXT, load_datalist
from bundle.errors import BundleInputError
from scripts.prepare_masks import convert_masks, grouped_split, main

ROOT = Path(__file__).resolve().parents[2]
STEMS = ("a", "b", "c", "d", "e", "f")
PATIENTS = {"a": "p1", "b": "p1", "c": "p2", "d": "p2", "e": "p3", "f": "p3"}


def make_dataset(root: Path, size: int = 40, notes: dict[str, str] | None = None) -> dict[str, Path]:
    """6 noise images with one lesion each (image's right half for a-c, left half for d-f), lungs, a CSV."""
    rng = np.random.default_rng(0)
    dirs = {k: root / k for k in ("img", "lesion", "lungs")}
    for d in dirs.values():
        d.mkdir(parents=True)
    half = size // 2
    for i, stem in enumerate(STEMS):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(dirs["img"] / f"{stem}.png")
        lesion = np.zeros((size, size), np.uint8)
        cols = slice(half + 4, half + 12) if i < 3 else slice(4, 12)
        lesion[2:8, cols] = 255  # top rows: upper zone
        Image.fromarray(lesion).save(dirs["lesion"] / f"{stem}.png")
        lungs = np.zeros((size, size), np.uint8)
        lungs[1 : size - 1, 2 : half - 2] = 255
        lungs[1 : size - 1, half + 2 : size - 2] = 255
        Image.fromarray(lungs).save(dirs["lungs"] / f"{stem}.png")
    notes = notes if notes is not None else {s: f"Notes of {s}." for s in STEMS}
    with open(root / "meta.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "patientid", "clinical_notes"])
        w.writerows([s, PATIENTS[s], notes.get(s, "")] for s in STEMS)
    return {**dirs, "csv": root / "meta.csv"}


@pytest.fixture()
def data(tmp_path: Path) -> dict[str, Path]:
    return make_dataset(tmp_path / "data")


def args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--images", str(data["img"]), "--masks", str(data["lesion"]), "--out", str(out), *extra]


def patients(datalist: dict) -> dict[str, set[str]]:
    return {split: {i["patient"] for i in items} for split, items in datalist.items()}


@pytest.mark.parametrize("seed", range(6))
def test_grouped_split_never_splits_a_patient(data: dict[str, Path], seed: int) -> None:
    datalist = convert_masks(
        data["img"], data["lesion"], csv_path=data["csv"], val_fraction=0.3, test_fraction=0.2, seed=seed
    )
    assert set(datalist) == {"training", "validation", "testing"}
    groups = patients(datalist)
    assert all(len(g) == 1 for g in groups.values())  # 3 patients, 3 splits: one each
    assert set.union(*groups.values()) == {"p1", "p2", "p3"}
    for items in datalist.values():
        assert len(items) == 2 and len({PATIENTS[Path(i["image"]).stem] for i in items}) == 1


def test_grouped_split_shares_and_determinism() -> None:
    groups = [f"g{i // 3}" for i in range(60)] + [f"s{i}" for i in range(40)]  # 20 triples, 40 singles
    split = grouped_split(groups, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert split == grouped_split(groups, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert split != grouped_split(groups, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert sorted(i for v in split.values() for i in v) == list(range(100))
    assert {k: len(v) for k, v in split.items()} == {"training": 70, "validation": 20, "testing": 10}
    owner = {groups[i]: s for s, v in split.items() for i in v}
    assert all(owner[groups[i]] == s for s, v in split.items() for i in v)
    assert list(grouped_split(["x", "y"], 0.0)) == ["training"]
    with pytest.raises(BundleInputError, match="cannot fill the splits"):
        grouped_split(["x", "x"], 0.5)
    with pytest.raises(BundleInputError, match="leave no training data"):
        grouped_split(["x", "y"], 0.5, 0.5)


def test_without_csv_each_image_is_its_own_group(data: dict[str, Path]) -> None:
    datalist = convert_masks(data["img"], data["lesion"], val_fraction=0.5)
    assert [len(v) for v in datalist.values()] == [3, 3]
    assert all("patient" not in i for v in datalist.values() for i in v)


def test_generated_sentences_with_lungs(data: dict[str, Path]) -> None:
    datalist = convert_masks(data["img"], data["lesion"], data["lungs"], data["csv"], val_fraction=0.3)
    items = {Path(i["image"]).stem: i for v in datalist.values() for i in v}
    assert items["a"]["text"] == "Unilateral pulmonary infection, one infected area, upper left lung."  # image right
    assert items["f"]["text"] == "Unilateral pulmonary infection, one infected area, upper right lung."
    assert items["a"]["lung"] == str((data["lungs"] / "a.png").resolve())
    assert items["a"]["patient"] == "p1" and items["a"]["modality"] == "cxr"
    ct = convert_masks(data["img"], data["lesion"], modality="ct", orientation="mirrored", val_fraction=0.3)
    ct_a = next(i for v in ct.values() for i in v if i["image"].endswith("a.png"))
    assert ct_a["text"].endswith("upper right lung.")
    assert ct_a["orientation"] == "mirrored"  # the augmentation maps its flips through it
    assert "orientation" not in items["a"]  # standard storage: no key


def test_notes_and_constant_sentences(tmp_path: Path) -> None:
    data = make_dataset(tmp_path, notes={s: f"  Notes of\n {s}. " for s in STEMS if s != "c"})
    kw = dict(csv_path=data["csv"], val_fraction=0.3)
    with pytest.raises(BundleInputError, match=r"image 'c' has an empty 'clinical_notes'.*--notes-fallback"):
        convert_masks(data["img"], data["lesion"], text="notes", **kw)
    datalist = convert_masks(data["img"], data["lesion"], text="notes", notes_fallback="constant", **kw)
    texts = {Path(i["image"]).stem: i["text"] for v in datalist.values() for i in v}
    assert texts["a"] == "Notes of a." and texts["c"] == DEFAULT_TEXT["cxr"]
    datalist = convert_masks(data["img"], data["lesion"], text="notes", notes_fallback="generated", **kw)
    assert {i["text"] for v in datalist.values() for i in v if i["image"].endswith("c.png")} == {
        "Unilateral pulmonary infection, one infected area, upper left lung."
    }
    datalist = convert_masks(data["img"], data["lesion"], modality="ct", text="constant", **kw)
    assert {i["text"] for v in datalist.values() for i in v} == {DEFAULT_TEXT["ct"]}
    datalist = convert_masks(data["img"], data["lesion"], text="constant", constant_text="Lesion.", **kw)
    assert {i["text"] for v in datalist.values() for i in v} == {"Lesion."}
    with pytest.raises(BundleInputError, match="pass --csv"):
        convert_masks(data["img"], data["lesion"], text="notes")
    with pytest.raises(BundleInputError, match="describes lung lesions"):
        convert_masks(data["img"], data["lesion"], modality="he")


def test_unmatched_files_are_listed(data: dict[str, Path]) -> None:
    (data["lesion"] / "b.png").unlink()
    (data["lesion"] / "b.png").with_name("zz.png").write_bytes((data["lesion"] / "a.png").read_bytes())
    (data["lungs"] / "c.png").unlink()
    with pytest.raises(BundleInputError) as e:
        convert_masks(data["img"], data["lesion"], data["lungs"])
    msg = str(e.value)
    assert "1 image(s) have no mask" in msg and "b.png" in msg
    assert "1 mask(s) have no image" in msg and "zz.png" in msg
    assert "1 image(s) have no lung mask" in msg and "c.png" in msg


def test_csv_problems(data: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,patientid\na,p1\nb,\n")
    with pytest.raises(BundleInputError, match=r"4 image\(s\) have no row in .*c, d, e, f"):
        convert_masks(data["img"], data["lesion"], csv_path=bad)
    bad.write_text("id,patientid\n" + "".join(f"{s},{'' if s == 'b' else 'p'}\n" for s in STEMS))
    with pytest.raises(BundleInputError, match=r"empty 'patientid'.*: b;"):
        convert_masks(data["img"], data["lesion"], csv_path=bad)
    with pytest.raises(BundleInputError, match=r"no column 'patient' \(option --group-column\); its columns are"):
        convert_masks(data["img"], data["lesion"], csv_path=data["csv"], group_column="patient")
    bad.write_text("id,patientid\na,1\na,2\n")
    with pytest.raises(BundleInputError, match="lists id 'a' twice"):
        convert_masks(data["img"], data["lesion"], csv_path=bad)


def test_main_writes_relative_paths(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out" / "datalist.json"
    extra = ("--lungs", str(data["lungs"]), "--csv", str(data["csv"]), "--modality", "cxr", "--no-check")
    assert main(args(data, out, *extra, "--val-fraction", "0.3")) == 0
    assert "training 4 (2 groups), validation 2 (1 groups)" in capsys.readouterr().out
    raw = json.loads(out.read_text())
    item = raw["training"][0]
    assert not Path(item["image"]).is_absolute() and not Path(item["lung"]).is_absolute()
    assert (out.parent / item["lung"]).resolve() == (data["lungs"] / Path(item["image"]).name).resolve()
    loaded = load_datalist(str(out), "validation", require_label=True)
    assert Path(loaded[0]["label"]).is_file() and loaded[0]["text"].endswith("lung.")


def test_check_problems_stop_the_write(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seen: list[int] = []

    def check_items(items: list, min_size: int = 32, progress: bool = True) -> list[str]:
        seen.append(len(items))
        return ["mask 'a.png' has values {0, 7}", "image 'b.png' is empty"]

    monkeypatch.setitem(sys.modules, "scripts.check_dataset", types.SimpleNamespace(check_items=check_items))
    out = tmp_path / "datalist.json"
    assert main(args(data, out, "--modality", "cxr", "--val-fraction", "0.3")) == 1
    err = capsys.readouterr().err
    assert "ERROR: mask 'a.png' has values {0, 7}\nERROR: image 'b.png' is empty" in err
    assert seen == [6] and not out.exists()


@pytest.mark.slow
def test_real_check_runs_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("scripts.check_dataset")
    good = make_dataset(tmp_path / "good")
    out = tmp_path / "good.json"
    assert main(args(good, out, "--modality", "cxr", "--val-fraction", "0.3")) == 0 and out.is_file()
    small = make_dataset(tmp_path / "small", size=16)
    out = tmp_path / "small.json"
    assert main(args(small, out, "--modality", "cxr", "--val-fraction", "0.3")) == 1
    assert "smaller than 32 pixels" in capsys.readouterr().err and not out.exists()


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "prepare_masks.py"), *argv], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_exit_status(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    ok = run(*args(data, out, "--modality", "ct", "--csv", str(data["csv"]), "--no-check", "--val-fraction", "0.3"))
    assert ok.returncode == 0, ok.stderr
    assert out.is_file() and "Traceback" not in ok.stderr
    (data["lesion"] / "a.png").unlink()
    bad = run(*args(data, tmp_path / "bad.json", "--modality", "cxr", "--no-check"))
    assert bad.returncode == 2 and "ERROR: 1 image(s) have no mask" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.json").exists()


def test_bad_options_exit_2(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(args(data, tmp_path / "x.json", "--modality", "xray"))
    assert e.value.code == 2 and "invalid choice: 'xray'" in capsys.readouterr().err
    assert main(args(data, tmp_path / "x.json", "--modality", "cxr", "--val-fraction", "1.5", "--no-check")) == 2
    assert "--val-fraction 1.5 must be at least 0 and below 1" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_cli_exit_1_on_check_problems(tmp_path: Path) -> None:
    pytest.importorskip("scripts.check_dataset")
    small = make_dataset(tmp_path / "small", size=16)
    proc = run(*args(small, tmp_path / "small.json", "--modality", "cxr", "--val-fraction", "0.3"))
    assert proc.returncode == 1 and "ERROR: image" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "small.json").exists()
