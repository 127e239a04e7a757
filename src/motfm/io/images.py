"""Pictures of samples: PNG grids of 2D images and montages of the mid slices of 3D volumes."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from motfm.io.atomic import atomic_path


def to_uint8(images: Tensor) -> np.ndarray:
    """Map values in [-1, 1] to uint8 [0, 255] (clamping outside values), channel-last numpy."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.cpu().numpy()


def mid_slices(volumes: Tensor) -> Tensor:
    """The three orthogonal mid slices of each volume side by side.

    Args:
        volumes: ``[B, C, D, H, W]``.

    Returns:
        ``[B, C, S, 3 * S]`` with ``S = max(D, H, W)`` (slices padded with -1 to a square).
    """
    b, c, d, h, w = volumes.shape
    s = max(d, h, w)
    planes = [volumes[:, :, d // 2], volumes[:, :, :, h // 2], volumes[:, :, :, :, w // 2]]
    out = torch.full((b, c, s, 3 * s), -1.0, dtype=volumes.dtype, device=volumes.device)
    for i, p in enumerate(planes):
        ph, pw = p.shape[-2:]
        out[:, :, :ph, i * s : i * s + pw] = torch.flip(p, dims=[-2])
    return out


def make_grid(images: Tensor, ncol: int | None = None, pad: int = 2) -> Tensor:
    """Tile images into one picture.

    Args:
        images: ``[B, C, H, W]`` in [-1, 1] (for volumes use :func:`mid_slices` first).
        ncol: images per row (default: about sqrt(B)).
        pad: pixels of padding (value -1) between images.

    Returns:
        ``[C, rows * (H + pad) + pad, ncol * (W + pad) + pad]``.
    """
    b, c, h, w = images.shape
    ncol = ncol or max(1, math.ceil(math.sqrt(b)))
    nrow = math.ceil(b / ncol)
    grid = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), -1.0, dtype=images.dtype)
    for i in range(b):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i].cpu()
    return grid


def sample_picture(samples: Tensor, ncol: int | None = None) -> np.ndarray:
    """A uint8 picture ``[H, W]`` (grey) or ``[H, W, 3]`` of 2D samples or of 3D samples' mid slices.

    Args:
        samples: ``[B, C, H, W]`` or ``[B, C, D, H, W]`` in [-1, 1]; only the first channel is shown
            unless there are exactly 3.
    """
    if samples.ndim == 5:
        samples = mid_slices(samples)
        ncol = ncol or max(1, round(math.sqrt(samples.shape[0]) / 2))
    if samples.shape[1] != 3:
        samples = samples[:, :1]
    grid = to_uint8(make_grid(samples, ncol))
    return grid[0] if grid.shape[0] == 1 else np.moveaxis(grid, 0, -1)


def save_png(picture: np.ndarray, path: str | os.PathLike[str], upscale: int = 1) -> None:
    """Write a uint8 picture as PNG atomically, optionally enlarged ``upscale`` times (nearest)."""
    img = Image.fromarray(picture)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def with_masks(samples: Tensor, masks: Tensor, num_labels: int) -> Tensor:
    """Put each conditioning mask above its sample, for pictures of mask-conditioned generation.

    Args:
        samples: ``[B, C, H, W]`` or ``[B, C, D, H, W]`` in [-1, 1].
        masks: int64 ``[B, 1, *spatial]`` label maps with values in ``0 .. num_labels - 1``.
        num_labels: number of mask labels (for the grey levels of the mask picture).

    Returns:
        ``[B, 1, 2H, W']`` images (mid slices for volumes) ready for :func:`sample_picture`.
    """
    mask_img = masks.float() / max(1, num_labels - 1) * 2 - 1
    samples = samples[:, :1].float().cpu()
    mask_img = mask_img.cpu()
    if samples.ndim == 5:
        samples, mask_img = mid_slices(samples), mid_slices(mask_img)
    return torch.cat([mask_img, samples], dim=-2)
