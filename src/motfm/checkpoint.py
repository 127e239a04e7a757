"""Load a trained model from a checkpoint safely (``weights_only=True``) and rebuild it from the
checkpoint's own configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import OmegaConf

from motfm.data.base import DataSpec
from motfm.nn.velocity import VelocityNet


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, or not a motfm checkpoint."""


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint.

    Attributes:
        net: the velocity network (EMA weights unless asked otherwise), in eval mode.
        spec: the data description it was trained on.
        config: the resolved training configuration.
        path: where it came from.
        global_step: optimiser steps it was trained for.
    """

    net: VelocityNet
    spec: DataSpec
    config: dict[str, Any]
    path: Path
    global_step: int


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file with ``torch.load(weights_only=True)`` and check it is a motfm one.

    Raises:
        CheckpointError: naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(ckpt, dict) or "motfm" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a motfm training checkpoint (no 'motfm' section or 'state_dict')")
    meta = ckpt["motfm"]
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("config"), dict)
        or not isinstance(meta["config"].get("model"), dict)
        or not isinstance(ckpt["state_dict"], dict)
    ):
        raise CheckpointError(
            f"{path}: malformed motfm checkpoint "
            "(needs a 'motfm' dict with 'config.model', and a 'state_dict' dict)"
        )
    try:
        DataSpec.from_dict(meta["data_spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: malformed 'data_spec' in the checkpoint ({type(err).__name__}: {err})"
        ) from None
    return ckpt


def weights_under(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``state_dict`` whose keys start with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_model(
    path: str | os.PathLike[str],
    use_ema: bool = True,
    model_overrides: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Rebuild the network of a checkpoint and load its weights.

    Args:
        path: a checkpoint written by ``python -m motfm.train``.
        use_ema: load the averaged weights (else the raw training weights).
        model_overrides: model options to change at load time; only options that do not alter the
            architecture are allowed (``attention_backend``, ``conditioning_scale``, ``channels_last``).
        device: where to put the network.

    Returns:
        The :class:`LoadedModel`.
    """
    ckpt = read_checkpoint(path)
    meta = ckpt["motfm"]
    config = meta["config"]
    spec = DataSpec.from_dict(meta["data_spec"])
    model_cfg = dict(config["model"])
    allowed = {"attention_backend", "conditioning_scale", "channels_last"}
    for key, value in (model_overrides or {}).items():
        if key not in allowed and model_cfg.get(key) != value:
            raise CheckpointError(
                f"{path}: model.{key}={value!r} contradicts the checkpoint's {model_cfg.get(key)!r}; "
                f"only {sorted(allowed)} may change at sampling time"
            )
        model_cfg[key] = value
    model_cfg.update(base_ckpt=None, freeze_base=False)  # every weight comes from this checkpoint
    net: VelocityNet = hydra.utils.instantiate(OmegaConf.create(model_cfg), _partial_=True)(spec=spec)
    prefix = "ema.module." if use_ema else "net."
    state = weights_under(ckpt["state_dict"], prefix)
    if not state:
        raise CheckpointError(f"{path}: no weights under '{prefix}' in the checkpoint")
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the configured model: {err}") from err
    net.eval().to(device)
    return LoadedModel(
        net=net, spec=spec, config=config, path=Path(path), global_step=int(ckpt.get("global_step", 0))
    )
