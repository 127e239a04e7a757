"""Volume geometry of the MSD preprocessing: crop to a box, resample or pad to a target size, and the
voxel-to-voxel matrix that carries the source affine to the output grid (so generated volumes are written back
in the source's world space)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def resample(
    vol: np.ndarray, target: Sequence[int], keep_aspect: bool, pad_value: float, mode: str
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Resize ``vol`` ``[C, *spatial]`` into ``target``, optionally keeping the aspect ratio and padding.

    Args:
        vol: the array (any numeric dtype; ``nearest`` keeps label values exactly).
        target: output spatial size.
        keep_aspect: one scale factor for all axes (the largest that fits), the rest padded with ``pad_value``
            (centred); otherwise each axis is stretched to ``target``.
        pad_value: value of the padding.
        mode: ``trilinear`` (images) or ``nearest`` (label maps; pixel-centre ``nearest-exact`` sampling).

    Returns:
        ``(out [C, *target] float32, (ratio, pad))``: per axis, input voxels per output voxel and the padding
        before the data, the inputs of :func:`crop_resize_matrix`.
    """
    shape = np.array(vol.shape[1:])
    target = np.array(target)
    if keep_aspect:
        scale = float(np.min(target / shape))
        resized = np.clip(np.round(shape * scale).astype(int), 1, target)
    else:
        resized = target
    x = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None]
    if tuple(resized) != tuple(shape):
        kw = {"align_corners": False} if mode == "trilinear" else {}
        x = F.interpolate(
            x, size=tuple(int(s) for s in resized), mode="nearest-exact" if mode == "nearest" else mode, **kw
        )
    pad = (target - resized) // 2
    widths = []
    for p, t, r in zip(reversed(pad), reversed(target), reversed(resized)):  # F.pad wants the last axis first
        widths += [int(p), int(t - r - p)]
    x = F.pad(x, widths, value=pad_value)
    return x[0].numpy(), (shape / resized, pad)


def fit_box(box: Sequence[tuple[int, int]], target: Sequence[int]) -> list[tuple[int, int]]:
    """Shorten every ``[lo, hi)`` of ``box`` longer than ``target`` to ``target``, around its centre."""
    out = []
    for (lo, hi), t in zip(box, target):
        if hi - lo > t:
            lo += (hi - lo - t) // 2
            hi = lo + t
        out.append((lo, hi))
    return out


def pad_centred(
    vol: np.ndarray, target: Sequence[int], pad_value: float
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Pad ``vol`` ``[C, *spatial]`` (no side longer than ``target``) to ``target`` around its centre.

    Returns:
        ``(out [C, *target] float32, (ratio, pad))`` as :func:`resample` returns them (ratio 1: native).
    """
    shape = np.array(vol.shape[1:])
    target = np.array(target)
    pad = (target - shape) // 2
    out = np.full((vol.shape[0], *target), pad_value, dtype=np.float32)
    out[(slice(None), *(slice(p, p + n) for p, n in zip(pad, shape)))] = vol
    return out, (np.ones(len(shape)), pad)


def crop_resize_matrix(start: Sequence[int], ratio: np.ndarray, pad: np.ndarray) -> np.ndarray:
    """The voxel-to-voxel matrix from the output grid to the source grid (the crop translation then scaling).

    Output voxel ``o`` samples source position ``start + (o - pad + 0.5) * ratio - 0.5`` along each axis (the
    ``align_corners=False`` convention of :func:`torch.nn.functional.interpolate`), so the new affine is
    ``old_affine @ crop_resize_matrix(...)``.

    Returns:
        float64 ``[4, 4]``.
    """
    n = len(start)
    m = np.eye(n + 1)
    for a in range(n):
        m[a, a] = ratio[a]
        m[a, n] = start[a] + (0.5 - pad[a]) * ratio[a] - 0.5
    return m
