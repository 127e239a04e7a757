"""Dataset writers (nnU-Net v2, Decathlon, PNG): layout, dataset.json, geometry, integer labels, resume."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from motfm.data.base import DataSpec
from motfm.data.msd import MsdBrainDataset
from motfm.data.phantom import brain_affine
from motfm.io.export import ExportError, make_writer, remove_partial_files
from motfm.io.nifti import label_dtype, save_nifti

SPEC_2D = DataSpec(2, 1, (12, 10), num_classes=2, num_mask_labels=3, class_names=("a", "b"),
                   mask_label_names=("bg", "cavity", "wall"))  # fmt: skip
SPEC_3D = DataSpec(3, 2, (6, 8, 10), num_mask_labels=4, mask_label_names=("background", "x", "x", "z"))


def batch(spec: DataSpec, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, spec.channels, *spec.image_size, generator=g) * 2 - 1
    masks = torch.randint(0, spec.num_mask_labels, (n, 1, *spec.image_size), generator=g)
    return images, masks


def writer(kind: str, root: Path, spec: DataSpec, **kw):
    args = dict(root=root, spec=spec, name="Synth", dataset_id=7, channel_names=["T1", "T2"][: spec.channels])
    return make_writer(kind, **{**args, **kw})


def test_nnunet_2d_layout_geometry_and_dataset_json(tmp_path: Path) -> None:
    w = writer("nnunet", tmp_path, SPEC_2D, spacing=(0.5, 0.25))
    images, masks = batch(SPEC_2D, 3)
    assert w.write_batch([0, 1, 2], images, masks) == 3
    root = tmp_path / "Dataset007_Synth"
    assert not (root / "dataset.json").exists()  # the description comes last
    img = nib.load(root / "imagesTr" / "sample_00001_0000.nii.gz")
    lab = nib.load(root / "labelsTr" / "sample_00001.nii.gz")
    # single-slice 3D NIfTI: [W, H, 1], i = column, j = row; spacing (column, row, 999) mm
    assert img.shape == (10, 12, 1) and lab.shape == (10, 12, 1)
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32)[..., 0].T, images[1, 0].numpy())
    assert lab.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(lab.dataobj)[..., 0].T, masks[1, 0].numpy())
    assert img.header.get_zooms() == (0.25, 0.5, 999.0) and np.allclose(img.affine, lab.affine)
    w.finish([0, 1, 2], torch.tensor([1, 0, 1]), {"seed": 3})
    info = json.loads((root / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "T1"} and info["file_ending"] == ".nii.gz"
    assert info["labels"] == {"background": 0, "cavity": 1, "wall": 2} and info["numTraining"] == 3
    assert info["motfm"]["class_labels"] == {"sample_00000": 1, "sample_00001": 0, "sample_00002": 1}
    assert info["motfm"]["seed"] == 3


def test_nnunet_3d_keeps_the_affine_and_splits_channels(tmp_path: Path) -> None:
    affine = np.asarray(brain_affine(8), np.float64)
    w = writer("nnunet", tmp_path, SPEC_3D, affine=affine)
    images, masks = batch(SPEC_3D, 2)
    w.write_batch([4, 5], images, masks)
    folder = tmp_path / "Dataset007_Synth"
    for c in range(2):
        img = nib.load(folder / "imagesTr" / f"sample_00005_{c:04d}.nii.gz")
        assert img.shape == (6, 8, 10) and np.allclose(img.affine, affine)
        np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), images[1, c].numpy())
    w.finish([4, 5], None)
    info = json.loads((folder / "dataset.json").read_text())
    assert info["labels"] == {"background": 0, "x": 1, "x_2": 2, "z": 3}  # unique names, consecutive values
    assert info["channel_names"] == {"0": "T1", "1": "T2"} and "class_labels" not in info["motfm"]


def test_resume_writes_only_missing_files_and_finish_checks_completeness(tmp_path: Path) -> None:
    w = writer("nnunet", tmp_path, SPEC_2D)
    images, masks = batch(SPEC_2D, 2)
    w.write_batch([0, 1], images, masks)
    label = w.case_files(1)["masks"][0]
    label.unlink()
    (label.parent / ".sample_00009.nii.gz.abc.part.nii.gz").write_bytes(b"killed mid-write")
    with pytest.raises(ExportError, match="sample_00001.nii.gz: missing"):
        w.finish([0, 1], None)
    first = w.case_files(0)["images"][0]
    before = first.stat().st_mtime_ns
    assert w.write_batch([0, 1], images * 0, masks) == 1  # case 1 only; case 0 is complete and kept
    assert first.stat().st_mtime_ns == before
    w.finish([0, 1], None)
    assert not list(label.parent.glob(".*"))  # the leftover temporary file would be listed by nnU-Net
    assert remove_partial_files(tmp_path / "nowhere") == 0


def test_msd_round_trip_through_the_msd_reader(tmp_path: Path) -> None:
    spec = DataSpec(3, 1, (8, 8, 8), num_mask_labels=4, mask_label_names=("background", "a", "b", "c"))
    affine = np.asarray(brain_affine(8), np.float64)
    w = writer("msd", tmp_path, spec, affine=affine, channel_names=["FLAIR"])
    images, masks = batch(spec, 4, seed=1)
    w.write_batch([0, 1, 2, 3], images, masks)
    w.finish([0, 1, 2, 3], None)
    root = tmp_path / "Task07_Synth"
    info = json.loads((root / "dataset.json").read_text())
    assert info["modality"] == {"0": "FLAIR"} and info["labels"]["0"] == "background"
    assert info["training"][2] == {
        "image": "./imagesTr/sample_00002.nii.gz",
        "label": "./labelsTr/sample_00002.nii.gz",
    }
    ds = MsdBrainDataset(
        "train", root=root, image_size=8, margin=8, percentiles=(0, 100), cache=False,
        split_fractions={"train": 1.0, "val": 0.0, "test": 0.0},
    )  # fmt: skip
    assert len(ds) == 4 and ds.spec.mask_label_names == spec.mask_label_names
    for item in (ds[i] for i in range(4)):
        i = int(item["meta"]["id"].removeprefix("sample_"))
        np.testing.assert_array_equal(item["mask"].numpy(), masks[i].numpy())  # labels exactly
        assert np.allclose(item["meta"]["affine"], affine)  # the source geometry
        x, y = images[i, 0].flatten().numpy(), item["image"][0].flatten().numpy()  # a linear rescale
        assert np.corrcoef(x, y)[0, 1] > 0.9999


def test_png_layout_index_and_refusals(tmp_path: Path) -> None:
    w = writer("png", tmp_path, SPEC_2D)
    images, masks = batch(SPEC_2D, 3)
    w.write_batch([0, 1, 2], images, masks)
    w.finish([0, 1, 2], torch.tensor([0, 1, 1]))
    root = tmp_path / "Synth"
    png = np.asarray(Image.open(root / "images" / "sample_00002.png"))
    assert png.dtype == np.uint8 and png.shape == (12, 10)
    np.testing.assert_allclose(png / 127.5 - 1, images[2, 0].numpy(), atol=1 / 127.5)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "masks" / "sample_00002.png")), masks[2, 0])
    rows = list(csv.DictReader((root / "index.csv").open()))
    assert [r["label"] for r in rows] == ["0", "1", "1"] and rows[1]["class_name"] == "b"
    assert rows[0]["image"] == "images/sample_00000.png" and rows[0]["mask"] == "masks/sample_00000.png"
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 3
    with pytest.raises(ExportError, match="writes 2D images"):
        writer("png", tmp_path, SPEC_3D)
    with pytest.raises(ExportError, match="needs a mask-conditional model"):
        writer("nnunet", tmp_path, SPEC_2D, with_masks=False)
    with pytest.raises(ExportError, match="dataset ids are 1..999"):
        writer("nnunet", tmp_path, SPEC_2D, dataset_id=1000)
    with pytest.raises(ExportError, match="letters, digits"):
        writer("msd", tmp_path, SPEC_2D, name="my data")
    with pytest.raises(ExportError, match="expected one of"):
        writer("tiff", tmp_path, SPEC_2D)


def test_label_maps_are_written_as_integers() -> None:
    assert label_dtype(np.array([0, 3])) == np.uint8
    assert label_dtype(np.array([-1, 300])) == np.int16
    assert label_dtype(np.array([0, 70000])) == np.int32


def test_save_nifti_keeps_integer_labels(tmp_path: Path) -> None:
    mask = torch.randint(0, 4, (1, 3, 4, 5))
    save_nifti(mask, tmp_path / "m.nii.gz")
    save_nifti(mask.float() / 3, tmp_path / "f.nii.gz")
    assert nib.load(tmp_path / "m.nii.gz").get_data_dtype() == np.uint8
    assert nib.load(tmp_path / "f.nii.gz").get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj), mask[0].numpy())
