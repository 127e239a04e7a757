import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from cli_helpers import CONF_DIR, TINY_2D, compose_config
from motfm.audit import audit, main
from motfm.checkpoint import read_checkpoint
from motfm.evaluation.errors import InputError
from motfm.train import train

# one optimiser step: the samples=... tests need a checkpoint (for its data config), not a good model
QUICK_TRAIN = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=1",
    "+trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "callbacks.sample_grid.num_samples=2",
    "callbacks.sample_grid.steps=1",
    "logger=none",
]
SPLITS = (
    "data.dataset.num_samples={train:60,val:60,test:60}"  # enough items for the statistics to mean something
)
FAST = ["extractor=random_conv", "closest_pairs=3", "batch_size=8", "load_batch_size=16"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return train(compose_config("train", [*TINY_2D, SPLITS, *QUICK_TRAIN], out))["last_ckpt"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def split_images(ckpt, split, n):
    data = instantiate(OmegaConf.create(read_checkpoint(ckpt)["motfm"]["config"]["data"]))
    ds = data.dataset(split)
    return torch.stack([ds[i]["image"] for i in range(n)])


def write_samples(folder, ckpt, images):
    """A sample folder as motfm.sample writes it: samples.npz and sampling.json naming the checkpoint."""
    folder.mkdir(parents=True)
    np.savez(folder / "samples.npz", images=images.numpy(), indices=np.arange(len(images)))
    (folder / "sampling.json").write_text(
        json.dumps({"ckpt_path": str(ckpt), "sampler": "euler", "steps": 1})
    )
    return folder


def run_audit(out_dir, cache_dir, *overrides):
    cfg = compose_config(
        "audit", [*FAST, f"out_dir={out_dir}", f"paths.cache_dir={cache_dir}", *overrides], out_dir
    )
    return audit(cfg)


def test_exact_copies_of_training_images_are_flagged(ckpt, cache_dir, tmp_path):
    train_images = split_images(ckpt, "train", 40)
    samples = write_samples(tmp_path / "copies", ckpt, train_images.flip(0))  # copies in another order
    result = run_audit(tmp_path / "out", cache_dir, f"samples={samples}")
    assert result["verdict"]["copying_suspected"] is True
    assert result["ckpt_path"] == str(ckpt) and result["num_samples"] == 40 and result["num_train"] == 60
    for name in ("features", "structure", "pixels"):
        space = result[name]
        assert space["copied"]["share"] == 1.0 and space["copied"]["p_value"] < 1e-10, name
        assert space["ratio"]["max"] == 0.0 and space["mann_whitney"]["z"] < -5, name
    for name in ("features", "structure"):
        assert result[name]["c_t"]["c_t"] < -3 and result[name]["authenticity"]["samples"] == 0.0
        assert result[name]["authenticity"]["heldout"] > 0.2
        assert any(r.startswith(f"{name}: ") for r in result["verdict"]["reasons"])
    # every sample's nearest training item is the one it copies
    assert result["per_sample"]["features_nearest_train"] == list(range(39, -1, -1))
    assert result["per_sample"]["structure_nearest_train"] == list(range(39, -1, -1))
    assert result["per_sample"]["pixel_distance"] == [0.0] * 40
    assert [(p["ratio"], p["pixel_distance"]) for p in result["closest_pairs"]] == [(0.0, 0.0)] * 3
    out = tmp_path / "out"
    assert json.loads((out / "audit.json").read_text())["verdict"]["copying_suspected"] is True
    assert "copying suspected: yes" in (out / "audit.md").read_text()
    with Image.open(out / "closest_pairs.png") as picture:
        assert picture.mode == "RGB" and picture.height > 3 * 32


def test_independent_real_images_are_not_flagged(ckpt, tmp_path):
    # the val split: drawn like the training images, never trained on -- what a perfect generator produces
    samples = write_samples(tmp_path / "val", ckpt, split_images(ckpt, "val", 60))
    first = run_audit(tmp_path / "first", tmp_path / "cache", f"samples={samples}")
    assert first["features_from_cache"] == {"train": False, "heldout": False}
    result = run_audit(tmp_path / "out", tmp_path / "cache", f"samples={samples}")
    assert result["verdict"] == {
        "copying_suspected": False,
        "reasons": [],
        "rule": {"spaces": ["features", "structure"], "c_t_below": -3.0, "copied_share_p_value_below": 1e-3},
    }
    for name in ("features", "structure"):
        space = result[name]
        assert space["copied"]["share"] < 0.1 and space["copied"]["p_value"] > 0.01, name
        assert abs(space["mann_whitney"]["z"]) < 3 and space["c_t"]["num_cells"] == 3, name
        assert space["ratio"]["min"] > 0.2, name
    # the second audit of the same data reads the training and held-out features from the cache
    assert result["features_from_cache"] == {"train": True, "heldout": True}
    assert result["features"] == first["features"]


def test_partial_copying_is_flagged_by_the_copied_share(ckpt, cache_dir, tmp_path):
    # a quarter of the samples are copies, the rest new images
    images = split_images(ckpt, "val", 60)
    images[:15] = split_images(ckpt, "train", 15)
    samples = write_samples(tmp_path / "mixed", ckpt, images)
    result = run_audit(tmp_path / "out", cache_dir, f"samples={samples}", "pixel_space=false")
    for name in ("features", "structure"):
        copied = result[name]["copied"]
        # the 15 copies, and perhaps a new image that happens to be that close (expected 45 / 61 of one)
        assert 15 <= copied["count"] <= 17 and copied["p_value"] < 1e-3, name
    assert result["verdict"]["copying_suspected"]
    assert result["pixels"] is None and "pixel_distance" not in result["per_sample"]


def test_cli_on_the_fly_end_to_end(ckpt, cache_dir, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "motfm.audit", f"ckpt_path={ckpt}", "num_samples=6", "steps=1", *FAST]
    cmd += [f"hydra.run.dir={out}", f"paths.cache_dir={cache_dir}", "num_heldout=20", "num_train=30"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(CONF_DIR))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "audit.json").read_text())
    assert result["generation"]["sampler"] == "euler" and result["generation"]["nfe"] == 1
    assert (result["num_samples"], result["num_heldout"], result["num_train"]) == (6, 20, 30)
    assert isinstance(result["verdict"]["copying_suspected"], bool)
    assert result["features"]["c_t"]["num_cells"] == 1  # 6 samples: one cell, C_T = global z
    assert result["structure_size"] == 16 and len(result["per_sample"]["structure_distance"]) == 6
    assert any("first 30 of 60 training items" in n for n in result["notes"])
    assert (out / "audit.md").is_file() and (out / "closest_pairs.png").is_file()


def test_bad_inputs_end_with_one_line_and_write_nothing(ckpt, cache_dir, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    cfg = compose_config("audit", [f"samples={missing}", f"out_dir={tmp_path / 'a'}"], tmp_path / "a")
    with pytest.raises(SystemExit) as exit_info:
        main.__wrapped__(cfg)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error:") and str(missing) in message and "\n" not in message
    wrong = write_samples(tmp_path / "wrong", ckpt, torch.zeros(4, 1, 16, 16))
    with pytest.raises(InputError, match=r"wrong.*\(1, 16, 16\).*\(1, 32, 32\)"):
        run_audit(tmp_path / "b", cache_dir, f"samples={wrong}")
    with pytest.raises(InputError, match="must differ"):
        run_audit(tmp_path / "c", cache_dir, f"samples={wrong}", "heldout_split=train")
    for out in (tmp_path / "a", tmp_path / "b", tmp_path / "c"):
        assert not any((out / name).exists() for name in ("audit.json", "audit.md", "closest_pairs.png"))
