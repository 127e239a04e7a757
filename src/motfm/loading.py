"""Rebuild a trained model (network + objective) from a checkpoint's own configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import OmegaConf

from motfm.checkpoint import CheckpointError, load_weights, read_checkpoint
from motfm.data.base import DataSpec
from motfm.nn.velocity import VelocityNet
from motfm.objectives.base import Objective
from motfm.objectives.flow_matching import FlowMatching
from motfm.representation import PixelRepresentation, Representation, representation_from_dict

# Model options that do not alter the architecture, so they may change at sampling time.
RUNTIME_MODEL_OPTIONS = (
    "attention_backend",
    "conditioning_scale",
    "channels_last",
    "activation_checkpointing",
)


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint, with the objective it was trained with.

    Attributes:
        net: the velocity network (EMA weights unless asked otherwise), in eval mode.
        objective: the method (flow matching, diffusion, ...), which owns the samplers.
        spec: the data description it was trained on (images; the network sees
            ``representation.coeff_spec(spec)``).
        config: the resolved training configuration.
        path: where it came from.
        global_step: optimiser steps it was trained for.
        representation: where the flow runs (pixels, or wavelet coefficients with their band scales).
    """

    net: VelocityNet
    objective: Objective
    spec: DataSpec
    config: dict[str, Any]
    path: Path
    global_step: int
    representation: Representation | None = None

    def __post_init__(self) -> None:
        if self.representation is None:
            self.representation = PixelRepresentation(self.spec)


def read_representation(
    stored: dict[str, Any] | None, spec: DataSpec, path: str | os.PathLike[str]
) -> Representation:
    """The representation a checkpoint or exported model recorded (none recorded: pixels).

    Raises:
        CheckpointError: naming the file when the record is malformed.
    """
    try:
        return representation_from_dict(stored, spec)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: malformed 'representation' ({err})") from None


def check_targets(config: Any, path: str | os.PathLike[str], key: str = "config") -> None:
    """Every ``_target_`` in ``config`` must name an object of the motfm package.

    A stored config is instantiated with Hydra, which calls whatever ``_target_`` names; limiting it to
    motfm's own builders keeps a crafted checkpoint or ``config.json`` from running other code.

    Raises:
        CheckpointError: naming the file and the first foreign target.
    """
    if isinstance(config, dict):
        target = config.get("_target_")
        if target is not None and not (isinstance(target, str) and target.startswith("motfm.")):
            raise CheckpointError(
                f"{path}: {key}._target_={target!r} is not a motfm object; refusing to build it"
            )
        for k, v in config.items():
            check_targets(v, path, f"{key}.{k}")
    elif isinstance(config, list | tuple):
        for i, v in enumerate(config):
            check_targets(v, path, f"{key}[{i}]")


def build_objective(config: dict[str, Any], path: str | os.PathLike[str] = "config") -> Objective:
    """The objective of a (resolved) training config; flow matching for configs older than ``method``."""
    method = config.get("method")
    if method is None:
        return FlowMatching()
    check_targets(method, path, "method")
    try:
        objective = hydra.utils.instantiate(OmegaConf.create(method))
    except Exception as err:  # Hydra wraps the cause in InstantiationException
        raise CheckpointError(f"{path}: cannot rebuild the training method ({err})") from err
    if not isinstance(objective, Objective):
        raise CheckpointError(f"{path}: 'method' does not describe a motfm objective")
    return objective


def build_model(
    config: dict[str, Any],
    spec: DataSpec,
    path: str | os.PathLike[str],
    model_overrides: dict[str, Any] | None = None,
    representation: Representation | None = None,
) -> tuple[VelocityNet, Objective]:
    """Rebuild the (untrained) network and the objective of a stored training configuration.

    Args:
        config: the resolved training config, or any dict with ``model`` and optionally ``method``.
        spec: the data description the model was sized from.
        path: the file the config came from (named in errors).
        model_overrides: model options to change; only :data:`RUNTIME_MODEL_OPTIONS`, which do not alter the
            architecture, may differ from the stored config.
        representation: where the flow runs (default pixels); the network is built on its coefficients.

    Returns:
        ``(net, objective)``.

    Raises:
        CheckpointError: an override that changes the architecture, a target outside motfm, or a config that
            does not build.
    """
    model_cfg = dict(config["model"])
    for key, value in (model_overrides or {}).items():
        if key not in RUNTIME_MODEL_OPTIONS and model_cfg.get(key) != value:
            raise CheckpointError(
                f"{path}: model.{key}={value!r} contradicts the checkpoint's {model_cfg.get(key)!r}; "
                f"only {sorted(RUNTIME_MODEL_OPTIONS)} may change at sampling time"
            )
        model_cfg[key] = value
    model_cfg.update(base_ckpt=None, freeze_base=False)  # every weight comes from the stored weights
    check_targets(model_cfg, path, "model")
    objective = build_objective(config, path)
    representation = representation if representation is not None else PixelRepresentation(spec)
    factory = hydra.utils.instantiate(OmegaConf.create(model_cfg), _partial_=True)
    net: VelocityNet = factory(
        spec=representation.coeff_spec(spec), **objective.net_kwargs(), **representation.net_kwargs()
    )
    return net, objective


def load_model(
    path: str | os.PathLike[str],
    use_ema: bool = True,
    model_overrides: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Rebuild the network and objective of a checkpoint and load its weights.

    Args:
        path: a checkpoint written by ``python -m motfm.train``.
        use_ema: load the averaged weights (else the raw training weights).
        model_overrides: model options to change at load time; only :data:`RUNTIME_MODEL_OPTIONS`, which do
            not alter the architecture, may differ from the checkpoint.
        device: where to put the network.

    Returns:
        The :class:`LoadedModel`.
    """
    ckpt = read_checkpoint(path)
    meta = ckpt["motfm"]
    config = meta["config"]
    spec = DataSpec.from_dict(meta["data_spec"])
    representation = read_representation(meta.get("representation"), spec, path)
    net, objective = build_model(config, spec, path, model_overrides, representation)
    load_weights(net, path, use_ema, ckpt)
    net.eval().to(device)
    return LoadedModel(
        net=net,
        objective=objective,
        spec=spec,
        config=config,
        path=Path(path),
        global_step=int(ckpt.get("global_step", 0)),
        representation=representation.to(device),
    )
