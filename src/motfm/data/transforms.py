"""Array transforms of the real datasets: deterministic preprocessing (resizing, intensity scaling) applied
once before the cache, and random augmentation applied to training samples after it.

Images are channel-first numpy arrays ``[C, *spatial]``; masks are integer label maps ``[1, *spatial]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def as_size(size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """A spatial size tuple from one int (every axis) or one int per axis.

    Raises:
        ValueError: on a wrong number of entries or a size below 1.
    """
    out = (int(size),) * spatial_dims if isinstance(size, int) else tuple(int(s) for s in size)
    if len(out) != spatial_dims or min(out) < 1:
        raise ValueError(f"image_size {size!r} must be a positive int or {spatial_dims} positive ints")
    return out


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize an image ``[C, *spatial]`` to ``[C, *size]``.

    2D images use bilinear interpolation, antialiased when shrinking (an area average of the source pixels);
    3D volumes use trilinear interpolation. ``align_corners=False``: the output grid spans the same field of
    view, so output voxel ``o`` samples input position ``(o + 0.5) * in / out - 0.5`` along each axis.

    Returns:
        float32 ``[C, *size]``.
    """
    size = tuple(int(s) for s in size)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if tuple(x.shape[1:]) == size:
        return x.numpy()
    if x.ndim == 3:
        out = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    elif x.ndim == 4:
        out = F.interpolate(x[None], size=size, mode="trilinear", align_corners=False)
    else:
        raise ValueError(f"resize_image expects [C, H, W] or [C, D, H, W], got shape {tuple(x.shape)}")
    return out[0].numpy()


def resize_mask(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize a label map ``[1, *spatial]`` by nearest-neighbour sampling (pixel centres), keeping its dtype.

    The values stay integer and no new label appears; a structure thinner than the output pixel may vanish.
    """
    size = tuple(int(s) for s in size)
    if tuple(mask.shape[1:]) == size:
        return mask
    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    out = F.interpolate(x[None], size=size, mode="nearest-exact")
    return out[0].numpy().round().astype(mask.dtype)


def uint8_to_unit(image: np.ndarray) -> np.ndarray:
    """Map 8-bit grey values 0..255 to [-1, 1] (0 -> -1, 255 -> 1), float32."""
    return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).astype(np.float32)


def minmax_to_unit(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to [-1, 1], clipping outside values; a constant image maps to -1."""
    scale = 2.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((np.asarray(image, dtype=np.float32) - lo) * scale - 1.0, -1.0, 1.0).astype(np.float32)


class Augment:
    """Random flips and intensity jitter for training samples (applied after the cache, off by default).

    Flip only along axes where a mirrored image is still anatomically plausible: the left-right axis of a
    brain volume (axis 0, ``D``, the first NIfTI axis ``i`` of MSD/BraTS) or the lateral axis of an
    echocardiogram (axis 1, ``W``; a mirrored apical view is the other display convention). The image and its
    mask are flipped together; ``meta`` (affine, spacing) describes the unflipped sample.

    Args:
        flip_axes: spatial axes (0-based over ``*spatial``) that may be flipped, each independently.
        flip_prob: probability of flipping each axis.
        intensity_jitter: ``j``: the image becomes ``clip(x * (1 + a) + b, -1, 1)`` with ``a, b ~ U(-j, j)``.
        seed: offset added to the worker seed of the generator.
    """

    def __init__(
        self,
        flip_axes: Sequence[int] = (),
        flip_prob: float = 0.5,
        intensity_jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"augment.flip_prob must be in [0, 1], got {flip_prob}")
        if not 0.0 <= intensity_jitter < 1.0:
            raise ValueError(f"augment.intensity_jitter must be in [0, 1), got {intensity_jitter}")
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.flip_prob = float(flip_prob)
        self.intensity_jitter = float(intensity_jitter)
        self.seed = int(seed)

    def __call__(self, sample: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Augment ``sample`` (a new dict; the input is not modified) with randomness from ``generator``."""
        image = sample["image"]
        spatial = image.ndim - 1
        out = dict(sample)
        dims = []
        for axis in self.flip_axes:
            if not 0 <= axis < spatial:
                raise ValueError(f"augment.flip_axes: axis {axis} out of range for {spatial} spatial dims")
            if torch.rand((), generator=generator) < self.flip_prob:
                dims.append(axis + 1)
        if dims:
            out["image"] = image.flip(dims)
            if "mask" in out:
                out["mask"] = out["mask"].flip(dims)
        if self.intensity_jitter > 0:
            a, b = (torch.rand(2, generator=generator) * 2 - 1) * self.intensity_jitter
            out["image"] = (out["image"] * (1 + a) + b).clamp(-1.0, 1.0)
        return out
