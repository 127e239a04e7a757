"""Training throughput (images per second), measured without synchronising the device."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class Throughput(L.Callback):
    """Log ``train/images_per_s`` and ``train/images_per_s_per_device`` each ``window`` batches.

    The count comes from the batch's shape (host metadata) and the time from the host clock at the two ends
    of a window, so nothing waits for the device: on a GPU the host runs ahead of the kernels by a bounded
    queue, an error that fades over a window of many batches. A window interrupted by validation is dropped,
    so validation and sampling time never lower the figure. ``train/images_per_s`` is the total over all
    processes: it assumes each trains on batches of the same size (the sampler gives ranks equal shards).

    Args:
        window: batches per measurement (e.g. ``trainer.log_every_n_steps``).
    """

    def __init__(self, window: int = 50) -> None:
        if window < 1:
            raise ValueError(f"throughput window must be >= 1, got {window}")
        self.window = window
        self._start: float | None = None
        self._images = self._batches = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """Open a window at its first batch."""
        if self._start is None:
            self._start, self._images, self._batches = time.perf_counter(), 0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the batch; at the end of a window, log the rates (process 0) and open the next window."""
        if self._start is None:
            return
        self._images += int(batch["image"].shape[0])
        self._batches += 1
        if self._batches < self.window:
            return
        per_device = self._images / max(time.perf_counter() - self._start, 1e-9)
        self._start = None
        if trainer.is_global_zero:
            metrics = {
                "train/images_per_s": per_device * trainer.world_size,
                "train/images_per_s_per_device": per_device,
            }
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Drop the open window: the time spent validating is not training time."""
        self._start = None
