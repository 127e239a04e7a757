import pytest
import torch

from cli_helpers import TINY_2D, TINY_3D, compose_config
from motfm.checkpoint import read_checkpoint
from motfm.train import train


@pytest.mark.parametrize(
    ("overrides", "conditioning"),
    [
        (TINY_2D, []),
        (TINY_2D, ["class", "mask"]),
        (TINY_3D, []),
        (TINY_3D, ["mask"]),
    ],
)
def test_fast_dev_run(tmp_path, overrides, conditioning):
    cond = "[" + ",".join(conditioning) + "]"
    cfg = compose_config(
        "train", [*overrides, f"model.conditioning={cond}", "+trainer.fast_dev_run=2"], tmp_path
    )
    result = train(cfg)
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))
    assert "val/loss_ema" in result["metrics"]


def test_short_run_writes_checkpoint_and_sample_grid(tmp_path):
    cfg = compose_config(
        "train", [*TINY_2D, "trainer.max_epochs=2", "callbacks.sample_grid.num_samples=4"], tmp_path
    )
    result = train(cfg)
    ckpt = read_checkpoint(result["last_ckpt"])
    assert ckpt["global_step"] == 8  # 16 samples / batch 4 x 2 epochs
    assert ckpt["motfm"]["data_spec"]["image_size"] == [32, 32]
    assert ckpt["motfm"]["config"]["model"]["channels"] == [8, 16]
    ema = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.module.")}
    raw = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    assert len(ema) == len(raw) > 0
    pictures = sorted((tmp_path / "samples").glob("*.png"))
    assert len(pictures) == 2


def test_unknown_conditioning_for_data_fails_before_training(tmp_path):
    cfg = compose_config(
        "train",
        [*TINY_2D, "model.conditioning=[class]", "data.dataset.num_samples={train:4,val:2,test:2}"],
        tmp_path,
    )
    cfg.model.conditioning = ["text"]
    with pytest.raises(ValueError, match="unknown conditioning"):
        train(cfg)
