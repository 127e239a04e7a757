"""Original MOTFM pickle: opt-in unpickling, split names, scaled masks, classes, conversion, scripts."""

import importlib.util
import pickle
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from data.fixtures import camus_frame, write_legacy_pickle
from motfm.data.base import DataError, check_sample
from motfm.data.datamodule import MotfmDataModule
from motfm.data.legacy_pickle import LegacyPickleDataset, convert_pickle

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def pkl(tmp_path: Path) -> Path:
    path = tmp_path / "data.pkl"
    write_legacy_pickle(path)
    return path


def test_refuses_to_unpickle_without_opt_in(pkl: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{pkl}: refusing to unpickle.*data.dataset.trust_pickle=true"):
        LegacyPickleDataset("train", root=pkl, cache_dir=tmp_path)


def test_loads_through_the_datamodule_and_recovers_integer_masks(pkl: Path, tmp_path: Path) -> None:
    dm = MotfmDataModule(
        dataset=partial(LegacyPickleDataset, root=pkl, trust_pickle=True, cache_dir=tmp_path), batch_size=2
    )
    dm.setup()
    spec = dm.spec
    assert spec.image_size == (32, 32) and spec.num_mask_labels == 4
    assert spec.class_names == ("2CH_ED", "2CH_ES", "4CH_ED", "4CH_ES")  # sorted string classes
    assert {s: len(dm.dataset(s)) for s in ("train", "val", "test")} == {"train": 6, "val": 3, "test": 3}
    with open(pkl, "rb") as f:
        raw = pickle.load(f)
    for split, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        ds = dm.dataset(split)
        for i in range(len(ds)):
            sample = ds[i]
            check_sample(sample, spec)
            entry = raw[key][i]
            assert torch.equal(sample["mask"][0], torch.from_numpy(np.round(entry["mask"] * 3)).long())
            torch.testing.assert_close(sample["image"][0], torch.from_numpy(entry["image"][0] / 127.5 - 1))
            assert spec.class_names[int(sample["label"])] == entry["class"]
            assert sample["meta"]["metadata"] == {"patient": f"p{key}{i}", "frame": i}
            assert sample["meta"]["intensity"] == "uint8"


def test_conversion_gives_the_same_samples_without_unpickling(pkl: Path, tmp_path: Path, monkeypatch) -> None:
    counts = convert_pickle(pkl, tmp_path / "converted", image_size=16)
    assert counts == {"train": 6, "val": 3, "test": 3}
    direct = LegacyPickleDataset("val", root=pkl, trust_pickle=True, image_size=16, cache=False)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("the converted folder must not unpickle"))
    converted = LegacyPickleDataset("val", root=tmp_path / "converted")
    assert converted.spec == direct.spec and len(converted) == 3
    for i in range(3):
        a, b = direct[i], converted[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert torch.equal(a["label"], b["label"]) and a["meta"] == b["meta"]
    with pytest.raises(DataError, match="already exists"):
        convert_pickle(pkl, tmp_path / "converted")
    with pytest.raises(DataError, match="no converted 'train' split"):
        LegacyPickleDataset("train", root=tmp_path)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_script_and_prepare_data_script(pkl: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "conv"
    convert = _script("convert_pickle")
    with pytest.raises(SystemExit):
        convert.main([str(pkl), str(out)])
    assert "--trust-pickle" in capsys.readouterr().err and not out.exists()
    assert convert.main([str(pkl), str(out), "--trust-pickle", "--image-size", "24"]) == 0
    assert "val: 3 samples" in capsys.readouterr().out and (out / "val" / "images.npy").exists()
    assert convert.main([str(pkl), str(out), "--trust-pickle"]) == 2  # bad input: one line, status 2
    assert "already exists" in capsys.readouterr().err
    prepare = _script("prepare_data")
    overrides = ["data=pickle", f"data.dataset.root={out}", f"data.dataset.cache_dir={tmp_path / 'cache'}"]
    assert prepare.main(overrides) == 0
    printed = capsys.readouterr().out
    assert "train: 6 samples checked, (24, 24)" in printed and "test: 3 samples" in printed
    raw = ["data=pickle", f"data.dataset.root={pkl}", "data.dataset.trust_pickle=true"]
    assert prepare.main([*raw, f"data.dataset.cache_dir={tmp_path / 'cache'}"]) == 0
    assert "cache built" in capsys.readouterr().out
    assert prepare.main([*raw, f"data.dataset.cache_dir={tmp_path / 'cache'}"]) == 0
    assert "cache reused" in capsys.readouterr().out


def test_integer_classes_channels_and_intensity_ranges(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    entries = [{"image": rng.uniform(0, 1, (3, 8, 8)).astype(np.float32), "class": i % 3} for i in range(4)]
    path = tmp_path / "rgb.pkl"
    with open(path, "wb") as f:
        pickle.dump({"train": entries, "valid": entries[:1], "test": entries[:1]}, f)
    ds = LegacyPickleDataset("train", root=path, trust_pickle=True, cache=False)
    assert ds.spec.channels == 3 and ds.spec.num_classes == 3 and not ds.spec.has_mask
    torch.testing.assert_close(ds[1]["image"], torch.from_numpy(entries[1]["image"] * 2 - 1))
    assert [int(ds[i]["label"]) for i in range(4)] == [0, 1, 2, 0]
    assert ds[0]["meta"]["intensity"] == "unit"
    wide = [{"image": np.full((4, 4), v, np.float32)} for v in (-500.0, 1500.0)]
    with open(path, "wb") as f:
        pickle.dump({"train": wide}, f)
    ds = LegacyPickleDataset("train", root=path, trust_pickle=True, cache=False)
    assert ds[0]["image"].min() == -1 and ds[1]["image"].max() == 1 and ds[0]["meta"]["intensity"] == "minmax"


def _write(path: Path, entries: list, key: str = "train") -> Path:
    with open(path, "wb") as f:
        pickle.dump({key: entries}, f)
    return path


def test_bad_pickles_give_clear_errors(tmp_path: Path) -> None:
    image, labels = camus_frame(np.random.default_rng(0), (16, 16), 0, 0)
    ok = {"image": image.astype(np.float32), "mask": labels / 3.0, "class": "a"}
    load = partial(LegacyPickleDataset, "train", trust_pickle=True, cache=False)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"train": [ok]})[:-10])
    with pytest.raises(DataError, match=rf"{bad}: cannot unpickle"):
        load(root=bad)
    with pytest.raises(DataError, match="pickle file is missing"):
        load(root=tmp_path / "missing.pkl")
    _write(bad, [ok], key="training")
    with pytest.raises(DataError, match="expected a dict with 'train'/'valid'/'test'"):
        load(root=bad)
    _write(bad, [ok])
    with pytest.raises(DataError, match=r"'val' split \(key \('valid', 'val'\)\) is empty"):
        LegacyPickleDataset("val", root=bad, trust_pickle=True, cache=False)
    cases = [
        ({**ok, "image": np.full((16, 16), np.nan, np.float32)}, r"\[train\]\[1\]: image contains NaN"),
        (
            {**ok, "mask": labels[:8] / 3.0},
            r"\[train\]\[1\]: mask has shape \(8, 16\), its image has \(16, 16\)",
        ),
        ({**ok, "mask": labels * 0.3}, r"\[train\]\[1\]: scaled mask values are not multiples of 1/3"),
        (
            {**ok, "image": np.zeros((5, 16, 16), np.float32)},
            r"\[train\]\[1\]: image has shape \(5, 16, 16\)",
        ),
        ({**ok, "image": np.zeros((20, 20), np.float32)}, "images have different sizes"),
        ("not a dict", r"\[train\]\[1\]: entry is not a dict"),
    ]
    for entry, message in cases:
        _write(bad, [ok, entry])
        with pytest.raises(DataError, match=message):
            load(root=bad)
    plain = {**ok, "mask": labels}  # integer label maps: not scaled
    _write(bad, [plain, {**plain, "mask": labels + 4}, {**plain, "class": "b"}])
    with pytest.raises(DataError, match=r"\[train\]\[1\]: mask labels span \[4, 7\], expected 0..3"):
        load(root=bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load(root=bad, skip_bad_cases=True)
    assert len(ds) == 2 and [ds[i]["meta"]["index"] for i in range(2)] == [0, 2]
    assert len(caught) == 1 and "skipped 1 bad case" in str(caught[0].message)
    with pytest.raises(DataError, match=r"classes \['b'\] are not in class_names \['a'\]"):
        load(root=bad, class_names=["a"], skip_bad_cases=True)
