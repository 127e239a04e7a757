"""`python -m motfm.train data=<name>` on fixture datasets written in each real layout."""

import pytest

from cli_helpers import TINY_2D, TINY_3D, compose_config
from data.fixtures import copy_dicom_files, write_camus, write_legacy_pickle, write_msd
from motfm.checkpoint import read_checkpoint
from motfm.train import train

COMMON = ["data.num_workers=0", "trainer.max_epochs=1", "+trainer.limit_val_batches=1"]
TINY_2D_REAL = [o for o in TINY_2D if not o.startswith("data.dataset.")]
TINY_3D_REAL = [o for o in TINY_3D if not o.startswith("data") or o.startswith("data.batch_size")]


def run(tmp_path, overrides):
    cfg = compose_config(
        "train", [*overrides, *COMMON, f"data.dataset.cache_dir={tmp_path / 'cache'}"], tmp_path / "run"
    )
    result = train(cfg)
    return read_checkpoint(result["last_ckpt"])


@pytest.mark.parametrize("release", ["nifti", "mhd"])
def test_train_on_camus(tmp_path, release):
    write_camus(tmp_path / "CAMUS", n_patients=10, size=(40, 32), release=release)
    ckpt = run(
        tmp_path,
        [
            *TINY_2D_REAL,
            "data=camus",
            f"data.dataset.root={tmp_path / 'CAMUS'}",
            "data.dataset.image_size=32",
            "model.conditioning=[class,mask]",
        ],
    )
    spec = ckpt["motfm"]["data_spec"]
    assert spec["num_classes"] == 4 and spec["num_mask_labels"] == 4 and spec["image_size"] == [32, 32]


def test_train_on_msd_brain(tmp_path):
    write_msd(tmp_path / "Task01", n_cases=10)
    ckpt = run(
        tmp_path,
        [
            "model=unet3d",
            *TINY_3D_REAL[1:],
            "data=msd_brain",
            f"data.dataset.root={tmp_path / 'Task01'}",
            "data.dataset.image_size=[16,16,16]",
            "model.conditioning=[mask]",
        ],
    )
    assert ckpt["motfm"]["data_spec"]["image_size"] == [16, 16, 16]


def test_train_on_dicom_folder(tmp_path):
    pytest.importorskip("pydicom")
    copy_dicom_files(tmp_path / "dicom")
    ckpt = run(
        tmp_path,
        [
            *TINY_2D_REAL,
            "data=dicom",
            f"data.dataset.root={tmp_path / 'dicom'}",
            "data.dataset.image_size=32",
            "data.batch_size=2",
            "data.dataset.group_by=file",
        ],
    )
    assert ckpt["motfm"]["data_spec"]["spatial_dims"] == 2


def test_train_on_legacy_pickle(tmp_path):
    write_legacy_pickle(tmp_path / "data.pkl", size=32)
    ckpt = run(
        tmp_path,
        [
            *TINY_2D_REAL,
            "data=pickle",
            f"data.dataset.root={tmp_path / 'data.pkl'}",
            "data.dataset.trust_pickle=true",
            "model.conditioning=[class,mask]",
        ],
    )
    assert ckpt["motfm"]["data_spec"]["num_classes"] == 4
