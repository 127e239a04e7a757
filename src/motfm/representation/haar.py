"""The orthonormal Haar wavelet transform of 2D images and 3D volumes, as tensor reshapes.

One level splits every image channel into ``2^d`` sub-bands at half the side (``d`` = 2 or 3 spatial
dimensions). Along one axis the Haar analysis of the pair ``(a, b) = (x[2k], x[2k+1])`` is

    low = (a + b) / sqrt(2),    high = (a - b) / sqrt(2)

(Mallat 1989; PyWavelets' ``haar``: ``pywt.dwt`` gives ``cA, cD`` exactly so). The ``d``-dimensional
transform applies it along every axis of each ``2 x 2 (x 2)`` block, i.e. multiplies the block by the
tensor product of the 2x2 matrix ``H = [[1, 1], [1, -1]] / sqrt(2)``. ``H`` is symmetric and orthogonal
(``H @ H = I``), so the transform preserves energy and is its own inverse on the block.

Layout: channel ``c * 2^d + band`` where ``band`` has one bit per axis, the first axis most significant,
bit 0 = low-pass ("a") and 1 = high-pass ("d"): the order of PyWavelets' ``dwtn`` keys sorted
(``aaa, aad, ada, ..., ddd``). A second level transforms every sub-band again (a wavelet packet, as WFM,
MIDL 2026, and FlowLet, MedIA 2026, do), so after ``L`` levels all coefficients sit at ``1 / 2^L`` the
side as ``2^(d L)`` channels per image channel, channel ``c * 2^(dL) + band_1 * 2^(d(L-1)) + ... + band_L``.

No Python loop over sub-bands and no matrix product (so autocast never lowers its precision): one view,
one permute, ``d`` add/subtract pairs and one reshape per level; it compiles with ``fullgraph=True``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SQRT_HALF = 1.0 / math.sqrt(2.0)


def _butterflies(blocks: Tensor, first: int, count: int) -> Tensor:
    """Apply ``H`` along the ``count`` size-2 dimensions from ``first`` on (``H`` is its own inverse)."""
    for dim in range(first, first + count):
        a, b = blocks.unbind(dim)
        blocks = torch.stack(((a + b) * SQRT_HALF, (a - b) * SQRT_HALF), dim)
    return blocks


def check_divisible(size: tuple[int, ...] | list[int], levels: int) -> None:
    """Raise a clear error when a spatial size cannot be halved ``levels`` times."""
    bad = [s for s in size if s % (2**levels)]
    if bad:
        raise ValueError(
            f"a {levels}-level Haar transform needs every image side divisible by {2**levels}; "
            f"got image size {tuple(size)}"
        )


def haar_forward(x: Tensor, levels: int = 1) -> Tensor:
    """Orthonormal Haar analysis, ``levels`` levels (every sub-band transformed again at level 2).

    Args:
        x: images ``[B, C, H, W]`` or volumes ``[B, C, D, H, W]``, every side divisible by ``2^levels``.
        levels: 1 or more.

    Returns:
        Coefficients ``[B, C * 2^(d levels), *spatial / 2^levels]`` (layout in the module docstring),
        in ``x``'s dtype.
    """
    d = x.ndim - 2
    for _ in range(levels):
        b, c, *size = x.shape
        half = [s // 2 for s in size]
        split = [b, c] + [n for h in half for n in (h, 2)]
        # [B, C, S1, 2, S2, 2(, S3, 2)] -> [B, C, 2, 2(, 2), S1, S2(, S3)]
        order = [0, 1, *(3 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d))]
        blocks = _butterflies(x.reshape(split).permute(order), 2, d)
        x = blocks.reshape(b, c * 2**d, *half)
    return x


def haar_inverse(coeffs: Tensor, levels: int = 1) -> Tensor:
    """Inverse of :func:`haar_forward` (exact up to rounding: the transform is orthonormal).

    Args:
        coeffs: ``[B, C * 2^(d levels), *spatial / 2^levels]``.
        levels: the levels of the forward transform.

    Returns:
        Images ``[B, C, *spatial]``.
    """
    d = coeffs.ndim - 2
    x = coeffs
    for _ in range(levels):
        b, cb, *half = x.shape
        blocks = _butterflies(x.reshape(b, cb // 2**d, *([2] * d), *half), 2, d)
        # [B, C, 2, 2(, 2), S1, S2(, S3)] -> [B, C, S1, 2, S2, 2(, S3, 2)]
        order = [0, 1, *(n for i in range(d) for n in (2 + d + i, 2 + i))]
        x = blocks.permute(order).reshape(b, cb // 2**d, *(2 * h for h in half))
    return x


def space_to_depth(x: Tensor, factor: int) -> Tensor:
    """Move every ``factor^d`` block of a map into channels (a lossless rearrangement, no arithmetic).

    Args:
        x: ``[B, K, *spatial]``, every side divisible by ``factor``.
        factor: block side.

    Returns:
        ``[B, K * factor^d, *spatial / factor]``: channel ``k * factor^d + offset``, the offset inside the
        block in C order. Coefficient position ``p`` of an ``L``-level transform covers exactly the image
        block that position ``p`` of ``space_to_depth(., 2^L)`` holds.
    """
    if factor == 1:
        return x
    d = x.ndim - 2
    b, k, *size = x.shape
    small = [s // factor for s in size]
    split = [b, k] + [n for s in small for n in (s, factor)]
    order = [0, 1, *(3 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d))]
    return x.reshape(split).permute(order).reshape(b, k * factor**d, *small)
