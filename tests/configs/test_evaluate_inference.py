"""configs/evaluate.json (override layer) and configs/inference.json (standalone) on a trained tiny model."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from PIL import Image

from bundle_cli import EVALUATE, INFERENCE, METADATA, TRAIN, run_bundle


def test_evaluate_writes_labelled_per_image_and_global_metrics(trained, tmp_path):
    options = {**trained, "output_dir": str(tmp_path / "eval"), "split": "testing"}
    result = run_bundle("evaluating", [TRAIN, EVALUATE], options)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "evaluation_testing.json").read_text())
    assert summary["split"] == "testing" and summary["images"] == 1
    for key in ("per_image_mean_dice", "per_image_mean_iou", "global_dice", "global_iou"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["per_image"][0]["image"].endswith(".tif")  # the test split's TIFF image, by name
    assert (tmp_path / "eval" / "per_image_dice_raw.csv").is_file()
    assert "per_image_mean_dice" in result.stdout and "global_dice" in result.stdout


def test_evaluate_is_an_override_layer_not_a_copy():
    with open(EVALUATE) as f:
        keys = set(json.load(f))
    assert "network_def" not in keys and "train" not in keys and len(keys) < 12


def inference_options(trained, tmp_path, **extra):
    keys = ("text_encoder_path", "image_encoder_kind", "image_encoder_path", "unet_features", "backbone_attention",
            "backbone_head_channels", "backbone_norm_groups", "blocks", "prompt_dim", "fusion_dim", "image_size", "datalist")
    return {**{k: trained[k] for k in keys if k in trained}, "model_path": os.path.join(trained["ckpt_dir"], "model.pt"),
            "output_dir": str(tmp_path / "pred"), **extra}


def test_inference_on_a_single_png_with_text_and_overlay(trained, tmp_path, data_dir):
    src = tmp_path / "in" / "tile.png"
    src.parent.mkdir()
    shutil.copy(next((data_dir / "lvit_tiny" / "Val_Folder" / "img").iterdir()), src)
    before = src.read_bytes()
    options = inference_options(trained, tmp_path, image=str(src), text="the nuclei are sparsely distributed.", overlay=True)
    result = run_bundle("inference", [INFERENCE], options)
    assert result.returncode == 0, result.stderr[-3000:]
    mask = np.array(Image.open(tmp_path / "pred" / "tile_seg.png"))
    picture = np.array(Image.open(tmp_path / "pred" / "tile_overlay.png"))
    original = np.array(Image.open(src))
    assert mask.shape == original.shape[:2] and set(np.unique(mask)) <= {0, 255}  # back at the input's size
    assert picture.shape == original.shape[:2] + (3,)
    assert src.read_bytes() == before and sorted(os.listdir(src.parent)) == ["tile.png"]  # inputs untouched


def test_inference_on_dicom_writes_nifti(trained, tmp_path, data_dir):
    # the tiny model was trained without the chest X-ray preset's location prompt
    options = inference_options(trained, tmp_path, image=str(data_dir / "cxr_monochrome1.dcm"), location_prompt=False)
    result = run_bundle("inference", [INFERENCE, str(data_dir.parents[1] / "configs" / "modality" / "cxr.json")], options)
    assert result.returncode == 0, result.stderr[-3000:]
    import nibabel as nib
    from monai.transforms import LoadImage

    pred = nib.load(tmp_path / "pred" / "cxr_monochrome1_seg.nii.gz")
    source = LoadImage(image_only=True)(str(data_dir / "cxr_monochrome1.dcm"))  # as MONAI reads the input
    assert pred.shape[:2] == tuple(source.shape[:2]) and np.allclose(pred.affine, np.asarray(source.affine))


def test_inference_on_a_nifti_ct_slice_keeps_its_geometry(trained, tmp_path, root):
    import nibabel as nib

    src = root / "docs" / "demo_data" / "ct" / "images" / "lung2_z020.nii.gz"
    options = inference_options(trained, tmp_path, image=str(src))
    result = run_bundle("inference", [INFERENCE, str(root / "configs" / "modality" / "ct.json")], options)
    assert result.returncode == 0, result.stderr[-3000:]
    pred, original = nib.load(tmp_path / "pred" / "lung2_z020_seg.nii.gz"), nib.load(src)
    assert pred.shape[:2] == original.shape[:2] and np.allclose(pred.affine, original.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1}


def test_inference_over_a_datalist_split(trained, tmp_path):
    result = run_bundle("inference", [INFERENCE], inference_options(trained, tmp_path, split="testing"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len([f for f in os.listdir(tmp_path / "pred") if f.endswith("_seg.png")]) == 1


def test_inference_workflow_properties(trained, tmp_path):
    wf = ConfigWorkflow(config_file=INFERENCE, meta_file=METADATA, workflow_type="infer",
                        **inference_options(trained, tmp_path, split="testing"))
    wf.initialize()
    assert wf.check_properties() in (None, [])


def test_missing_model_is_a_clear_error(trained, tmp_path):
    options = inference_options(trained, tmp_path, split="testing", model_path=str(tmp_path / "none.pt"))
    result = run_bundle("inference", [INFERENCE], options)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "does not exist (option model_path)" in result.stderr


def test_network_options_of_train_and_inference_agree():
    """inference.json must stand alone (MONAI Label reads only it): every key it shares with train.json is equal."""
    with open(TRAIN) as f:
        train = json.load(f)
    with open(INFERENCE) as f:
        infer = json.load(f)
    differ_on_purpose = {"imports", "output_dir", "network", "initialize", "run"}
    shared = [k for k in train if k in infer and k not in differ_on_purpose]
    assert {"network_def", "backbone", "text_encoder", "image_encoder", "intensity", "image_size"} <= set(shared)
    assert [k for k in shared if infer[k] != train[k]] == []


@pytest.mark.parametrize("modality", ["he", "ct"])
def test_inference_sees_the_image_validation_sees(modality, data_dir):
    """The two preprocessing chains (train.json's validation, inference.json's) give the network the same input."""
    from monai.bundle import ConfigParser

    if modality == "he":
        item = {"image": str(data_dir / "lvit_tiny" / "Val_Folder" / "img" / "TCGA-18-5592-01Z-00-DX1.png"),
                "label": str(data_dir / "lvit_tiny" / "Val_Folder" / "labelcol" / "TCGA-18-5592-01Z-00-DX1.png")}
        layers = []
    else:
        demo = os.path.join(os.path.dirname(TRAIN), "..", "docs", "demo_data", "ct")
        item = {"image": os.path.join(demo, "images", "lung2_z020.nii.gz"), "label": os.path.join(demo, "labels", "lung2_z020.nii.gz")}
        layers = [TRAIN.replace("train.json", os.path.join("modality", "ct.json"))]
    outputs = []
    for files, key in (([TRAIN, *layers], "validate#preprocessing"), ([INFERENCE, *layers], "preprocessing")):
        parser = ConfigParser()
        parser.read_config(files)
        outputs.append(parser.get_parsed_content(key)(dict(item, text=" a sentence. ")))
    validation, inference = outputs
    assert validation["image"].shape == inference["image"].shape == (3, 256, 256)
    assert np.array_equal(np.asarray(validation["image"]), np.asarray(inference["image"]))
    assert validation["text"] == inference["text"] == "a sentence."


def bad_inference_inputs(tmp_path, data_dir) -> dict:
    """One broken input per case of issue 15, as (overrides, what the ERROR line must say)."""
    tile = next((data_dir / "lvit_tiny" / "Val_Folder" / "img").iterdir())
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "one.png")
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "corrupt.pt").write_bytes(b"garbage")
    (tmp_path / "truncated.png").write_bytes(tile.read_bytes()[:200])
    return {
        "1x1 image": ({"image": str(tmp_path / "one.png")}, "is 1x1 pixels"),
        "text file as image": ({"image": str(tmp_path / "notes.png")}, "cannot read image file"),
        "truncated image": ({"image": str(tmp_path / "truncated.png")}, "cannot read image file"),
        "folder as image": ({"image": str(tmp_path)}, "is a folder: give an image file"),
        "corrupt checkpoint": ({"image": str(tile), "model_path": str(tmp_path / "corrupt.pt")},
                               "is not a complete PyTorch weights file"),
        "image size": ({"image": str(tile), "image_size": [33, 33]}, "must be a multiple of"),
    }


@pytest.mark.slow
def test_bad_inference_input_is_one_error_line_exit_1_no_traceback(trained, tmp_path, data_dir):
    for case, (overrides, expected) in bad_inference_inputs(tmp_path, data_dir).items():
        result = run_bundle("inference", [INFERENCE], inference_options(trained, tmp_path, **overrides))
        output = result.stdout + result.stderr
        assert result.returncode == 1, (case, output[-3000:])
        errors = [line for line in output.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and expected in errors[0], (case, errors, output[-2000:])
        assert "Traceback" not in output and "terminating due to exception" not in output, (case, output[-3000:])
