"""DICOM reader on real files shipped with pydicom/pydicom-data: cines, colour models, patient splits."""

import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pydicom")
pytest.importorskip("data_store", reason="pydicom-data ships the real DICOM test files (offline)")
from hydra.utils import instantiate
from pydicom.data import get_testdata_file  # noqa: E402

from data.fixtures import compose_data, copy_dicom_files  # noqa: E402
from motfm.data.base import DataError, check_sample  # noqa: E402
from motfm.data.datamodule import MotfmDataModule  # noqa: E402
from motfm.data.dicom import DicomDataset, dicom_frames  # noqa: E402

FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}


@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dicom")
    copy_dicom_files(root)
    (root / "README.txt").write_text("not a DICOM file")
    return root


def _metas(root: Path, split: str, **kw) -> list[dict]:
    return DicomDataset(
        split, root=root, image_size=16, split_fractions=FRACTIONS, cache=False, **kw
    ).store.index["meta"]


def test_real_files_load_through_the_datamodule(dicom_root: Path, tmp_path: Path) -> None:
    factory = partial(
        DicomDataset, root=dicom_root, image_size=24, split_fractions=FRACTIONS, cache_dir=tmp_path
    )
    dm = MotfmDataModule(dataset=factory, batch_size=2)
    dm.setup()
    assert dm.spec.image_size == (24, 24) and dm.spec.channels == 1 and not dm.spec.has_mask
    frames: dict[str, int] = {}
    for split in ("train", "val", "test"):
        ds = dm.dataset(split)
        for i in range(len(ds)):
            sample = ds[i]
            check_sample(sample, dm.spec, source=f"{split}[{i}]")
            name = Path(sample["meta"]["source"]).name
            frames[name] = frames.get(name, 0) + 1
    # every frame of every real file, the README ignored: two single-frame US images, a 2-frame US cine
    # (palette colour), a 10-frame MR (16-bit), one YBR image
    assert frames == {
        "US1_UNCR.dcm": 1,
        "US1_UNCI.dcm": 1,
        "OBXXXX1A_2frame.dcm": 2,
        "emri_small.dcm": 10,
        "SC_ybr_full_uncompressed.dcm": 1,
    }
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 24, 24)


@pytest.mark.parametrize("seed", range(5))
def test_split_by_patient_never_by_frame(dicom_root: Path, seed: int) -> None:
    metas = {s: _metas(dicom_root, s, split_seed=seed) for s in ("train", "val", "test")}
    sources = {s: {m["source"] for m in ms} for s, ms in metas.items()}
    groups = {s: {m["group"] for m in ms} for s, ms in metas.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert sources[a].isdisjoint(sources[b]) and groups[a].isdisjoint(groups[b])
    every = [m for ms in metas.values() for m in ms]
    us1 = {m["group"] for m in every if "US1_" in m["source"]}
    assert us1 == {"patient:13US1"}  # both US1 files belong to one patient, so to one split
    emri = [m for m in every if m["source"].endswith("emri_small.dcm")]
    assert emri[0]["group"].startswith("series:")  # no PatientID: grouped by series
    assert [m["frame"] for m in emri] == list(range(10))


def test_config_composes_with_root_override(dicom_root: Path, tmp_path: Path) -> None:
    overrides = [
        f"data.dataset.root={dicom_root}",
        f"data.dataset.cache_dir={tmp_path}",
        "data.dataset.image_size=8",
    ]
    cfg = compose_data(
        "dicom", [*overrides, "data.dataset.split_fractions={train: 0.5, val: 0.25, test: 0.25}"]
    )
    dm = instantiate(cfg, num_workers=0)
    dm.setup()
    assert dm.spec.image_size == (8, 8)


def test_colour_models_become_grey_in_range() -> None:
    rgb, info_rgb = dicom_frames(Path(get_testdata_file("SC_rgb.dcm")))
    ybr, info_ybr = dicom_frames(Path(get_testdata_file("SC_ybr_full_uncompressed.dcm")))
    assert info_rgb["photometric"] == "RGB" and info_ybr["photometric"] == "YBR_FULL"
    assert rgb.shape == ybr.shape == (1, 100, 100)
    assert np.abs(rgb - ybr).max() < 0.05  # the same picture stored in two colour models
    palette, info = dicom_frames(Path(get_testdata_file("OBXXXX1A_2frame.dcm")))
    assert info["photometric"] == "PALETTE COLOR" and palette.shape == (2, 600, 800)
    mr, info = dicom_frames(Path(get_testdata_file("emri_small.dcm")), (0.5, 99.5))
    assert info["bits"] == 12 and mr.shape == (10, 64, 64)
    for frames in (rgb, ybr, palette, mr):
        assert frames.dtype == np.float32 and frames.min() >= -1 and frames.max() <= 1 and frames.std() > 0.01
    us, info = dicom_frames(Path(get_testdata_file("US1_UNCR.dcm")))
    assert info["modality"] == "US" and info["patient_id"] == "13US1" and us.shape == (1, 480, 640)


def test_frame_stride_spacing_and_cache_reuse(dicom_root: Path, tmp_path: Path) -> None:
    kw = {
        "root": dicom_root,
        "image_size": (32, 16),
        "split_fractions": {"train": 1.0},
        "cache_dir": tmp_path,
    }
    ds = DicomDataset("train", frame_stride=3, **kw)
    emri = [m for m in ds.store.index["meta"] if m["source"].endswith("emri_small.dcm")]
    assert [m["frame"] for m in emri] == [0, 3, 6, 9]
    rgb = next(m for m in ds.store.index["meta"] if m["source"].endswith("SC_ybr_full_uncompressed.dcm"))
    assert rgb["spacing"] == pytest.approx([1.0 * 100 / 32, 1.0 * 100 / 16])
    again = DicomDataset("train", frame_stride=3, **kw)
    assert again.cache_hit and torch.equal(again[5]["image"], ds[5]["image"])
    assert not DicomDataset("train", frame_stride=2, **kw).cache_hit


def test_bad_files_and_missing_pydicom(dicom_root: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError, match="does not exist"):
        DicomDataset("train", root=tmp_path / "none", cache=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no DICOM files with pixel data"):
        DicomDataset("train", root=tmp_path / "empty", cache=False)
    root = tmp_path / "bad"
    good, broken = copy_dicom_files(root, ("US1_UNCR.dcm", "emri_small.dcm"))
    broken.write_bytes(broken.read_bytes()[:-20000])  # pixel data cut short
    kw = {"root": root, "image_size": 8, "split_fractions": {"train": 1.0}, "cache": False}
    with pytest.raises(DataError, match=rf"{broken}: cannot decode DICOM pixel data"):
        DicomDataset("train", **kw)
    with pytest.warns(UserWarning, match="skipped 1 bad case.*emri_small.dcm"):
        ds = DicomDataset("train", skip_bad_cases=True, **kw)
    assert len(ds) == 1 and ds[0]["meta"]["source"] == str(good)
    broken.unlink()
    junk = root / "junk.dcm"  # a DICM marker but no image: ignored like a DICOMDIR
    junk.write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00garbage" * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own complaints about the junk
        assert [m["source"] for m in DicomDataset("train", **kw).store.index["meta"]] == [str(good)]
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match="pip install 'motfm\\[data\\]'"):
        DicomDataset("train", **kw)
