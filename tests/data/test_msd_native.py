"""MSD brain at native spacing (``resize=False``, the full-resolution wavelet configs): every output voxel is
a source voxel, all four modalities as channels, the geometry exact."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cli_helpers import compose_config
from data.fixtures import MSD_AFFINE, compose_data, write_msd
from motfm.data.base import DataSpec, check_sample
from motfm.data.msd import MsdBrainDataset
from motfm.data.volume_geometry import fit_box, pad_centred
from motfm.representation import HaarRepresentation


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("msd_native") / "Task01_BrainTumour"
    write_msd(root, n_cases=3)
    return root


def test_box_and_padding_helpers():
    assert fit_box([(2, 20), (0, 5)], (10, 8)) == [(6, 16), (0, 5)]
    out, (ratio, pad) = pad_centred(np.ones((1, 3, 4), np.float32), (6, 4), -1.0)
    assert out.shape == (1, 6, 4) and list(pad) == [1, 0] and list(ratio) == [1, 1]
    assert out[0, 1:4].min() == 1 and out[0, [0, 4, 5]].max() == -1


def test_native_spacing_crop_pads_and_crops_without_interpolation(msd_root: Path) -> None:
    # source 24 x 20 x 16: the brain box + margin is longer than 14 along D (cropped), short along W (padded)
    size = (14, 16, 16)
    ds = MsdBrainDataset(
        "train", root=msd_root, modalities=["FLAIR", "T1w", "t1gd", "T2w"], image_size=size, resize=False,
        margin=2, cache=False, split_fractions={"train": 1.0, "val": 0.0, "test": 0.0},
    )  # fmt: skip
    assert ds.spec.channels == 4 and ds.spec.image_size == size
    source_spacing = np.linalg.norm(MSD_AFFINE[:3, :3], axis=0)
    for i in range(len(ds)):
        sample = ds[i]
        check_sample(sample, ds.spec)
        np.testing.assert_allclose(sample["meta"]["spacing"], source_spacing)
        affine = np.asarray(sample["meta"]["affine"])
        labels = np.asarray(nib.load(msd_root / "labelsTr" / f"{sample['meta']['id']}.nii.gz").dataobj)
        # every output voxel maps to an integer source voxel, and the label there is the output's label
        grid = np.stack([*np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), np.ones(size)]).reshape(
            4, -1
        )
        src = np.linalg.solve(MSD_AFFINE, affine @ grid)[:3]
        np.testing.assert_allclose(src, np.round(src), atol=1e-6)
        idx = np.round(src).astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(labels.shape)[:, None]), axis=0)
        np.testing.assert_array_equal(
            sample["mask"][0].numpy().ravel()[inside], labels[idx[0, inside], idx[1, inside], idx[2, inside]]
        )
        assert sample["mask"][0].numpy().ravel()[~inside].max(initial=0) == 0  # padding is background
        lo, hi = sample["meta"]["crop"][0]
        assert hi - lo == 14  # the longer axis was cropped to the target around the brain's centre


def test_full_resolution_config_composes():
    data = compose_data("msd_brain_full", ["data.dataset.root=/nowhere"])
    dataset = data.dataset
    assert list(dataset.image_size) == [160, 192, 160] and dataset.resize is False
    assert list(dataset.modalities) == ["FLAIR", "T1w", "t1gd", "T2w"]


def test_the_full_resolution_experiment_puts_the_paper_network_on_haar_coefficients():
    cfg = compose_config("train", ["experiment=msd_full_haar", "data.dataset.root=/nowhere"], Path("/tmp"))
    assert cfg.representation._target_.endswith("HaarRepresentation") and cfg.representation.levels == 1
    assert list(cfg.model.channels) == [32, 64, 160, 480]  # model=motfm_msd
    data = DataSpec(3, 4, (160, 192, 160))
    coeff = HaarRepresentation(data, levels=1).coeff_spec(data)
    assert coeff.channels == 32 and coeff.image_size == (80, 96, 80)
    assert all(s % 8 == 0 for s in coeff.image_size)  # the four-level UNet halves it three times


def test_the_full_resolution_experiment_trains_and_samples_on_a_decathlon_tree(
    msd_root: Path, tmp_path: Path
):
    """``experiment=msd_full_haar`` end to end on a Decathlon layout (a tiny network at 16³): four modalities
    as channels at native spacing, 32 coefficient channels into the network, 4-channel volumes out."""
    from motfm.conditions import Conditions
    from motfm.loading import load_model
    from motfm.sample import generate_batch
    from motfm.train import train

    overrides = [
        "experiment=msd_full_haar",
        f"data.dataset.root={msd_root}",
        "data.dataset.image_size=[16,16,16]",
        "data.dataset.split_fractions={train:0.34,val:0.33,test:0.33}",
        f"data.dataset.cache_dir={tmp_path / 'cache'}",
        "data.num_workers=0",
        "model.channels=[8,16]",
        "model.attention_levels=[false,true]",
        "model.head_dim=8",
        "model.norm_groups=4",
        "representation.scale_batches=2",
        "trainer.max_steps=2",
        "trainer.max_epochs=-1",
        "trainer.precision=32-true",
        "~callbacks.sample_grid",
    ]
    result = train(compose_config("train", overrides, tmp_path))
    model = load_model(result["last_ckpt"])
    assert model.spec.channels == 4 and model.spec.image_size == (16, 16, 16)
    assert model.net.unet.cfg.in_channels == 32  # 4 modalities x 8 sub-bands
    scale = model.representation.to_dict()["scale"]
    assert len(scale) == 32 and all(s > 0 for s in scale)
    assert max(abs(s - 1.0) for s in scale) > 0.05  # estimated from the tree's cases, not the initial ones
    images, _, _ = generate_batch(model, [0], 0, "euler", 2, Conditions(None, None), 1.0, "fp32")
    assert images.shape == (1, 4, 16, 16, 16) and torch.isfinite(images).all()
