"""The preprocessing cache (atomic entries, keys, memory maps in workers), splits and transforms."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.fixtures import write_camus
from motfm.data.base import DataError
from motfm.data.cache_entry import (
    ArrayStore,
    Record,
    cache_key,
    entry_complete,
    file_fingerprint,
    write_entry,
)
from motfm.data.camus import CamusDataset
from motfm.data.datamodule import collate
from motfm.data.splits import assign_groups, check_fractions, select_split
from motfm.data.transforms import Augment, resize_image, resize_mask


def _records(n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise DataError(f"case {i} is bad")
        yield Record(
            image=np.full((1, 4, 5), i / n, np.float32),
            mask=np.full((1, 4, 5), i % 3, np.uint8),
            label=i,
            meta={"id": f"c{i}", "affine": np.eye(4).tolist()},
        )


def test_entry_round_trip_memmap_and_index(tmp_path: Path) -> None:
    entry = tmp_path / "ds" / "train-abc"
    assert write_entry(entry, _records(5), lambda: {"format_version": 1, "spec": {}}) == 5
    assert entry_complete(entry)
    store = ArrayStore.open(entry)
    assert isinstance(store.images, np.memmap) and store.images.shape == (5, 1, 4, 5)
    assert (
        store.images.dtype == np.float32 and store.masks.dtype == np.uint8 and store.labels.dtype == np.int64
    )
    assert store.labels.tolist() == [0, 1, 2, 3, 4] and store.masks[4, 0, 0, 0] == 1
    assert [m["id"] for m in store.index["meta"]] == [f"c{i}" for i in range(5)]
    assert [p.name for p in entry.iterdir()] and not list(entry.glob("*.bin"))


def test_failed_build_leaves_nothing_and_existing_entry_wins(tmp_path: Path) -> None:
    entry = tmp_path / "ds" / "train-abc"
    with pytest.raises(DataError, match="case 2 is bad"):
        write_entry(entry, _records(5, fail_at=2), lambda: {"format_version": 1})
    assert not entry.exists() and list((tmp_path / "ds").iterdir()) == []
    write_entry(entry, _records(2), lambda: {"format_version": 1, "who": "first"})
    write_entry(entry, _records(3), lambda: {"format_version": 1, "who": "second"})  # e.g. another DDP rank
    assert json.loads((entry / "index.json").read_text())["who"] == "first"
    assert list((tmp_path / "ds").iterdir()) == [entry]
    (entry / "index.json").write_text('{"format_version": 0}')
    assert not entry_complete(entry)


def test_mismatched_records_are_rejected(tmp_path: Path) -> None:
    def mixed():
        yield Record(
            image=np.zeros((1, 2, 2), np.float32), mask=np.zeros((1, 2, 2), np.uint8), meta={"id": "a"}
        )
        yield Record(image=np.zeros((1, 2, 2), np.float32), meta={"id": "b"})

    with pytest.raises(DataError, match="record b has no masks entry"):
        write_entry(tmp_path / "x", mixed(), dict)

    def shapes():
        yield Record(image=np.zeros((1, 2, 2), np.float32), meta={"id": "a"})
        yield Record(image=np.zeros((1, 3, 2), np.float32), meta={"id": "b"})

    with pytest.raises(DataError, match=r"record b: images shape \(1, 3, 2\) differs"):
        write_entry(tmp_path / "y", shapes(), dict)


def test_key_and_fingerprint(tmp_path: Path) -> None:
    f = tmp_path / "a.nii.gz"
    f.write_bytes(b"12345")
    fp = file_fingerprint([f, tmp_path / "gone"], tmp_path)
    assert fp[0][:2] == ["a.nii.gz", 5] and fp[1] == ["gone", -1, -1]
    payload = {"dataset": "x", "options": {"a": 1, "b": [1, 2]}, "files": fp}
    assert cache_key(payload) == cache_key(json.loads(json.dumps(payload)))
    assert cache_key(payload) != cache_key({**payload, "options": {"a": 2, "b": [1, 2]}})


def test_workers_reopen_the_memory_maps(tmp_path: Path) -> None:
    write_camus(tmp_path / "c", n_patients=3, size=(20, 16))
    ds = CamusDataset(
        "train", root=tmp_path / "c", image_size=8, split_fractions={"train": 1.0}, cache_dir=tmp_path
    )
    state = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives: no array copies
    assert state._store is None and len(state) == len(ds)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    images = torch.cat([b["image"] for b in loader])
    assert torch.equal(images, torch.stack([ds[i]["image"] for i in range(len(ds))]))


def test_augment_flips_jitter_and_only_in_training(tmp_path: Path) -> None:
    image = torch.arange(12.0).reshape(1, 3, 4) / 12
    sample = {"image": image, "mask": torch.arange(12).reshape(1, 3, 4), "meta": {}}
    flip = Augment(flip_axes=[1], flip_prob=1.0)
    out = flip(sample, torch.Generator().manual_seed(0))
    assert torch.equal(out["image"], image.flip(2)) and torch.equal(out["mask"], sample["mask"].flip(2))
    assert torch.equal(sample["image"], image)  # input untouched
    jitter = Augment(intensity_jitter=0.2)
    a = jitter(sample, torch.Generator().manual_seed(1))["image"]
    b = jitter(sample, torch.Generator().manual_seed(1))["image"]
    assert torch.equal(a, b) and not torch.equal(a, image) and a.min() >= -1 and a.max() <= 1
    with pytest.raises(ValueError, match="flip_axes"):
        Augment(flip_axes=[2], flip_prob=1.0)(sample, torch.Generator())
    with pytest.raises(ValueError, match="flip_prob"):
        Augment(flip_prob=2.0)
    write_camus(tmp_path / "c", n_patients=3, size=(20, 16))
    kw = {"root": tmp_path / "c", "image_size": 8, "cache_dir": tmp_path, "official_split": False}
    aug = {"flip_axes": [1], "flip_prob": 1.0}
    plain = CamusDataset("train", **kw)
    flipped = CamusDataset("train", **kw, augment=aug)
    assert flipped.cache_path == plain.cache_path  # augmentation happens after the cache
    assert torch.equal(flipped[0]["image"], plain[0]["image"].flip(2))
    assert torch.equal(
        CamusDataset("val", **kw, augment=aug)[0]["image"], CamusDataset("val", **kw)[0]["image"]
    )


def test_assign_groups_is_deterministic_complete_and_balanced() -> None:
    ids = [f"p{i:03d}" for i in range(50)]
    a = assign_groups(ids, seed=3)
    assert a == assign_groups(list(reversed(ids)) + ids[:5], seed=3)  # order and duplicates do not matter
    assert a != assign_groups(ids, seed=4)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 40, "val": 5, "test": 5}
    small = assign_groups(["a", "b", "c"], {"train": 0.9, "val": 0.05, "test": 0.05})
    assert sorted(small.values()) == ["test", "train", "val"]  # every requested split gets a group
    for seed in range(10):
        items = [f"f{i}" for i in range(40)]
        group_of = {f: f"patient{i % 7}" for i, f in enumerate(items)}
        parts = {s: select_split(items, group_of, s, seed=seed) for s in ("train", "val", "test")}
        assert sorted(sum(parts.values(), [])) == sorted(items)
        owners = {s: {group_of[f] for f in fs} for s, fs in parts.items()}
        assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
        assert not owners["val"] & owners["test"]
    with pytest.raises(ValueError, match="sum to 1"):
        check_fractions({"train": 0.5})
    with pytest.raises(ValueError, match="unknown split"):
        check_fractions({"train": 0.5, "valid": 0.5})


def test_resizing_keeps_range_and_labels() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 30, 20)).astype(np.float32)
    small = resize_image(image, (7, 5))
    assert small.shape == (2, 7, 5) and small.min() >= -1 - 1e-6 and small.max() <= 1 + 1e-6
    assert abs(small.mean() - image.mean()) < 0.05  # antialiased: an area average, not a sparse sample
    mask = np.zeros((1, 30, 20), np.uint8)
    mask[0, 5:20, 4:12] = 2
    mask[0, 22:28, 10:18] = 3
    for size in [(15, 10), (60, 40), (11, 9)]:
        out = resize_mask(mask, size)
        assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 2, 3}
    volume = rng.uniform(-1, 1, (1, 6, 7, 8)).astype(np.float32)
    assert resize_image(volume, (3, 4, 5)).shape == (1, 3, 4, 5)
