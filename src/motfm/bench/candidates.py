"""What the benchmark measures of a model: one network evaluation, Euler sampling, a training step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from motfm.data.base import DataSpec


@dataclass
class Candidate:
    """A model ready to be timed; every callable runs at the candidate's precision.

    Attributes:
        name: ``motfm`` or ``reference``.
        params: number of parameters.
        forward: one network evaluation on the batch (inference mode).
        sample: ``sample(nfe)`` draws the batch's images with ``nfe`` Euler steps.
        train_step: forward, backward and optimiser step on the batch.
        notes: how the candidate differs from the other (architecture, attention kernel, ...).
    """

    name: str
    params: int
    forward: Callable[[], Any]
    sample: Callable[[int], Any]
    train_step: Callable[[], Any]
    notes: list[str] = field(default_factory=list)


def random_batch(spec: DataSpec, batch_size: int, device: torch.device, seed: int = 0) -> dict[str, Tensor]:
    """A training batch of the data's shape: images in [-1, 1], labels and label maps drawn uniformly.

    Returns:
        ``image`` ``[B, C, *S]`` float32, ``label`` ``[B]`` int64, ``mask`` ``[B, 1, *S]`` int64.
    """
    g = torch.Generator().manual_seed(seed)
    size = (batch_size, spec.channels, *spec.image_size)
    return {
        "image": torch.randn(size, generator=g).clamp(-1, 1).to(device),
        "label": torch.randint(0, max(spec.num_classes, 1), (batch_size,), generator=g).to(device),
        "mask": torch.randint(
            0, max(spec.num_mask_labels, 1), (batch_size, 1, *spec.image_size), generator=g
        ).to(device),
    }
