"""Shared models: a folder with ``model.safetensors`` and ``config.json``, loaded without unpickling anything.

Written by ``python -m motfm.export_model`` (:mod:`motfm.export_model`); read by :func:`load_pretrained`::

    import motfm
    gen = motfm.load_pretrained("exported/")
    x = gen.sample(16, steps=5, labels=[0, 1], seed=0)   # [16, C, *spatial] in [-1, 1]
    v = gen.velocity(x_t, t=0.5, labels=[0, 1])           # the network itself, in the model's own units

The network is rebuilt by Hydra-instantiating the stored model config (only motfm targets are accepted, see
:func:`motfm.loading.check_targets`), exactly as :func:`motfm.loading.load_model` rebuilds a checkpoint's,
and its weights are read from safetensors; the configuration is plain JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from motfm.checkpoint import CheckpointError, load_state
from motfm.conditions import Conditions
from motfm.data.base import DataSpec
from motfm.loading import LoadedModel, build_model, read_representation
from motfm.objectives.base import SamplerOptions
from motfm.sample import generate_batch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "motfm-pretrained"
FORMAT_VERSION = 1
DEFAULT_STEPS = 10


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``folder/config.json``.

    Raises:
        CheckpointError: naming the file when it is missing, not JSON, or lacks ``model`` / ``data_spec``.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (is {folder} a folder written by motfm.export_model?)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f'{path}: not a motfm model config (expected "format": "{FORMAT}")')
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {config.get('format_version')!r}, this motfm reads {FORMAT_VERSION}"
        )
    if not isinstance(config.get("model"), dict) or not isinstance(config.get("data_spec"), dict):
        raise CheckpointError(f"{path}: needs a 'model' object and a 'data_spec' object")
    try:
        DataSpec.from_dict(config["data_spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: malformed 'data_spec' ({type(err).__name__}: {err})") from None
    return config


def read_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a safetensors file (no pickle involved).

    Raises:
        CheckpointError: naming the file when it is missing or not a readable safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: cannot be read as safetensors ({type(err).__name__}: {err})"
        ) from None


class PretrainedGenerator:
    """A ready sampler over an exported model.

    Attributes:
        model: the network, objective and data description (a :class:`motfm.loading.LoadedModel`).
        config: the content of ``config.json``.
    """

    def __init__(self, model: LoadedModel, config: dict[str, Any]) -> None:
        self.model, self.config = model, config

    @property
    def spec(self) -> DataSpec:
        """What the model generates: channels, image size, classes, mask labels."""
        return self.model.spec

    @property
    def data_range(self) -> tuple[float, float]:
        """The intensity range of the model's own units: ``(-1, 1)`` for suite models, the training range of
        an imported MOTFM model (``(0, 1)`` for its default ``image_norm``)."""
        return tuple(getattr(self.model.objective, "data_range", (-1.0, 1.0)))

    @torch.inference_mode()
    def velocity(
        self,
        x: Tensor | np.ndarray,
        t: float | Sequence[float] | Tensor,
        labels: Sequence[int] | Tensor | None = None,
        masks: Tensor | np.ndarray | None = None,
    ) -> Tensor:
        """The network's output for ``x`` at time ``t``, in the model's own units (:attr:`data_range`).

        What a flow model integrates from noise (t = 0) to data (t = 1); the same numbers the network of an
        imported model's origin gives for the same inputs (the original MOTFM code's ``MergedModel(x, t,
        cond=one_hot(labels)[:, None], masks=labels_map / (K - 1))``), so any import, or any model, can be
        checked against where it came from.

        Args:
            x: states ``[B, C, *spatial]`` (float32).
            t: time in [0, 1], a scalar or ``[B]``.
            labels: class labels ``[B]`` (class-conditional models; leave out for the null token where the
                model has one).
            masks: integer label maps ``[B, 1, *spatial]`` or ``[B, *spatial]`` (mask-conditional models).

        Returns:
            The velocity ``[B, C, *spatial]`` float32, on the CPU.

        Raises:
            ValueError: inputs of the wrong shape, or conditions the model does not take.
        """
        net = self.model.net
        device = next(net.parameters()).device
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, dtype=torch.float32).to(device)
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        cond = None if labels is None else torch.as_tensor(labels, dtype=torch.long).reshape(-1).to(device)
        mask = None
        if masks is not None:
            mask = torch.as_tensor(np.asarray(masks) if not isinstance(masks, Tensor) else masks).long()
            mask = (mask[:, None] if mask.ndim == self.spec.spatial_dims + 1 else mask).to(device)
        net.check_conditions(cond, mask)
        return net(x, t, cond=cond, mask=mask).float().cpu()

    @property
    def default_sampler(self) -> str:
        """The objective's default sampler (used when ``sample`` gets no ``sampler``)."""
        return self.model.objective.default_samplers[0]

    def sample(
        self,
        n: int,
        steps: int | None = None,
        labels: Sequence[int] | Tensor | None = None,
        masks: Tensor | np.ndarray | None = None,
        seed: int = 0,
        sampler: str | None = None,
        guidance_scale: float = 1.0,
        batch_size: int | None = None,
        options: SamplerOptions | None = None,
    ) -> Tensor:
        """Generate ``n`` samples; sample ``i`` depends only on ``(seed, i)`` and its condition.

        Args:
            n: number of samples.
            steps: sampler steps (default: the training config's ``sampling.steps``, else 10).
            labels: class labels (class-conditional models), cycled over the samples (sample i gets
                ``labels[i mod len]``).
            masks: integer label maps ``[m, 1, *spatial]`` or ``[m, *spatial]`` (mask-conditional models),
                cycled likewise.
            seed: the sampling seed.
            sampler: a sampler of the model's method (default: :attr:`default_sampler`).
            guidance_scale: classifier-free guidance weight (1: none).
            batch_size: samples per network call (default: all ``n`` at once).
            options: sampler options (time grid, tolerances).

        Returns:
            Images ``[n, C, *spatial]`` float32 in [-1, 1], on the CPU.

        Raises:
            ValueError: missing or invalid conditions, or a sampler / step count the method cannot use.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        model = self.model
        sampler = sampler or self.default_sampler
        if steps is None:
            steps = (self.config.get("sampling") or {}).get("steps") or DEFAULT_STEPS
        model.objective.check_sampler(sampler, steps)
        steps = steps if model.objective.needs_steps(sampler) else None
        conditions = self._conditions(labels, masks)
        chunk = batch_size or n
        parts = []
        for start in range(0, n, chunk):
            indices = list(range(start, min(start + chunk, n)))
            images, _, _ = generate_batch(
                model, indices, seed, sampler, steps, conditions, guidance_scale, "fp32", options
            )
            parts.append(images)
        return torch.cat(parts)

    def _conditions(self, labels: Any, masks: Any) -> Conditions:
        net, spec = self.model.net, self.model.spec
        label_t = None if labels is None else torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        mask_t = None
        if masks is not None:
            mask_t = torch.as_tensor(np.asarray(masks)).long()
            if mask_t.ndim == spec.spatial_dims + 1:
                mask_t = mask_t[:, None]
            if tuple(mask_t.shape[1:]) != (1, *spec.image_size):
                raise ValueError(
                    f"masks must be [m, 1, {', '.join(map(str, spec.image_size))}], got {tuple(mask_t.shape)}"
                )
        if net.num_classes and label_t is None:
            raise ValueError(f"this model is class-conditional: pass labels (0..{spec.num_classes - 1})")
        if net.num_mask_labels and mask_t is None:
            raise ValueError(
                f"this model is mask-conditional: pass masks (labels 0..{spec.num_mask_labels - 1})"
            )
        if not net.num_classes and label_t is not None:
            raise ValueError("this model is not class-conditional: leave labels out")
        if not net.num_mask_labels and mask_t is not None:
            raise ValueError("this model is not mask-conditional: leave masks out")
        if (label_t is not None and label_t.numel() == 0) or (mask_t is not None and mask_t.shape[0] == 0):
            raise ValueError("labels / masks must not be empty")
        net.check_conditions(label_t, mask_t)
        return Conditions(label_t, mask_t, "explicit")


def load_pretrained(
    folder: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    model_overrides: dict[str, Any] | None = None,
) -> PretrainedGenerator:
    """Load a model written by ``python -m motfm.export_model`` (safetensors + JSON; no pickle).

    Args:
        folder: the exported folder (``model.safetensors``, ``config.json``).
        device: where to put the network.
        model_overrides: runtime model options (``attention_backend``, ``conditioning_scale``,
            ``channels_last``).

    Returns:
        A :class:`PretrainedGenerator`: ``gen.sample(n, steps=..., labels=..., masks=..., seed=...)``.

    Raises:
        CheckpointError: naming the file when the folder is incomplete or its files are malformed.
    """
    folder = Path(folder)
    config = read_config(folder)
    config_path = folder / CONFIG_FILE
    spec = DataSpec.from_dict(config["data_spec"])
    stored = {"model": config["model"], "method": config.get("method")}
    representation = read_representation(config.get("representation"), spec, config_path)
    net, objective = build_model(stored, spec, config_path, model_overrides, representation)
    load_state(net, read_weights(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE)
    net.eval().to(device)
    model = LoadedModel(
        net=net,
        objective=objective,
        spec=spec,
        config=stored,
        path=folder,
        global_step=int((config.get("training") or {}).get("global_step", 0)),
        representation=representation.to(device),
    )
    return PretrainedGenerator(model, config)
