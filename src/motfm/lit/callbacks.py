"""Lightning callbacks: pictures of samples during training (PNG files, W&B, TensorBoard)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from motfm.io.images import sample_picture, save_png, with_masks


def validation_conditions(
    trainer: L.Trainer, module: Any, num_samples: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Labels ``[N]`` and masks ``[N, 1, *spatial]`` of the first validation samples (cycled), as needed."""
    need_label, need_mask = module.net.num_classes > 0, module.net.num_mask_labels > 0
    if not (need_label or need_mask):
        return None, None
    ds = trainer.datamodule.dataset("val")
    items = [ds[i % len(ds)] for i in range(num_samples)]
    labels = torch.stack([s["label"] for s in items]).to(module.device) if need_label else None
    masks = torch.stack([s["mask"] for s in items]).to(module.device) if need_mask else None
    return labels, masks


class SampleGrid(L.Callback):
    """Every ``every_n_epochs`` validation epochs, sample fixed seeds with the EMA weights and save a PNG.

    For 3D models the picture shows the three orthogonal mid slices of each volume; for
    mask-conditioned models each mask is drawn above its sample. The picture goes to
    ``<dirpath>/epoch_E-step_S.png`` and, under the tag ``samples``, to the W&B and TensorBoard loggers
    that are active.

    Args:
        dirpath: folder of the pictures.
        num_samples: images per grid.
        steps: sampler steps.
        sampler: a sampler of the model's method (an ODE solver for flow matching).
        seed: sampling seed (the same images every time, so progress is comparable).
        guidance_scale: classifier-free guidance weight for class-conditional models.
        every_n_epochs: sampling period in validation epochs.
        upscale: enlarge the picture this many times.
    """

    def __init__(
        self,
        dirpath: str,
        num_samples: int = 16,
        steps: int = 10,
        sampler: str = "euler",
        seed: int = 0,
        guidance_scale: float = 1.0,
        every_n_epochs: int = 1,
        upscale: int = 2,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.num_samples, self.steps, self.sampler, self.seed = num_samples, steps, sampler, seed
        self.guidance_scale, self.every_n_epochs, self.upscale = guidance_scale, every_n_epochs, upscale
        self.last_path: Path | None = None

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Sample and save the grid."""
        if trainer.sanity_checking or (trainer.current_epoch % self.every_n_epochs):
            return
        labels, masks = validation_conditions(trainer, pl_module, self.num_samples)
        result = pl_module.generate(
            list(range(self.num_samples)),
            self.seed,
            self.sampler,
            self.steps,
            labels,
            masks,
            self.guidance_scale,
        )
        images = result.x if masks is None else with_masks(result.x, masks, pl_module.net.num_mask_labels)
        picture = sample_picture(images)
        path = self.dirpath / f"epoch_{trainer.current_epoch:03d}-step_{trainer.global_step:06d}.png"
        save_png(picture, path, self.upscale)
        self.last_path = path
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="samples", images=[str(path)], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                layout = "HW" if picture.ndim == 2 else "HWC"
                logger.experiment.add_image("samples", picture, trainer.global_step, dataformats=layout)


class ComputeBudget(L.Callback):
    """Stop training once this process has used ``cpu_seconds`` of CPU time (``time.process_time``).

    Equal compute for every arm of a comparison even when the machine is shared: unlike a wall-clock limit
    (``trainer.max_time``) it does not charge a run for time other processes took. With one thread per run it
    is the run's core-seconds. ``None`` disables it. The CPU time spent is saved in checkpoints, so a resumed
    run spends only what is left of its budget.

    Args:
        cpu_seconds: the budget.
    """

    def __init__(self, cpu_seconds: float | None = None) -> None:
        self.cpu_seconds = cpu_seconds
        self.spent_before = 0.0  # CPU seconds of the runs this one resumes
        self.start = time.process_time()

    def used(self) -> float:
        """CPU seconds spent on training so far, earlier runs of a resumed training included."""
        return self.spent_before + time.process_time() - self.start

    def state_dict(self) -> dict[str, float]:
        """What a checkpoint keeps: the CPU seconds spent so far."""
        return {"cpu_seconds_used": self.used()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the count of a resumed run (Lightning calls this before ``on_train_start``)."""
        self.spent_before = float(state_dict.get("cpu_seconds_used", 0.0))

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        """The budget counts from here (data and network set-up excluded, as for every arm)."""
        self.start = time.process_time()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Ask the trainer to stop when the budget is spent (checked after every step)."""
        used = self.used()
        if self.cpu_seconds is not None and used >= self.cpu_seconds:
            trainer.should_stop = True
        pl_module.log("train/cpu_seconds", used)
