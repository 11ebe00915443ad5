"""bundle/data.py: the datalist model (reading, validation, atomic writing) and the shipped demo datalists."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from bundle.data import DEFAULT_TEXT, MODALITIES, check_modality, check_text, load_datalist, write_datalist
from bundle.errors import BundleInputError


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    """A folder with images/a.png, images/b.png and masks/a.png (contents do not matter here)."""
    for rel in ("images/a.png", "images/b.png", "masks/a.png"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def write(path: Path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_relative_paths_resolve_against_the_datalist_folder(files: Path) -> None:
    path = write(
        files / "dl.json",
        {"training": [{"image": "images/a.png", "label": "masks/a.png", "text": " Hi. ", "modality": "he"}]},
    )
    (item,) = load_datalist(path, require_label=True)
    assert item["image"] == str(files / "images" / "a.png") and item["label"] == str(files / "masks" / "a.png")
    assert item["text"] == "Hi." and item["modality"] == "he"


def test_defaults_for_text_and_modality(files: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(
        files / "dl.json", {"testing": [{"image": "images/a.png"}, {"image": "images/b.png", "modality": "cxr"}]}
    )
    with caplog.at_level(logging.WARNING):
        items = load_datalist(path, "testing", modality="ct")
    assert [(i["modality"], i["text"]) for i in items] == [("ct", DEFAULT_TEXT["ct"]), ("cxr", DEFAULT_TEXT["cxr"])]
    assert "2 of 2 'testing' items have no text" in caplog.text
    assert "label" not in items[0]


def test_mapping_input_and_max_items(files: Path) -> None:
    data = {"validation": [{"image": "images/a.png", "modality": "he"}, {"image": "images/b.png", "modality": "he"}]}
    items = load_datalist(data, "validation", base_dir=str(files), max_items=1)
    assert len(items) == 1 and items[0]["image"] == str(files / "images" / "a.png")


@pytest.mark.parametrize(
    "data, split, kwargs, message",
    [
        (
            {"training": [{"label": "masks/a.png", "modality": "he"}]},
            "training",
            {},
            r"item 0 of 'training' in datalist '.*dl\.json' has no 'image' key",
        ),
        (
            {"training": [{"image": "images/zz.png", "modality": "he"}]},
            "training",
            {},
            r"image file '.*images/zz\.png' of item 0 .* does not exist",
        ),
        (
            {"training": [{"image": "images/a.png", "label": "masks/zz.png", "modality": "he"}]},
            "training",
            {},
            r"label file '.*masks/zz\.png' of image '.*a\.png'",
        ),
        (
            {"training": [{"image": "images/a.png", "modality": "mri"}]},
            "training",
            {},
            r"unknown modality 'mri' \(image '.*a\.png'",
        ),
        ({"training": [{"image": "images/a.png"}]}, "training", {}, r"unknown modality None"),
        (
            {"training": [{"image": "images/a.png", "modality": "he"}]},
            "training",
            {"modality": "xray"},
            r"unknown modality 'xray' \(option modality",
        ),
        (
            {"training": [{"image": "images/a.png", "text": "   ", "modality": "he"}]},
            "training",
            {},
            r"text for image '.*a\.png' .* is '   '",
        ),
        (
            {"training": [{"image": "images/a.png", "text": "", "modality": "he"}]},
            "training",
            {},
            r"text for image '.*a\.png'",
        ),
        (
            {"training": [{"image": "images/b.png", "modality": "he"}]},
            "training",
            {"require_label": True},
            r"image '.*b\.png' .* has no 'label'",
        ),
        ({"training": [{"image": 3, "modality": "he"}]}, "training", {}, r"invalid 'image' entry 3"),
        ({"training": []}, "training", {}, r"'training' in datalist '.*dl\.json' must be a non-empty list"),
        (
            {"training": [{"image": "images/a.png", "modality": "he"}]},
            "validation",
            {},
            r"has no 'validation' list \(it has: training\)",
        ),
        ([1, 2], "training", {}, r"must be a JSON object"),
    ],
)
def test_bad_datalists_name_the_problem(files: Path, data, split: str, kwargs: dict, message: str) -> None:
    path = write(files / "dl.json", data)
    with pytest.raises(BundleInputError, match=message):
        load_datalist(path, split, **kwargs)


def test_missing_or_invalid_datalist_file(tmp_path: Path) -> None:
    with pytest.raises(BundleInputError, match=r"datalist '.*nope\.json' does not exist"):
        load_datalist(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BundleInputError, match=r"datalist '.*bad\.json' is not valid JSON"):
        load_datalist(str(tmp_path / "bad.json"))


def test_check_helpers() -> None:
    assert check_text("  A sentence. ", "x") == "A sentence."
    for bad in ("", " \n\t", None, 3):
        with pytest.raises(BundleInputError, match="give a non-empty sentence"):
            check_text(bad, "image 'a.png'")
    assert [check_modality(m) for m in MODALITIES] == list(MODALITIES)
    with pytest.raises(BundleInputError, match=r"unknown modality 'HE' \(here\); expected one of he, cxr, ct"):
        check_modality("HE", "here")


def test_write_datalist_relative_round_trip(files: Path) -> None:
    out = files / "lists" / "dl.json"
    data = {
        "ct_window": [-1000, 400],
        "training": [
            {
                "image": str(files / "images" / "a.png"),
                "label": str(files / "masks" / "a.png"),
                "text": "T.",
                "modality": "he",
            }
        ],
    }
    write_datalist(str(out), data)
    raw = json.loads(out.read_text())
    assert raw["training"][0]["image"] == os.path.join("..", "images", "a.png")
    assert raw["ct_window"] == [-1000, 400]  # non-item entries pass through
    assert load_datalist(str(out), require_label=True)[0]["label"] == str(files / "masks" / "a.png")
    write_datalist(str(out), data, relative=False)
    assert json.loads(out.read_text())["training"][0]["image"] == str(files / "images" / "a.png")


def test_write_datalist_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "dl.json"
    out.write_text('{"old": []}')
    with pytest.raises(TypeError):
        write_datalist(str(out), {"training": [{"image": "a.png", "text": object()}]})  # not JSON-serialisable
    assert out.read_text() == '{"old": []}' and [p.name for p in tmp_path.iterdir()] == ["dl.json"]


@pytest.mark.parametrize(
    "name, counts", [("monuseg", {"training": 8, "validation": 4}), ("ct", {"training": 13, "validation": 5})]
)
def test_shipped_demo_datalists(root: Path, name: str, counts: dict[str, int]) -> None:
    path = root / "docs" / "demo_data" / name / "datalist.json"
    for split, n in counts.items():
        items = load_datalist(str(path), split, require_label=True)
        assert len(items) == n and {i["modality"] for i in items} == {"he" if name == "monuseg" else "ct"}
    size = sum(f.stat().st_size for f in (root / "docs" / "demo_data").rglob("*") if f.is_file())
    assert size <= 10 * 2**20
