"""Seeded data augmentation for the downstream networks: random translation (image and label map together)
and intensity jitter, all drawn from a caller's :class:`torch.Generator`, so a seed fixes every draw."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Augment:
    """Augmentation settings.

    Attributes:
        shift: largest translation per spatial axis in pixels (integer; uniform in ``[-shift, shift]``);
            images are padded with -1 (black) and label maps with 0 (background).
        gain: intensity gain jitter: ``x -> g (x + 1) - 1 + b`` with ``g`` uniform in ``[1 - gain, 1 + gain]``
            (black stays black), then clamped to [-1, 1].
        bias: intensity offset jitter, ``b`` uniform in ``[-bias, bias]``.
    """

    shift: int = 0
    gain: float = 0.0
    bias: float = 0.0

    def __post_init__(self) -> None:
        if self.shift < 0 or self.gain < 0 or self.bias < 0 or self.gain >= 1:
            raise ValueError(f"augmentation needs shift, bias >= 0 and 0 <= gain < 1, got {self}")


def augment(
    images: Tensor, masks: Tensor, settings: Augment, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Augment a batch.

    Args:
        images: float ``[B, C, *spatial]`` in [-1, 1].
        masks: int64 ``[B, 1, *spatial]``.
        settings: the augmentation.
        generator: the source of every random draw (CPU).

    Returns:
        The augmented images and masks, same shapes and dtypes.
    """
    batch, dims = images.shape[0], images.ndim - 2
    if settings.shift > 0:
        s = settings.shift
        offsets = torch.randint(0, 2 * s + 1, (batch, dims), generator=generator)
        pad = (s, s) * dims
        padded_images = F.pad(images, pad, value=-1.0)
        padded_masks = F.pad(masks, pad, value=0)
        spatial = images.shape[2:]
        images = torch.stack([_crop(padded_images[b], offsets[b], spatial) for b in range(batch)])
        masks = torch.stack([_crop(padded_masks[b], offsets[b], spatial) for b in range(batch)])
    if settings.gain > 0 or settings.bias > 0:
        view = (batch,) + (1,) * (images.ndim - 1)
        gain = 1 + settings.gain * (2 * torch.rand(batch, generator=generator) - 1)
        bias = settings.bias * (2 * torch.rand(batch, generator=generator) - 1)
        images = (gain.view(view) * (images + 1) - 1 + bias.view(view)).clamp(-1, 1)
    return images, masks


def _crop(x: Tensor, start: Tensor, size: torch.Size) -> Tensor:
    """``x[:, start_0 : start_0 + size_0, ...]`` for a ``[C, *spatial]`` tensor."""
    index = tuple(slice(int(a), int(a) + n) for a, n in zip(start, size))
    return x[(slice(None), *index)]
