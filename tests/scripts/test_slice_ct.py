"""scripts/slice_ct.py: HU-preserving axial slices, generated sentences (laterality from the affine), errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle.errors import BundleInputError
from scripts import slice_ct as sc

SHAPE = (48, 40, 12)  # (i, j, k) voxels of the synthetic chest
LEFT_LUNG_I, RIGHT_LUNG_I = 34, 14  # lung centres along i when i runs towards the patient's left


def phantom(
    lesion_i: tuple[int, ...] = (LEFT_LUNG_I,), lesion_k: tuple[int, ...] = (9, 10)
) -> tuple[np.ndarray, np.ndarray]:
    """A chest: air, an elliptic body (40 HU), two lungs (-850 HU), round lesions (30 HU) in the given lungs."""
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    hu = np.full(SHAPE, -1000, dtype=np.int16)
    lab = np.zeros(SHAPE, dtype=np.uint8)
    body = ((i - 24) / 21) ** 2 + ((j - 20) / 16) ** 2 <= 1
    hu[body] = 40
    for ci in (LEFT_LUNG_I, RIGHT_LUNG_I):
        hu[((i - ci) / 7) ** 2 + ((j - 20) / 10) ** 2 <= 1] = -850
    for ci in lesion_i:
        disc = (i - ci) ** 2 + (j - 20) ** 2 <= 4
        for k in lesion_k:
            hu[disc, k] = 30
            lab[disc, k] = 1
    return hu, lab


def save_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return str(path)


def save_itk(path: Path, arr: np.ndarray, direction: np.ndarray, spacing=(2.0, 2.0, 3.0)) -> str:
    """Write (i, j, k) ``arr`` with an ITK (LPS) direction matrix: NRRD / MHA as scanners' tools do."""
    import itk

    img = itk.image_from_array(np.ascontiguousarray(arr.transpose(2, 1, 0)))  # ITK arrays are (k, j, i)
    img.SetSpacing(list(spacing))
    img.SetOrigin([-40.0, -30.0, 100.0])
    img.SetDirection(itk.matrix_from_array(np.asarray(direction, dtype=np.float64)))
    itk.imwrite(img, str(path))
    return str(path)


def save_dicom_series(folder: Path, hu: np.ndarray, spacing=(2.0, 2.0, 3.0)) -> str:
    """A CT DICOM series with identity orientation (i -> patient's left, k -> head), int16 HU."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", "PHANTOM", study, series
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-40.0, -30.0, 100.0 + spacing[2] * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (j), column spacing (i)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T.astype(np.int16)).tobytes()  # rows = j, columns = i
        ds.save_as(str(folder / f"slice{k:03d}.dcm"), enforce_file_format=True)
    return str(folder)


def lesion_texts(image: str, label: str) -> set[str]:
    return {s.text for s in sc.make_slices(image, label) if s.label.any()}


# RAS affines (NIfTI): diag(-, -, +) = i towards the patient's left, k towards the head.
@pytest.mark.parametrize(
    "ras_diag, expected",
    [
        ((-2, -2, 3), "Lesion in the upper left lung."),
        ((2, 2, 3), "Lesion in the upper right lung."),  # same array, i now runs towards the patient's right
        ((-2, -2, -3), "Lesion in the lower left lung."),  # k now runs towards the feet
    ],
)
def test_laterality_and_height_from_nifti_affine(tmp_path: Path, ras_diag, expected: str) -> None:
    hu, lab = phantom()
    affine = np.diag([*map(float, ras_diag), 1.0])
    image, label = save_nifti(tmp_path / "ct.nii.gz", hu, affine), save_nifti(tmp_path / "lab.nii.gz", lab, affine)
    assert lesion_texts(image, label) == {expected}


@pytest.mark.parametrize(
    "lps_diag, expected",
    [((1, 1, 1), "Lesion in the upper left lung."), ((-1, 1, 1), "Lesion in the upper right lung.")],
)
def test_laterality_from_lps_nrrd(tmp_path: Path, lps_diag, expected: str) -> None:
    """ITK/DICOM direction cosines are LPS: +x is the patient's LEFT (the opposite of NIfTI's RAS)."""
    hu, lab = phantom()
    direction = np.diag(np.asarray(lps_diag, dtype=np.float64))
    image, label = save_itk(tmp_path / "ct.nrrd", hu, direction), save_itk(tmp_path / "lab.nrrd", lab, direction)
    assert lesion_texts(image, label) == {expected}


def test_lps_space_metadata_is_converted() -> None:
    from monai.data import MetaTensor

    img = MetaTensor(np.zeros((1, 2, 2, 2)), affine=np.diag([2.0, 2.0, 3.0, 1.0]), meta={"space": "LPS"})
    np.testing.assert_array_equal(sc._ras_affine(img), np.diag([-2.0, -2.0, 3.0, 1.0]))
    img.meta["space"] = "RAS"
    np.testing.assert_array_equal(sc._ras_affine(img), np.diag([2.0, 2.0, 3.0, 1.0]))


def test_dicom_series_folder(tmp_path: Path) -> None:
    hu, lab = phantom()
    image = save_dicom_series(tmp_path / "series", hu)
    label = save_itk(tmp_path / "lab.mha", lab, np.eye(3))
    slices = sc.make_slices(image, label, only_lesion=True)
    assert [s.index for s in slices] == [9, 10]
    assert {s.text for s in slices} == {"Lesion in the upper left lung."}
    np.testing.assert_array_equal(slices[0].image, hu[:, :, 9])  # identity LPS: no flip, HU as stored
    assert slices[0].image.dtype == np.int16


def test_two_lesions_and_empty_slices(tmp_path: Path) -> None:
    hu, lab = phantom(lesion_i=(LEFT_LUNG_I, RIGHT_LUNG_I), lesion_k=(1,))
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    slices = sc.make_slices(save_nifti(tmp_path / "ct.nii", hu, affine), save_nifti(tmp_path / "lab.nii", lab, affine))
    assert slices[1].text == "Two lesions, lower left lung and lower right lung."
    assert slices[0].text == "No lesion in this slice." and len(slices) == SHAPE[2]


def test_describe_mask_counts_and_sides() -> None:
    mask = np.zeros((40, 40), dtype=np.uint8)
    for x in (5, 12, 19):  # three lesions, all at RAS x = -x (patient's left of a midline at x = 0)
        mask[x, 5:8] = 1
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS
    assert sc.describe_mask(mask, affine, (-3.0, 3.0), midline_x=0.0) == "Three lesions in the middle left lung."
    many = np.zeros((40, 40), dtype=np.uint8)
    many[::3, ::3][:4, :3] = 1  # 12 separate points
    assert sc.describe_mask(many, affine, (-10.0, 0.0), midline_x=-100.0).startswith("12 lesions in the upper right")
    assert sc.describe_mask(np.zeros((4, 4)), affine, (0.0, 1.0), 0.0) == "No lesion in this slice."


def test_multilabel_map_counts_as_lesion(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    hu, lab = phantom()
    lab[lab > 0] = 1
    lab[LEFT_LUNG_I, 20, 10] = 3
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    slices = sc.make_slices(
        save_nifti(tmp_path / "ct.nii", hu, affine), save_nifti(tmp_path / "lab.nii", lab, affine), only_lesion=True
    )
    assert "every value > 0 counts as lesion" in capsys.readouterr().out
    assert all(set(np.unique(s.label)) <= {0, 1} for s in slices) and len(slices) == 2


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """slice_ct's CLI on the committed CT fixture."""
    data = Path(__file__).resolve().parents[1] / "data" / "ct_tiny"
    out = tmp_path_factory.mktemp("ct") / "slices"
    argv = ["--image", str(data / "lung2_image.nrrd"), "--label", str(data / "lung2_label.nrrd"), "--out", str(out)]
    assert sc.main([*argv, "--window", "-1000,400", "--preview", "--only-lesion", "--split", "validation"]) == 0
    return out


def test_cli_outputs(fixture_run: Path) -> None:
    datalist = json.loads((fixture_run / "datalist.json").read_text())
    assert datalist["ct_window"] == [-1000.0, 400.0] and list(datalist) == ["ct_window", "validation"]
    items = datalist["validation"]
    assert len(items) == 11 and all(i["modality"] == "ct" for i in items)
    assert all(t["text"].startswith("Lesion in the ") and "left lung" in t["text"] for t in items)
    first = nib.load(fixture_run / items[0]["image"])
    assert first.get_data_dtype() == np.int16 and first.shape == (64, 64)
    mask = nib.load(fixture_run / items[0]["label"])
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(mask.get_fdata())) == {0.0, 1.0}
    from PIL import Image

    preview = Image.open(fixture_run / "preview" / (Path(items[0]["image"]).name.replace(".nii.gz", ".png")))
    assert preview.mode == "RGB" and preview.size == (64, 64)
    assert not [p for p in fixture_run.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_window_never_changes_hu(fixture_run: Path, tmp_path: Path) -> None:
    data = Path(__file__).resolve().parents[1] / "data" / "ct_tiny"
    sc.slice_ct(
        str(data / "lung2_image.nrrd"),
        str(data / "lung2_label.nrrd"),
        str(tmp_path),
        window=(-160, 240),
        only_lesion=True,
    )
    name = sorted((fixture_run / "images").iterdir())[0].name
    a = nib.load(fixture_run / "images" / name).get_fdata()
    b = nib.load(tmp_path / "images" / name).get_fdata()
    np.testing.assert_array_equal(a, b)
    assert a.min() <= -900 and a.max() >= 100  # real HU, not a 0..255 window
    assert json.loads((tmp_path / "datalist.json").read_text())["ct_window"] == [-160.0, 240.0]


def test_slices_load_through_bundle_transforms(fixture_run: Path) -> None:
    from monai.transforms import Compose, EnsureChannelFirstd

    from bundle.transforms import Ensure2Dd, LoadImageCheckedd

    item = json.loads((fixture_run / "datalist.json").read_text())["validation"][0]
    load = Compose(
        [LoadImageCheckedd(["image", "label"]), EnsureChannelFirstd(["image", "label"]), Ensure2Dd(["image", "label"])]
    )
    d = load({k: str(fixture_run / item[k]) for k in ("image", "label")})
    assert tuple(d["image"].shape) == (1, 64, 64) and tuple(d["label"].shape) == (1, 64, 64)
    np.testing.assert_array_equal(d["image"][0].numpy(), nib.load(fixture_run / item["image"]).get_fdata())


def test_resize_slice_updates_affine(tmp_path: Path) -> None:
    hu, lab = phantom()
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    s = sc.make_slices(
        save_nifti(tmp_path / "ct.nii", hu, affine), save_nifti(tmp_path / "lab.nii", lab, affine), only_lesion=True
    )[0]
    small = sc.resize_slice(s, 24)
    assert small.image.shape == (24, 24) and small.image.dtype == np.int16 and small.label.any()
    np.testing.assert_allclose(np.diag(small.affine)[:2], [-4.0, -3.3333333], rtol=1e-6)  # 48 -> 24, 40 -> 24
    centre = lambda a, shape: (a @ np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2, 0, 1]))[:3]  # noqa: E731
    np.testing.assert_allclose(centre(small.affine, (24, 24)), centre(s.affine, s.image.shape), atol=1e-6)
    assert small.text == s.text


def test_input_errors(tmp_path: Path) -> None:
    hu, lab = phantom()
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    image = save_nifti(tmp_path / "ct.nii.gz", hu, affine)
    out = tmp_path / "out"
    with pytest.raises(
        BundleInputError, match=r"label '.*small\.nii\.gz' has shape \(48, 40, 6\) but image '.*ct\.nii\.gz'"
    ):
        sc.slice_ct(image, save_nifti(tmp_path / "small.nii.gz", lab[..., :6], affine), str(out))
    with pytest.raises(
        BundleInputError, match=r"CT label '.*flat\.nii\.gz' has shape \(48, 40\); expected one 3D volume"
    ):
        sc.slice_ct(image, save_nifti(tmp_path / "flat.nii.gz", lab[..., 0], affine), str(out))
    shifted = affine.copy()
    shifted[0, 3] = 10.0
    with pytest.raises(BundleInputError, match=r"label '.*moved\.nii\.gz' and image .* different geometry"):
        sc.slice_ct(image, save_nifti(tmp_path / "moved.nii.gz", lab, shifted), str(out))
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(BundleInputError, match=r"cannot read CT label '.*broken\.nii\.gz'"):
        sc.slice_ct(image, str(tmp_path / "broken.nii.gz"), str(out))
    with pytest.raises(BundleInputError, match=r"CT image '.*missing\.nrrd' does not exist"):
        sc.slice_ct(str(tmp_path / "missing.nrrd"), image, str(out))
    empty = save_nifti(tmp_path / "empty.nii.gz", np.zeros_like(lab), affine)
    with pytest.raises(BundleInputError, match=r"label '.*empty\.nii\.gz' has no lesion voxels.*--only-lesion"):
        sc.slice_ct(image, empty, str(out), only_lesion=True)
    with pytest.raises(BundleInputError, match="low HU must be below the high HU"):
        sc.slice_ct(image, empty, str(out), window=(400, -1000))
    assert not out.exists()  # no failed run left anything behind
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_nan_or_inf_volume_is_an_error(tmp_path: Path) -> None:
    hu, lab = phantom()
    bad = hu.astype(np.float32)
    bad[3, 4, 5], bad[6, 7, 8] = np.nan, np.inf
    label = save_itk(tmp_path / "lab.nrrd", lab, np.eye(3))  # NRRD keeps NaN (ITK's NIfTI reader zeroes it)
    with pytest.raises(BundleInputError, match=r"CT image '.*nan\.nrrd' has 2 NaN or Inf voxel"):
        sc.slice_ct(save_itk(tmp_path / "nan.nrrd", bad, np.eye(3)), label, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_failure_while_writing_leaves_no_datalist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hu, lab = phantom()
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    image, label = save_nifti(tmp_path / "ct.nii", hu, affine), save_nifti(tmp_path / "lab.nii", lab, affine)
    out = tmp_path / "out"
    out.mkdir()
    calls = {"n": 0}
    real_save = nib.save

    def flaky_save(img, path):  # the disk fills up after a few slices
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("No space left on device")
        real_save(img, path)

    monkeypatch.setattr(nib, "save", flaky_save)
    with pytest.raises(OSError):
        sc.slice_ct(image, label, str(out))
    assert list(out.iterdir()) == []  # neither slices nor a datalist
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_error_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        sc.main(
            ["--image", str(tmp_path / "no.nrrd"), "--label", str(tmp_path / "no.nrrd"), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith("ERROR: CT image")
