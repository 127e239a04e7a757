"""Read motfm training checkpoints safely (``weights_only=True``) and check their structure.

Rebuilding a model from a checkpoint is :mod:`motfm.loading`'s job; this module needs no network code, so
that the network modules can read base checkpoints without an import cycle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from motfm.data_spec import DataSpec


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, or not a motfm checkpoint."""


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


def load_weights(
    module: torch.nn.Module,
    path: str | os.PathLike[str],
    use_ema: bool = True,
    ckpt: dict[str, Any] | None = None,
) -> None:
    """Load a checkpoint's (averaged) network weights into ``module``, which must have the same architecture.

    Args:
        module: the network.
        path: the checkpoint file (read unless ``ckpt`` is given; named in errors).
        use_ema: the averaged weights (else the raw training weights).
        ckpt: the checkpoint already read by :func:`read_checkpoint`.

    Raises:
        CheckpointError: naming the file when it is not a motfm checkpoint or its weights do not fit.
    """
    prefix = "ema.module." if use_ema else "net."
    state = weights_under((ckpt or read_checkpoint(path))["state_dict"], prefix)
    if not state:
        raise CheckpointError(f"{path}: no weights under '{prefix}' in the checkpoint")
    load_state(module, state, path)


def load_state(module: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Load ``state`` into ``module`` strictly, naming ``path`` when they do not fit.

    Raises:
        CheckpointError: an empty state, or weights of another architecture.
    """
    if not state:
        raise CheckpointError(f"{path}: no network weights found")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the configured model: {err}") from err
