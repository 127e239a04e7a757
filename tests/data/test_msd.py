"""MSD brain-tumour reader: layout, axes, geometry (affine after crop + resize), real brains, bad input."""

import json
import os
import warnings
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from data.fixtures import MSD_AFFINE, compose_data, write_msd, write_msd_json
from motfm.data.base import DataError, check_sample
from motfm.data.datamodule import MotfmDataModule
from motfm.data.msd import MsdBrainDataset
from motfm.data.volume_geometry import crop_resize_matrix, resample
from motfm.io.nifti import save_nifti

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("msd") / "Task01_BrainTumour"
    write_msd(root)
    return root


def _check_geometry(sample: dict, source_labels: np.ndarray, source_affine: np.ndarray) -> int:
    """Every output voxel inside the data maps (through both affines) to a source voxel with the same label.

    ``nearest-exact`` resampling picks the source voxel nearest to the mapped position, so the output label
    equals the source label at ``round(position)`` exactly when the affine is right to within half a voxel.
    Returns the number of voxels checked.
    """
    mask = sample["mask"][0].numpy()  # [D, H, W]
    d, h, w = np.meshgrid(*[np.arange(n) for n in mask.shape], indexing="ij")
    out_ijk = np.stack([d.ravel(), h.ravel(), w.ravel(), np.ones(w.size)])  # (i, j, k) = (d, h, w)
    world = sample["meta"]["affine"] @ out_ijk
    src = np.linalg.solve(source_affine, world)[:3]
    idx = np.floor(src + 0.5).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(source_labels.shape)[:, None]), axis=0)
    inside &= np.all(np.abs(src - np.round(src)) < 0.49, axis=0)  # skip exact ties between two voxels
    expected = source_labels[idx[0, inside], idx[1, inside], idx[2, inside]]
    np.testing.assert_array_equal(mask.ravel()[inside], expected)
    return int(inside.sum())


def test_loads_through_the_datamodule_with_masks(msd_root: Path, tmp_path: Path) -> None:
    factory = partial(MsdBrainDataset, root=msd_root, image_size=[12, 16, 16], cache_dir=tmp_path)
    dm = MotfmDataModule(dataset=factory, batch_size=2)
    dm.setup()
    spec = dm.spec
    assert spec.spatial_dims == 3 and spec.channels == 1 and spec.image_size == (12, 16, 16)
    assert spec.mask_label_names == ("background", "edema", "non-enhancing tumor", "enhancing tumour")
    ids = {s: [m["id"] for m in dm.dataset(s).store.index["meta"]] for s in ("train", "val", "test")}
    assert sorted(sum(ids.values(), [])) == [f"BRATS_{i:03d}" for i in range(1, 7)]
    for split in ids:
        ds = dm.dataset(split)
        for i in range(len(ds)):
            sample = ds[i]
            check_sample(sample, spec, source=f"{split}[{i}]")
            assert sample["meta"]["affine"].shape == (4, 4)
            assert set(sample["mask"].unique().tolist()) == {0, 1, 2, 3}
            assert sample["image"].min() == -1.0 and sample["image"].max() > 0.0
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 12, 16, 16) and len(batch["meta"]) == 2


@pytest.mark.parametrize("keep_aspect", [True, False])
@pytest.mark.parametrize("size", [(8, 10, 12), (20, 30, 26)])
def test_affine_maps_each_output_voxel_to_the_same_anatomy(
    msd_root: Path, tmp_path: Path, keep_aspect: bool, size: tuple
) -> None:
    ds = MsdBrainDataset(
        "train", root=msd_root, image_size=size, keep_aspect=keep_aspect, margin=2, cache=False
    )
    for i in range(len(ds)):
        sample = ds[i]
        labels = np.asarray(nib.load(msd_root / "labelsTr" / f"{sample['meta']['id']}.nii.gz").dataobj)
        assert _check_geometry(sample, labels, MSD_AFFINE) > 0.5 * np.prod(size) * (0.3 if keep_aspect else 1)
        spacing = np.linalg.norm(sample["meta"]["affine"][:3, :3], axis=0)
        assert sample["meta"]["spacing"] == pytest.approx(spacing.tolist())


def test_axes_are_k_j_i_and_identity_resize_keeps_the_voxels(tmp_path: Path) -> None:
    """With the crop equal to the volume and image_size equal to its shape, the output is the source array."""
    root = tmp_path / "t"
    write_msd(root, n_cases=1, shape=(10, 8, 6))
    img = nib.load(root / "imagesTr" / "BRATS_001.nii.gz")
    data = np.asarray(img.dataobj)
    data[..., :] += 1.0  # no zero voxel: the brain box is the whole volume
    nib.save(nib.Nifti1Image(data, img.affine), root / "imagesTr" / "BRATS_001.nii.gz")
    ds = MsdBrainDataset(
        "train",
        root=root,
        image_size=(10, 8, 6),
        modalities=["T2w", "flair"],
        split_fractions={"train": 1.0},
        cache=False,
    )
    sample = ds[0]
    assert sample["image"].shape == (2, 10, 8, 6) and ds.spec.channels == 2
    np.testing.assert_allclose(sample["meta"]["affine"], MSD_AFFINE, atol=1e-9)
    src = data[..., 3]  # T2w is channel 0
    lo, hi = np.percentile(src, [0.5, 99.5])
    expected = np.clip((src - lo) / (hi - lo) * 2 - 1, -1, 1)
    np.testing.assert_allclose(sample["image"][0].numpy(), expected, atol=1e-5)
    labels = np.asarray(nib.load(root / "labelsTr" / "BRATS_001.nii.gz").dataobj)
    assert np.array_equal(sample["mask"][0].numpy(), labels)


def test_crop_resize_matrix_matches_interpolate_sampling() -> None:
    """Torch's resampling of linear ramps is reproduced by the matrix's voxel mapping (trilinear is exact)."""
    shape = (9, 7, 5)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    vol = np.stack([grid[a] for a in range(3)]).astype(np.float32)  # channel a holds the a-th index
    out, (ratio, pad) = resample(vol, (6, 11, 4), keep_aspect=False, pad_value=-1, mode="trilinear")
    m = crop_resize_matrix([0, 0, 0], ratio, pad)
    o = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in (6, 11, 4)], indexing="ij"))
    pos = np.einsum("ab,b...->a...", m[:3, :3], o) + m[:3, 3, None, None, None]
    interior = np.all((pos >= 0) & (pos <= np.array(shape)[:, None, None, None] - 1), axis=0)
    for a in range(3):
        np.testing.assert_allclose(out[a][interior], pos[a][interior], atol=1e-4)


def _real_brain_task(root: Path, source: Path, n: int, modality: dict[str, str]) -> np.ndarray:
    """Place a real NIfTI brain into a Decathlon layout ``n`` times, with labels from intensity thresholds."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    img = nib.load(source)
    data = np.asanyarray(img.dataobj)
    first = data if data.ndim == 3 else data[..., 0]
    labels = (first > np.percentile(first, 60)).astype(np.uint8) + (first > np.percentile(first, 90))
    cases = [f"BRATS_{i + 1:03d}" for i in range(n)]
    for c in cases:
        nib.save(img, root / "imagesTr" / f"{c}.nii.gz")
        nib.save(nib.Nifti1Image(labels, img.affine), root / "labelsTr" / f"{c}.nii.gz")
    write_msd_json(root, cases, modality=modality)
    return labels


@pytest.mark.parametrize(
    ("name", "modality"),
    [("anatomical.nii", {"0": "T1"}), ("example4d.nii.gz", {"0": "EPI_a", "1": "EPI_b"})],
)
def test_real_nibabel_brains_load_and_keep_their_geometry(tmp_path: Path, name: str, modality: dict) -> None:
    source = NIBABEL_DATA / name
    labels = _real_brain_task(tmp_path / "task", source, 3, modality)
    affine = nib.load(source).affine
    mods = list(modality.values())
    ds = MsdBrainDataset(
        "train", root=tmp_path / "task", modalities=mods, image_size=(16, 20, 24), cache_dir=tmp_path
    )
    sample = ds[0]
    check_sample(sample, ds.spec)
    assert sample["image"].shape == (len(mods), 16, 20, 24)
    assert _check_geometry(sample, labels, affine) > 1000
    # axis directions survive: the output affine's columns are the source's columns scaled
    cols_out = sample["meta"]["affine"][:3, :3] / np.linalg.norm(sample["meta"]["affine"][:3, :3], axis=0)
    cols_src = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(cols_out, cols_src, atol=1e-6)
    # writing a generated volume back with save_nifti and meta["affine"] puts it in the source's world space
    save_nifti(sample["image"][:1], tmp_path / "generated.nii.gz", sample["meta"]["affine"])
    out = nib.load(tmp_path / "generated.nii.gz")
    np.testing.assert_allclose(out.affine, sample["meta"]["affine"], atol=1e-5)
    centre_out = out.affine @ np.array([*(np.array(out.shape) - 1) / 2, 1.0])
    lo, hi = np.array(sample["meta"]["crop"]).T
    centre_crop = affine @ np.array([*((lo + hi - 1) / 2), 1.0])
    # (the data are centred in the padded grid up to half an output voxel)
    tolerance = 0.5 * np.abs(sample["meta"]["affine"][:3, :3]).sum(axis=1) + 1e-6
    assert np.all(np.abs(centre_out[:3] - centre_crop[:3]) <= tolerance)


def test_cache_reuse_without_reading_and_invalidation(msd_root: Path, tmp_path: Path, monkeypatch) -> None:
    kw = {"root": msd_root, "image_size": 8, "cache_dir": tmp_path}
    first = MsdBrainDataset("train", **kw)
    entry = first.cache_path
    assert not first.cache_hit and (entry / "images.npy").exists() and (entry / "masks.npy").exists()
    index = json.loads((entry / "index.json").read_text())
    assert index["options"]["image_size"] == [8, 8, 8] and len(index["meta"]) == len(first)
    assert isinstance(np.load(entry / "images.npy", mmap_mode="r"), np.memmap)
    real_load = nib.load
    calls = []
    monkeypatch.setattr(nib, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    again = MsdBrainDataset("train", **kw)
    assert again.cache_hit and calls == [] and again.cache_path == entry
    assert torch.equal(again[0]["image"], first[0]["image"]) and torch.equal(
        again[0]["mask"], first[0]["mask"]
    )
    np.testing.assert_array_equal(again[0]["meta"]["affine"], first[0]["meta"]["affine"])
    changed = MsdBrainDataset("train", **kw, margin=1)
    assert not changed.cache_hit and changed.cache_path != entry and len(calls) > 0
    calls.clear()
    case = msd_root / "imagesTr" / f"{first[0]['meta']['id']}.nii.gz"
    st = case.stat()
    os.utime(case, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a touched source file invalidates too
    touched = MsdBrainDataset("train", **kw)
    assert not touched.cache_hit and touched.cache_path != entry and len(calls) > 0
    leftovers = [p.name for p in (tmp_path / "msd_brain").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_config_composes_with_root_override(msd_root: Path, tmp_path: Path) -> None:
    cfg = compose_data("msd_brain", [f"data.dataset.root={msd_root}", f"data.dataset.cache_dir={tmp_path}"])
    assert cfg.batch_size == 2 and list(cfg.dataset.image_size) == [96, 96, 96]
    dm = instantiate(cfg, dataset={"image_size": [8, 8, 8]}, num_workers=0)
    dm.setup()
    assert dm.spec.image_size == (8, 8, 8) and dm.spec.num_mask_labels == 4


def test_tumour_size_classes(msd_root: Path) -> None:
    ds = MsdBrainDataset(
        "train", root=msd_root, image_size=8, class_by="tumour_size", tumour_size_bins=[0.5, 1.0], cache=False
    )
    assert ds.spec.class_names == ("<0.5mL", "0.5-1mL", ">=1mL")
    for i in range(len(ds)):
        ml = ds[i]["meta"]["tumour_ml"]
        assert int(ds[i]["label"]) == (0 if ml < 0.5 else 1 if ml < 1.0 else 2)


def _task(tmp_path: Path) -> Path:
    root = tmp_path / "bad"
    write_msd(root, n_cases=2, shape=(12, 10, 8))
    return root


def _load(root: Path, **kw) -> MsdBrainDataset:
    return MsdBrainDataset(
        "train", root=root, image_size=8, split_fractions={"train": 1.0}, cache=False, **kw
    )


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        ("twod", r"imagesTr/BRATS_001.nii.gz: expected a 3D or 4D volume, got shape \(12, 10\)"),
        (
            "mask_shape",
            r"labelsTr/BRATS_001.nii.gz: label map has shape \(12, 10, 9\), its image has \(12, 10, 8\)",
        ),
        ("mask_range", r"labelsTr/BRATS_001.nii.gz: label values span \[0, 7\], dataset.json declares 0..3"),
        ("mask_float", "labelsTr/BRATS_001.nii.gz: label map has non-integer values"),
        ("nan", "imagesTr/BRATS_001.nii.gz: volume contains NaN or inf voxels"),
        ("inf", "imagesTr/BRATS_001.nii.gz: volume contains NaN or inf voxels"),
        ("truncated", "imagesTr/BRATS_001.nii.gz: not a readable NIfTI file"),
        ("not_nifti", "imagesTr/BRATS_001.nii.gz: not a readable NIfTI file"),
        ("missing", "imagesTr/BRATS_001.nii.gz: file is missing"),
        ("zero", "imagesTr/BRATS_001.nii.gz: volume is empty"),
        ("few_modalities", "imagesTr/BRATS_001.nii.gz: has 2 modalities, modality index 3 requested"),
    ],
)
def test_bad_volumes_give_one_clear_error(tmp_path: Path, corrupt: str, message: str) -> None:
    root = _task(tmp_path)
    image, label = root / "imagesTr" / "BRATS_001.nii.gz", root / "labelsTr" / "BRATS_001.nii.gz"
    data = np.asarray(nib.load(image).dataobj)
    if corrupt == "twod":
        nib.save(nib.Nifti1Image(data[:, :, 0, 0], MSD_AFFINE), image)
    elif corrupt == "mask_shape":
        nib.save(nib.Nifti1Image(np.zeros((12, 10, 9), np.uint8), MSD_AFFINE), label)
    elif corrupt == "mask_range":
        nib.save(nib.Nifti1Image(np.full((12, 10, 8), 7, np.uint8) * (np.arange(8) > 3), MSD_AFFINE), label)
    elif corrupt == "mask_float":
        nib.save(nib.Nifti1Image(np.full((12, 10, 8), 0.5, np.float32), MSD_AFFINE), label)
    elif corrupt in ("nan", "inf"):
        data[3, 3, 3, 0] = np.nan if corrupt == "nan" else np.inf
        nib.save(nib.Nifti1Image(data, MSD_AFFINE), image)
    elif corrupt == "truncated":
        image.write_bytes(image.read_bytes()[:300])
    elif corrupt == "not_nifti":
        image.write_bytes(b"<html>404 not found</html>")
    elif corrupt == "missing":
        image.unlink()
    elif corrupt == "zero":
        nib.save(nib.Nifti1Image(np.zeros_like(data), MSD_AFFINE), image)
    elif corrupt == "few_modalities":
        nib.save(nib.Nifti1Image(data[..., :2], MSD_AFFINE), image)
    modalities = ["T2w"] if corrupt == "few_modalities" else ["FLAIR"]
    with pytest.raises(DataError, match=message):
        _load(root, modalities=modalities)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _load(root, modalities=modalities, skip_bad_cases=True)
    assert len(ds) == 1 and ds[0]["meta"]["id"] == "BRATS_002"
    assert len(caught) == 1 and "skipped 1 bad case" in str(caught[0].message)


def test_bad_dataset_json_and_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _load(tmp_path / "nothing")
    root = _task(tmp_path)
    path = root / "dataset.json"
    good = json.loads(path.read_text())
    path.write_text('{"modality": {"0": "FLAIR"},')
    with pytest.raises(DataError, match=rf"{path}: not valid JSON"):
        _load(root)
    for key, value, message in [
        ("labels", None, "'labels' must be a non-empty object"),
        ("labels", {"0": "bg", "2": "x"}, "'labels' keys must be 0..n-1"),
        ("modality", {"zero": "FLAIR"}, "'modality' keys must be integers"),
        ("training", [{"label": "x"}], "'training' must be a list"),
    ]:
        path.write_text(json.dumps({**good, key: value}))
        with pytest.raises(DataError, match=rf"{path}: {message}"):
            _load(root)
    path.unlink()
    with pytest.raises(DataError, match="dataset.json is missing"):
        _load(root)
    path.write_text(json.dumps(good))
    with pytest.raises(ValueError, match="modality 'DWI' not in"):
        _load(root, modalities=["DWI"])
    with pytest.raises(DataError, match="'test' split .* is empty"):
        MsdBrainDataset("test", root=root, split_fractions={"train": 1.0}, cache=False)
