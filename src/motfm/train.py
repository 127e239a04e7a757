"""Train a model: ``python -m motfm.train [method=fm|ddpm|...] [model=unet3d] [data=brain_phantom] [...]``.

Hydra composes ``conf/train.yaml`` with the groups method / model / data / coupling / trainer /
logger / callbacks / paths / experiment. The run's folder (``outputs/train/<date>/<time>`` by
default) holds the resolved config, checkpoints (``checkpoints/last.ckpt``), sample pictures and logs.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from motfm.checkpoint import read_checkpoint
from motfm.cli import readable_errors
from motfm.data.datamodule import MotfmDataModule, collate
from motfm.io.atomic import write_json
from motfm.lit.module import GenerativeModule
from motfm.representation import Representation
from motfm.runtime import trainer_precision
from motfm.sweeps import trial_value
from motfm.validate import resolve_resume, validate_train_config

log = logging.getLogger(__name__)

CONFIG_PATH = "../../conf"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured and return the final metrics and the checkpoint path.

    Args:
        cfg: the composed configuration.

    Returns:
        ``{"metrics": {...}, "last_ckpt": path or None, "output_dir": path, "global_step": int}``, also
        written to ``result.json`` in the run folder (rank 0).
    """
    validate_train_config(cfg)
    ckpt_path = resolve_resume(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # Lightning would print to stderr
    log.info("seed %d", cfg.seed)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    spec = datamodule.spec
    log.info("data: %s", spec)
    module = GenerativeModule.from_config(cfg, spec)
    if not ckpt_path:  # a resumed run restores the representation's statistics from its checkpoint
        fit_representation(module.representation, datamodule, cfg.get("init_ckpt"))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    if not loggers:  # logger=none: there is nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    precision = trainer_precision(cfg.trainer.precision, cfg.trainer.accelerator, spec.spatial_dims)
    log.info("training precision %s: %s", precision.name, precision.reason)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision.name
    )
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        if ckpt_path:
            log.info("resuming from %s", ckpt_path)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        for lg in loggers:
            lg.finalize("success")
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()
    ckpt_cb = trainer.checkpoint_callback
    last = getattr(ckpt_cb, "last_model_path", None) if ckpt_cb is not None else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("final metrics: %s", metrics)
    if last:
        log.info("last checkpoint: %s", last)
    result = {
        "metrics": metrics,
        "last_ckpt": last or None,
        "output_dir": cfg.paths.output_dir,
        "global_step": trainer.global_step,
    }
    if trainer.is_global_zero:
        write_json(Path(cfg.paths.output_dir) / "result.json", result)
    return result


def fit_representation(
    representation: Representation, datamodule: MotfmDataModule, init_ckpt: str | None = None
) -> None:
    """Estimate a representation's data statistics (band scales) from the training split, once.

    Reads the first ``representation.scale_batches`` batches of the training split in index order (no
    shuffling), so every rank of a DDP run, and every rerun, estimates the same numbers. A run initialised
    from a checkpoint (``init_ckpt``, e.g. a reflow student from its teacher) whose representation has the
    same form takes that checkpoint's statistics instead: its weights were trained on them.
    """
    if not representation.needs_fit:
        return
    if init_ckpt:
        stored = read_checkpoint(init_ckpt)["motfm"].get("representation") or {}
        form = ("kind", "levels", "band_scale")
        if all(stored.get(k) == representation.to_dict().get(k) for k in form):
            representation.load_dict(stored)
            log.info("representation statistics taken from init_ckpt %s", init_ckpt)
            return
    loader = DataLoader(
        datamodule.dataset("train"), batch_size=datamodule.batch_size, shuffle=False, collate_fn=collate
    )
    batches = itertools.islice(loader, representation.scale_batches)
    representation.fit(batch["image"] for batch in batches)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@readable_errors
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``optimized_metric`` for sweepers (see :func:`motfm.sweeps.trial_value`)."""
    return trial_value(train(cfg)["metrics"], cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
