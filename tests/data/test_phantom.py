"""The procedural phantoms: sample contract, determinism, anatomy, class separability, loading."""

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from motfm.data.base import check_sample
from motfm.data.datamodule import MotfmDataModule, collate
from motfm.data.phantom import BrainPhantom, EchoPhantom, echo_geometry

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def _batch(ds, n: int) -> dict:
    return collate([ds[i] for i in range(n)])


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_echo_samples_follow_the_contract(size: int) -> None:
    ds = EchoPhantom("train", size=size, num_samples=4)
    assert len(ds) == 4
    assert ds.spec.image_size == (size, size)
    assert ds.spec.class_names == ("2CH_ED", "2CH_ES", "4CH_ED", "4CH_ES")
    assert ds.spec.mask_label_names == ("background", "lv_cavity", "myocardium", "left_atrium")
    for i in range(len(ds)):
        sample = ds[i]
        check_sample(sample, ds.spec, source=f"echo[{i}]")
        assert int(sample["label"]) == i % 4
        meta = sample["meta"]
        assert meta["source"] == "echo_phantom" and meta["split"] == "train" and meta["index"] == i
        assert f"{meta['view']}_{meta['phase']}" == ds.spec.class_names[i]


@pytest.mark.parametrize("size", [16, 32])
def test_brain_samples_follow_the_contract(size: int) -> None:
    ds = BrainPhantom("val", size=size, num_samples=3)
    assert ds.spec.spatial_dims == 3 and ds.spec.num_classes == 2 and ds.spec.num_mask_labels == 4
    for i in range(len(ds)):
        sample = ds[i]
        check_sample(sample, ds.spec, source=f"brain[{i}]")
        meta = sample["meta"]
        assert meta["affine"].shape == (4, 4) and meta["affine"].dtype == torch.float64
        assert meta["spacing"] == pytest.approx((192.0 / size,) * 3)
        centre = meta["affine"] @ torch.tensor([(size - 1) / 2] * 3 + [1.0], dtype=torch.float64)
        assert torch.allclose(centre[:3], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("cls", [EchoPhantom, BrainPhantom])
def test_samples_are_deterministic_and_differ_between_seeds_and_splits(cls) -> None:
    ds = cls("train", size=32, num_samples=8)
    late = ds[5]
    early = [ds[i] for i in range(6)]
    again = cls("train", size=32, num_samples=8)[5]
    for other in (early[5], again):
        assert torch.equal(late["image"], other["image"]) and torch.equal(late["mask"], other["mask"])
    assert not torch.equal(late["image"], early[1]["image"])
    for changed in (cls("train", size=32, num_samples=8, seed=1), cls("test", size=32, num_samples=8)):
        assert not torch.equal(late["image"], changed[5]["image"])
        assert not torch.equal(late["mask"], changed[5]["mask"])


def test_split_sizes_and_argument_checks() -> None:
    counts = {"train": 5, "val": 2}
    assert len(EchoPhantom("val", num_samples=counts)) == 2
    assert len(BrainPhantom("train", num_samples=counts)) == 5
    assert len(EchoPhantom("test")) > 0
    with pytest.raises(ValueError, match="no sample count"):
        EchoPhantom("test", num_samples=counts)
    with pytest.raises(IndexError):
        EchoPhantom("val", num_samples=counts)[2]
    assert EchoPhantom("val", num_samples=counts)[-1]["meta"]["index"] == 1
    with pytest.raises(ValueError, match="views"):
        EchoPhantom("train", views=("3CH",))
    with pytest.raises(ValueError, match="size"):
        BrainPhantom("train", size=8)
    one_view = EchoPhantom("train", size=32, num_samples=4, views=("4CH",))
    assert one_view.spec.class_names == ("4CH_ED", "4CH_ES")
    assert [one_view[i]["meta"]["view"] for i in range(4)] == ["4CH"] * 4


def test_echo_anatomy_all_labels_and_systole_smaller_cavity() -> None:
    batch = _batch(EchoPhantom("train", size=64, num_samples=64), 64)
    mask, label, image = batch["mask"][:, 0], batch["label"], batch["image"][:, 0]
    present = torch.stack([(mask == k).flatten(1).any(1) for k in range(4)], 1)
    assert present.all()
    cavity = (mask == 1).flatten(1).sum(1).float()
    muscle = (mask == 2).flatten(1).sum(1).float()
    systole = label % 2 == 1
    assert cavity[systole].mean() < 0.8 * cavity[~systole].mean()
    assert (muscle / cavity)[systole].mean() > (muscle / cavity)[~systole].mean()
    # Dark blood pools, bright myocardium, grey tissue in the sector, black outside it.
    sector = torch.tensor(echo_geometry(64)[2])
    means = [image[(mask == k) & sector].mean() for k in range(4)]
    assert means[1] < means[3] < means[0] < means[2]
    assert (image[:, ~sector] == -1).all()


def test_brain_anatomy_all_labels_and_larger_tumours_in_class_one() -> None:
    batch = _batch(BrainPhantom("train", size=32, num_samples=16), 16)
    mask, label, image = batch["mask"][:, 0], batch["label"], batch["image"][:, 0]
    for k in range(4):
        assert (mask == k).flatten(1).any(1).all()
    tumour = (mask > 0).flatten(1).sum(1).float()
    assert tumour[label == 1].mean() > 1.5 * tumour[label == 0].mean()
    means = [image[mask == k].mean() for k in range(4)]
    assert means[0] < means[2] < means[1] < means[3]  # background includes the black outside of the head
    assert (image[:, 0, 0, 0] == -1).all()


def test_echo_classes_are_recoverable_by_a_nearest_centroid_classifier() -> None:
    train = _batch(EchoPhantom("train", size=32, num_samples=128), 128)
    test = _batch(EchoPhantom("test", size=32, num_samples=64), 64)

    def features(images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, 4).flatten(1)

    x = features(train["image"])
    centroids = torch.stack([x[train["label"] == c].mean(0) for c in range(4)])
    predicted = torch.cdist(features(test["image"]), centroids).argmin(1)
    assert (predicted == test["label"]).float().mean() > 0.7


@pytest.mark.parametrize("cls", [EchoPhantom, BrainPhantom])
def test_dataloader_batches_samples(cls) -> None:
    ds = cls("train", size=32, num_samples=6)
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0, collate_fn=collate)))
    assert batch["image"].shape == (4, 1, *ds.spec.image_size)
    assert batch["mask"].shape == (4, 1, *ds.spec.image_size) and batch["mask"].dtype == torch.int64
    assert batch["label"].shape == (4,)
    assert [m["index"] for m in batch["meta"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["echo_phantom", "brain_phantom"])
def test_data_configs_build_a_datamodule(name: str) -> None:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.dataset.num_samples = {"train": 4, "val": 2, "test": 2}
    cfg.dataset.size = 32
    cfg.batch_size = 2
    dm = instantiate(cfg)
    assert isinstance(dm, MotfmDataModule)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, *dm.spec.image_size)
    assert dm.spec.num_mask_labels == 4


def test_datamodule_from_partial_factory() -> None:
    dm = MotfmDataModule(partial(BrainPhantom, size=16, num_samples={"train": 2, "val": 1, "test": 1}), 2)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (1, 1, 16, 16, 16)
