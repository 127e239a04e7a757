"""CAMUS reader: both releases, orientation, classes, patient-level splits, resizing, bad input."""

import gzip
import warnings
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from data.fixtures import CAMUS_SPACING_XY, camus_frame, compose_data, write_camus, write_camus_split
from motfm.data.base import DataError, check_sample
from motfm.data.camus import MASK_LABELS, CamusDataset, read_info_cfg
from motfm.data.datamodule import MotfmDataModule
from motfm.data.transforms import uint8_to_unit


@pytest.fixture(scope="module")
def camus_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("camus")
    write_camus(base / "nifti", release="nifti")
    write_camus(base / "mhd", release="mhd")
    return {"nifti": base / "nifti", "mhd": base / "mhd"}


def _all(ds: CamusDataset) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("release", ["nifti", "mhd"])
def test_both_releases_load_through_the_datamodule(camus_roots: dict, tmp_path: Path, release: str) -> None:
    dm = MotfmDataModule(
        dataset=partial(CamusDataset, root=camus_roots[release], image_size=32, cache_dir=tmp_path),
        batch_size=4,
    )
    dm.setup()
    assert dm.spec.image_size == (32, 32) and dm.spec.num_classes == 4 and dm.spec.num_mask_labels == 4
    assert dm.spec.class_names == ("2CH_ED", "2CH_ES", "4CH_ED", "4CH_ES")
    assert dm.spec.mask_label_names == MASK_LABELS
    sizes = {s: len(dm.dataset(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 6 * 4 and all(n % 4 == 0 for n in sizes.values())
    for split in ("train", "val", "test"):
        for i, sample in enumerate(_all(dm.dataset(split))):
            check_sample(sample, dm.spec, source=f"{split}[{i}]")
            view, phase = sample["meta"]["view"], sample["meta"]["phase"]
            assert int(sample["label"]) == ("2CH", "4CH").index(view) * 2 + ("ED", "ES").index(phase)
            assert sample["meta"]["source"].endswith(".nii.gz" if release == "nifti" else ".mhd")
            assert sample["meta"]["image_quality"] in ("Good", "Medium", "Poor")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["mask"].dtype == torch.int64


def test_orientation_apex_at_top_and_releases_identical(camus_roots: dict, tmp_path: Path) -> None:
    """At native size both releases give exactly the written display image; the LV sits above the atrium."""
    kw = {"image_size": (64, 48), "cache_dir": tmp_path, "official_split": False}
    a = CamusDataset("train", root=camus_roots["nifti"], **kw)
    b = CamusDataset("train", root=camus_roots["mhd"], **kw)
    assert len(a) == len(b)
    rng = np.random.default_rng(0)
    first_image, first_labels = camus_frame(
        rng, (64, 48), 0, 0
    )  # patient0001 2CH ED, the fixture's first draw
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert sa["meta"]["id"] == sb["meta"]["id"]
        torch.testing.assert_close(sa["image"], sb["image"])
        assert torch.equal(sa["mask"], sb["mask"])
        assert sa["meta"]["source_spacing"] == pytest.approx([CAMUS_SPACING_XY[1], CAMUS_SPACING_XY[0]])
        assert sb["meta"]["source_spacing"] == pytest.approx([CAMUS_SPACING_XY[1], CAMUS_SPACING_XY[0]])
        rows = torch.arange(64.0)[:, None].expand(64, 48)
        m = sa["mask"][0]
        assert rows[m == 1].mean() < rows[m == 3].mean()  # LV cavity (apex side) above the left atrium
        if sa["meta"]["id"] == "patient0001_2CH_ED":
            torch.testing.assert_close(sa["image"][0], torch.from_numpy(uint8_to_unit(first_image)))
            assert torch.equal(sa["mask"][0], torch.from_numpy(first_labels).long())


@pytest.mark.parametrize("size", [(24, 18), (128, 96)])
def test_masks_stay_integer_with_their_label_set(camus_roots: dict, tmp_path: Path, size: tuple) -> None:
    ds = CamusDataset("train", root=camus_roots["nifti"], image_size=size, cache_dir=tmp_path)
    for sample in _all(ds):
        assert sample["mask"].dtype == torch.int64
        assert set(sample["mask"].unique().tolist()) == {0, 1, 2, 3}
        assert sample["meta"]["spacing"][0] == pytest.approx(CAMUS_SPACING_XY[1] * 64 / size[0])


def test_class_by_options(camus_roots: dict, tmp_path: Path) -> None:
    root = camus_roots["nifti"]
    q = CamusDataset("train", root=root, image_size=16, class_by="image_quality", cache_dir=tmp_path)
    assert q.spec.class_names == ("Good", "Medium", "Poor")
    for s in _all(q):
        cfg = read_info_cfg(Path(s["meta"]["source"]).parent / f"Info_{s['meta']['view']}.cfg")
        assert int(s["label"]) == ("Good", "Medium", "Poor").index(cfg["ImageQuality"])
    v = CamusDataset("train", root=root, image_size=16, class_by="view", views=["4CH"], cache_dir=tmp_path)
    assert v.spec.class_names == ("4CH",) and {s["meta"]["view"] for s in _all(v)} == {"4CH"}
    n = CamusDataset("val", root=root, image_size=16, class_by="none", with_mask=False, cache_dir=tmp_path)
    assert n.spec.num_classes == 0 and n.spec.num_mask_labels == 0
    assert "label" not in n[0] and "mask" not in n[0]
    es = CamusDataset("train", root=root, image_size=16, phases=["ES"], cache_dir=tmp_path)
    assert es.spec.class_names == ("2CH_ES", "4CH_ES")
    assert {int(s["label"]) for s in _all(es)} == {0, 1}
    with pytest.raises(ValueError, match="class_by"):
        CamusDataset("train", root=root, class_by="age", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="views"):
        CamusDataset("train", root=root, views=["3CH"], cache_dir=tmp_path)


def test_config_composes_with_root_override(camus_roots: dict, tmp_path: Path) -> None:
    cfg = compose_data(
        "camus",
        [
            f"data.dataset.root={camus_roots['mhd']}",
            f"data.dataset.cache_dir={tmp_path}",
            "data.dataset.image_size=16",
        ],
    )
    assert cfg.batch_size == 16
    dm = instantiate(cfg, num_workers=0, batch_size=2)
    dm.setup()
    assert dm.spec.image_size == (16, 16) and len(dm.dataset("val")) > 0
    with pytest.raises(Exception, match="root"):  # root is required
        instantiate(compose_data("camus", []).dataset)(split="train")


def test_official_split_files_are_used(tmp_path: Path) -> None:
    patients = write_camus(tmp_path / "c", n_patients=5, size=(20, 16))
    write_camus_split(
        tmp_path / "c", {"training": patients[:3], "validation": [patients[3]], "testing": [patients[4]]}
    )
    got = {
        s: {
            m["patient"]
            for m in CamusDataset(s, root=tmp_path / "c", image_size=8, cache=False).store.index["meta"]
        }
        for s in ("train", "val", "test")
    }
    assert got == {"train": set(patients[:3]), "val": {patients[3]}, "test": {patients[4]}}
    (tmp_path / "c" / "database_split" / "subgroup_testing.txt").write_text(f"{patients[0]}\n")
    with pytest.raises(DataError, match="also listed"):
        CamusDataset("test", root=tmp_path / "c", image_size=8, cache=False)
    # root may also be the database_nifti folder itself (no split folder there: a patient split)
    ds = CamusDataset("train", root=tmp_path / "c" / "database_nifti", image_size=8, cache=False)
    assert len(ds) > 0


@pytest.mark.parametrize("seed", range(6))
def test_patient_level_splits_never_overlap(camus_roots: dict, tmp_path: Path, seed: int) -> None:
    fractions = [{"train": 0.5, "val": 0.25, "test": 0.25}, {"train": 0.7, "val": 0.15, "test": 0.15}][
        seed % 2
    ]
    metas = {
        s: CamusDataset(
            s, root=camus_roots["mhd"], image_size=8, split_seed=seed, split_fractions=fractions, cache=False
        ).store.index["meta"]
        for s in ("train", "val", "test")
    }
    patients = {s: {m["patient"] for m in ms} for s, ms in metas.items()}
    assert patients["train"].isdisjoint(patients["val"]) and patients["train"].isdisjoint(patients["test"])
    assert patients["val"].isdisjoint(patients["test"])
    assert set().union(*patients.values()) == {f"patient{i:04d}" for i in range(1, 7)}
    for ms in metas.values():  # every frame of a patient is in the patient's split
        for p in {m["patient"] for m in ms}:
            assert sum(m["patient"] == p for m in ms) == 4


def test_cache_is_reused_and_rebuilt_when_options_change(
    camus_roots: dict, tmp_path: Path, monkeypatch
) -> None:
    first = CamusDataset("train", root=camus_roots["nifti"], image_size=16, cache_dir=tmp_path)
    assert not first.cache_hit

    def fail(*args, **kwargs):
        raise AssertionError("a cache hit must not read NIfTI files")

    monkeypatch.setattr(nib, "load", fail)
    again = CamusDataset("train", root=camus_roots["nifti"], image_size=16, cache_dir=tmp_path)
    assert again.cache_hit and again.cache_path == first.cache_path
    assert torch.equal(again[3]["image"], first[3]["image"])
    with pytest.raises(DataError, match="not a readable NIfTI"):  # a new option needs the files again
        CamusDataset("train", root=camus_roots["nifti"], image_size=20, cache_dir=tmp_path)


def _fresh(tmp_path: Path, n: int = 3) -> Path:
    root = tmp_path / "camus"
    write_camus(root, n_patients=n, size=(20, 16))
    return root


def _load(root: Path, **kw) -> CamusDataset:
    kw = {"image_size": 8, "cache": False, "official_split": False, **kw}
    return CamusDataset("train", root=root, split_fractions={"train": 1.0}, **kw)


def test_bad_inputs_each_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CAMUS patient folders"):
        _load(tmp_path / "empty")
    root = _fresh(tmp_path)
    folder = root / "database_nifti" / "patient0002"

    cfg = folder / "Info_4CH.cfg"
    cfg.write_text("ED: 1\nthis line is broken\n")
    with pytest.raises(DataError, match=rf"{cfg}: line 2 .* not 'Key: value'"):
        _load(root)
    cfg.write_text("ED: one\n")
    with pytest.raises(DataError, match="not a number"):
        _load(root)
    cfg.write_text("ImageQuality: Excellent\n")
    with pytest.raises(DataError, match="ImageQuality 'Excellent'"):
        _load(root)
    cfg.write_text("ED: 1\nImageQuality: Good\n")

    gt = folder / "patient0002_2CH_ES_gt.nii.gz"
    good = gt.read_bytes()
    nib.save(nib.Nifti1Image(np.zeros((16, 21), np.uint8), np.eye(4)), gt)
    with pytest.raises(DataError, match=rf"{gt}: label map has shape \(21, 16\), its image has \(20, 16\)"):
        _load(root)
    nib.save(nib.Nifti1Image(np.full((16, 20), 5, np.uint8), np.eye(4)), gt)
    with pytest.raises(DataError, match=rf"{gt}: label map values \[5\] outside 0..3"):
        _load(root)
    gt.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=rf"{gt}: not a readable NIfTI"):
        _load(root)
    gt.write_bytes(gzip.compress(b"this is not a NIfTI header at all" * 20))
    with pytest.raises(DataError, match=rf"{gt}: not a readable NIfTI"):
        _load(root)
    gt.write_bytes(good)

    img = folder / "patient0002_4CH_ED.nii.gz"
    nib.save(nib.Nifti1Image(np.full((16, 20), np.nan, np.float32), np.eye(4)), img)
    with pytest.raises(DataError, match=rf"{img}: image contains NaN"):
        _load(root)
    nib.save(nib.Nifti1Image(np.full((16, 20), 300, np.int16), np.eye(4)), img)
    with pytest.raises(DataError, match=rf"{img}: intensities span .* 0..255"):
        _load(root)
    nib.save(nib.Nifti1Image(np.zeros((16, 20, 3), np.uint8), np.eye(4)), img)
    with pytest.raises(DataError, match=rf"{img}: expected a 2D image"):
        _load(root)
    img.unlink()
    with pytest.raises(DataError, match=rf"{img}: CAMUS image file is missing"):
        _load(root)
    # skip_bad_cases: one warning with the count and the first file names, the rest loads
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _load(root, skip_bad_cases=True)
    assert len(ds) == 3 * 4 - 1
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "skipped 1 bad case" in messages[0] and img.name in messages[0]


def test_bad_metaimage_and_empty_split(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write_camus(root, n_patients=2, size=(20, 16), release="mhd")
    raw = root / "training" / "patient0001" / "patient0001_2CH_ED.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(DataError, match="patient0001_2CH_ED.mhd: MetaImage data are truncated"):
        _load(root)
    with pytest.raises(DataError, match="'val' split .* is empty"):
        CamusDataset("val", root=root, split_fractions={"train": 1.0}, cache=False)
