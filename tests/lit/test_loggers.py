"""TensorBoard next to CSV: scalars, sample pictures and training throughput reach the event files."""

import csv
import io

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli_helpers import TINY_2D, compose_config
from motfm.lit.throughput import Throughput
from motfm.train import train


def test_tensorboard_and_csv_get_scalars_images_and_throughput(tmp_path):
    cfg = compose_config(
        "train",
        [
            *TINY_2D,
            "logger=[csv,tensorboard]",
            "trainer.max_epochs=1",
            "trainer.log_every_n_steps=2",
            "callbacks.sample_grid.num_samples=4",
            "callbacks.sample_grid.steps=2",
        ],
        tmp_path,
    )
    train(cfg)
    (run,) = (tmp_path / "tensorboard").glob("version_*")
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "val/loss_ema", "train/images_per_s", "train/images_per_s_per_device"):
        assert tag in tags["scalars"], tags["scalars"]
    # 16 images / batch 4 = 4 batches, a window of 2 batches: 2 windows
    rates = events.Scalars("train/images_per_s")
    assert [r.step for r in rates] == [2, 4]
    assert all(np.isfinite(r.value) and r.value > 0 for r in rates)

    (picture,) = events.Images("samples")  # one per validation epoch
    assert picture.step == 4
    (png,) = (tmp_path / "samples").glob("*.png")
    shown = np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)).convert("L"))
    saved = np.asarray(Image.open(png).convert("L"))[::2, ::2]  # the PNG is enlarged twice
    np.testing.assert_array_equal(shown, saved)

    with open(next((tmp_path / "csv").glob("version_*/metrics.csv"))) as f:
        logged = [float(r["train/images_per_s"]) for r in csv.DictReader(f) if r.get("train/images_per_s")]
    assert len(logged) == 2 and min(logged) > 0


def test_throughput_counts_images_per_window_and_drops_windows_cut_by_validation():
    class Logger:
        def __init__(self):
            self.rows = []

        def log_metrics(self, metrics, step):
            self.rows.append((step, metrics))

    class Trainer:
        is_global_zero, world_size, global_step = True, 4, 0
        loggers = [Logger()]

    trainer, cb = Trainer(), Throughput(window=3)
    batch = {"image": np.zeros((5, 1, 8, 8))}
    for step in range(1, 8):
        if step == 5:
            cb.on_validation_start(trainer, None)  # cuts the second window after one batch
        cb.on_train_batch_start(trainer, None, batch, step)
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, None, batch, step)
    rows = trainer.loggers[0].rows
    assert [step for step, _ in rows] == [3, 7]
    for _, metrics in rows:
        assert metrics["train/images_per_s"] == pytest.approx(4 * metrics["train/images_per_s_per_device"])
    with pytest.raises(ValueError, match="window must be >= 1"):
        Throughput(window=0)
