"""Start-up checks of a training configuration: every problem is one clear line, before any training.

Architecture and data compatibility (image size vs. downsampling, channels vs. GroupNorm groups,
conditioning the data cannot provide) are checked where the network is built
(:func:`motfm.nn.velocity.build_velocity_net`); this module checks the rest of the run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from motfm.objectives.base import Objective, SamplerError


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


def check_sampler(objective: Objective, sampler: str, steps: int | None, key: str) -> None:
    """A sampler of the objective with a valid number of steps."""
    try:
        objective.check_sampler(sampler, steps)
    except SamplerError as err:
        raise ConfigError(f"{key}: {err}") from None


def check_writable(folder: str | Path, key: str) -> None:
    """The folder exists (or can be created) and a file can be written in it."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"{key}={path} cannot be written: {err.strerror or err}") from err


def resolve_resume(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: ``ckpt_path`` (``last`` = this run folder's last checkpoint), or
    with ``resume=auto`` the last checkpoint of the run folder when there is one. Never implicit."""
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        if not last.is_file():
            raise ConfigError(
                f"ckpt_path=last but {last} does not exist (set hydra.run.dir to the run to resume)"
            )
        return str(last)
    if ckpt is not None:
        if not Path(ckpt).is_file():
            raise ConfigError(f"ckpt_path={ckpt}: file not found")
        return str(ckpt)
    resume = cfg.get("resume")
    if resume not in (None, "auto"):
        raise ConfigError(f"resume={resume!r}: expected null or 'auto'")
    return str(last) if resume == "auto" and last.is_file() else None


def validate_train_config(cfg: DictConfig) -> None:
    """Check the parts of a training config that do not need the data or the network.

    Raises:
        ConfigError: naming the first invalid key.
    """
    if not 0 <= cfg.method.get("p_uncond", 0.0) < 1:
        raise ConfigError(f"method.p_uncond={cfg.method.p_uncond} must be in [0, 1)")
    try:
        objective = instantiate(cfg.method)
    except Exception as err:  # Hydra wraps the objective's own ValueError
        raise ConfigError(f"method: {err.__cause__ or err}") from None
    check_sampler(objective, cfg.sampling.sampler, cfg.sampling.steps, "sampling")
    callbacks = cfg.get("callbacks") or {}
    for name in ("sample_grid", "metrics"):
        cb = callbacks.get(name)
        if cb is None:
            continue
        for steps in cb.steps if name == "metrics" else [cb.steps]:
            check_sampler(objective, cb.sampler, steps, f"callbacks.{name}")
        if cb.get("guidance_scale", 1.0) < 0:
            raise ConfigError(f"callbacks.{name}.guidance_scale={cb.guidance_scale} must be >= 0")
    if not 0 <= cfg.ema_decay < 1:
        raise ConfigError(f"ema_decay={cfg.ema_decay} must be in [0, 1)")
    if cfg.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr={cfg.optimizer.lr} must be > 0")
    if cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be >= 1")
    check_writable(cfg.paths.output_dir, "paths.output_dir")
