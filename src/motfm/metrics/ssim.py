"""SSIM and MS-SSIM for 2D ``[B, C, H, W]`` and 3D ``[B, C, D, H, W]`` images.

* SSIM: Wang et al. 2004, "Image Quality Assessment: From Error Visibility to Structural Similarity",
  Eq. 13, with an isotropic Gaussian window (size 11, sigma 1.5) applied separably along every spatial
  axis, ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``, ``K1 = 0.01``, ``K2 = 0.03``, ``L`` the data range. As in the
  authors' reference code, local statistics are taken only where the window fits inside the image ("valid"
  filtering, no padding) and the SSIM map is averaged over positions and channels. (torchmetrics instead
  averages SSIM over a reflect-padded full-size map, so its values differ slightly from these.)
* MS-SSIM: Wang et al. 2003, "Multi-Scale Structural Similarity for Image Quality Assessment", Eq. 7, with
  the weights ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)`` over five scales; between scales the image is
  low-pass filtered and downsampled by 2 along every spatial axis (2x2(x2) average pooling). Negative
  contrast-structure terms (anti-correlated images) are clipped to 0 before the fractional powers.
  **Scale reduction**: when the image is too small for five scales (each scale must be at least the window
  size along every spatial axis: 176 px for the defaults), ``scales=None`` uses the largest number of scales
  that fits and renormalises the first weights to sum to 1, so values at reduced scales are *not* comparable
  with 5-scale numbers in the literature; an explicit ``scales`` that does not fit raises ``ValueError``.

The default ``data_range = 2.0`` matches the project's images in [-1, 1].
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from motfm.metrics.batching import items_per_call

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

Reduction = Literal["mean", "none"]


def _check_images(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"images must have equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim not in (4, 5):
        raise ValueError(f"expected [B, C, H, W] or [B, C, D, H, W], got shape {tuple(x.shape)}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return x.to(dtype), y.to(dtype)


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: Tensor, window: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of ``[N, C, *spatial]`` along every spatial axis."""
    n, c, *spatial = x.shape
    out = x.reshape(n * c, 1, *spatial)
    conv = F.conv2d if len(spatial) == 2 else F.conv3d
    for axis in range(len(spatial)):
        shape = [1, 1] + [1] * len(spatial)
        shape[2 + axis] = window.numel()
        out = conv(out, window.reshape(shape))
    return out.reshape(n, c, *out.shape[2:])


def _ssim_and_cs(
    x: Tensor, y: Tensor, data_range: float, window: Tensor, k1: float, k2: float
) -> tuple[Tensor, Tensor]:
    """Per-image mean SSIM and mean contrast-structure term ``cs``, both ``[B]``."""
    b = x.shape[0]
    stats = _filter(torch.cat([x, y, x * x, y * y, x * y]), window)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(b)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    var_x, var_y, cov_xy = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y
    cs_map = (2 * cov_xy + c2) / (var_x + var_y + c2)
    lum_map = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return (lum_map * cs_map).flatten(1).mean(1), cs_map.flatten(1).mean(1)


def _check_window(spatial: tuple[int, ...], win_size: int) -> None:
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd number, got {win_size}")
    if min(spatial) < win_size:
        raise ValueError(f"every spatial size must be >= win_size={win_size}, got {spatial}")


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 2.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: Reduction = "mean",
) -> Tensor:
    """Structural similarity (Wang et al. 2004, Eq. 13) of image pairs.

    Args:
        x: ``[B, C, H, W]`` or ``[B, C, D, H, W]``.
        y: same shape as ``x``.
        data_range: ``L``, the span of the intensity range (2.0 for images in [-1, 1]).
        win_size: Gaussian window size (odd); every spatial size must be at least this.
        sigma: Gaussian window standard deviation.
        k1: luminance stabiliser constant.
        k2: contrast stabiliser constant.
        reduction: ``"mean"`` for a scalar over the batch, ``"none"`` for ``[B]``.

    Returns:
        SSIM in [-1, 1] (1 for identical images), scalar or ``[B]``.
    """
    x, y = _check_images(x, y)
    _check_window(tuple(x.shape[2:]), win_size)
    window = _gaussian_window(win_size, sigma, x)
    return _reduce(_ssim_and_cs(x, y, data_range, window, k1, k2)[0], reduction)


def num_ms_ssim_scales(spatial: tuple[int, ...], win_size: int = 11, max_scales: int = 5) -> int:
    """Largest number of MS-SSIM scales (at most ``max_scales``) for which every scale fits the window.

    Args:
        spatial: spatial shape ``(H, W)`` or ``(D, H, W)``.
        win_size: Gaussian window size.
        max_scales: upper bound (5 for the standard weights).

    Returns:
        The number of scales; 0 when even the full-resolution image is smaller than the window.
    """
    sizes, count = list(spatial), 0
    while count < max_scales and min(sizes) >= win_size:
        count += 1
        sizes = [s // 2 for s in sizes]
    return count


def ms_ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 2.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
    scales: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Multi-scale structural similarity (Wang et al. 2003, Eq. 7) of image pairs.

    Args:
        x: ``[B, C, H, W]`` or ``[B, C, D, H, W]``.
        y: same shape as ``x``.
        data_range: ``L``, the span of the intensity range (2.0 for images in [-1, 1]).
        win_size: Gaussian window size (odd).
        sigma: Gaussian window standard deviation.
        k1: luminance stabiliser constant.
        k2: contrast stabiliser constant.
        weights: exponents per scale, finest first (Wang 2003's five by default).
        scales: number of scales to use; ``None`` picks the most that fit (at most ``len(weights)``), see the
            module docstring. The first ``scales`` weights are renormalised to sum to 1 when fewer than
            ``len(weights)`` are used.
        reduction: ``"mean"`` for a scalar over the batch, ``"none"`` for ``[B]``.

    Returns:
        MS-SSIM in [0, 1] (1 for identical images), scalar or ``[B]``.
    """
    x, y = _check_images(x, y)
    spatial = tuple(x.shape[2:])
    _check_window(spatial, win_size)
    fit = num_ms_ssim_scales(spatial, win_size, len(weights))
    if scales is None:
        scales = fit
    elif not 1 <= scales <= fit:
        raise ValueError(
            f"{scales} MS-SSIM scales need every spatial size >= {win_size * 2 ** (max(scales, 1) - 1)} "
            f"(window {win_size}, downsampling by 2 per scale); shape {spatial} allows at most {fit}"
        )
    w = torch.tensor(weights[:scales], dtype=x.dtype, device=x.device)
    w = w / w.sum()
    window = _gaussian_window(win_size, sigma, x)
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    factors = []
    for scale in range(scales):
        full, cs = _ssim_and_cs(x, y, data_range, window, k1, k2)
        factors.append(full if scale == scales - 1 else cs)
        if scale < scales - 1:
            x, y = pool(x, 2), pool(y, 2)
    values = torch.stack(factors, 1).clamp_min(0.0) ** w
    return _reduce(values.prod(1), reduction)


# Voxels (pairs x channels x positions) per (MS-)SSIM call: 32 pairs of one-channel 64^3 volumes, a few GiB
# of working memory; 32 pairs at 128^3 took 20.6 GiB on a CPU and killed a 24 GiB machine's evaluation.
MAX_VOXELS_PER_CALL = 32 * 64**3


def paired_ssim(fake: Tensor, real: Tensor, data_range: float = 2.0, batch_size: int = 32) -> float:
    """Mean SSIM between each generated image and its paired reference (conditional tasks).

    Args:
        fake: ``[N, C, *spatial]`` generated images.
        real: ``[N, C, *spatial]`` references, ``real[i]`` paired with ``fake[i]``.
        data_range: intensity span (2.0 for [-1, 1]).
        batch_size: pairs evaluated per call (fewer for large volumes, at most
            :data:`MAX_VOXELS_PER_CALL` voxels per call).

    Returns:
        The mean of the per-pair SSIM values.
    """
    if fake.shape != real.shape:
        raise ValueError(
            f"fake and real must have equal shapes, got {tuple(fake.shape)} and {tuple(real.shape)}"
        )
    step = items_per_call(fake[0].numel(), MAX_VOXELS_PER_CALL, most=batch_size)
    values = [
        ssim(fake[i : i + step], real[i : i + step], data_range=data_range, reduction="none")
        for i in range(0, fake.shape[0], step)
    ]
    return float(torch.cat(values).mean())


def _sample_pairs(n: int, num_pairs: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``num_pairs`` distinct unordered index pairs ``i < j`` of ``range(n)``, drawn without replacement."""
    total = n * (n - 1) // 2
    num_pairs = min(num_pairs, total)
    if total <= 2_000_000:
        iu = torch.triu_indices(n, n, offset=1)
        pick = torch.randperm(total, generator=generator)[:num_pairs]
        return iu[0, pick], iu[1, pick]
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < num_pairs:
        draw = torch.randint(0, n, (2 * (num_pairs - len(chosen)), 2), generator=generator)
        for a, b in draw.tolist():
            if a != b and len(chosen) < num_pairs:
                chosen.setdefault((min(a, b), max(a, b)), None)
    pairs = torch.tensor(list(chosen))
    return pairs[:, 0], pairs[:, 1]


def intra_set_ms_ssim(
    images: Tensor,
    num_pairs: int,
    generator: torch.Generator | None = None,
    data_range: float = 2.0,
    batch_size: int = 16,
) -> float:
    """Mean MS-SSIM over random distinct pairs within one set: a diversity measure (lower = more diverse).

    Used for generative models since Odena et al. 2017 ("Conditional Image Synthesis with Auxiliary
    Classifier GANs"): a collapsed generator gives values close to 1.

    Args:
        images: ``[N, C, *spatial]``, ``N >= 2``.
        num_pairs: number of unordered pairs ``(i, j)``, ``i != j``, drawn without replacement; clipped to
            ``N (N - 1) / 2``.
        generator: CPU generator for the pair draw; ``None`` uses the global RNG.
        data_range: intensity span (2.0 for [-1, 1]).
        batch_size: pairs evaluated per call (fewer for large volumes, at most
            :data:`MAX_VOXELS_PER_CALL` voxels per call).

    Returns:
        The mean MS-SSIM (scales chosen as in :func:`ms_ssim` with ``scales=None``).
    """
    n = images.shape[0]
    if n < 2 or num_pairs < 1:
        raise ValueError(f"need N >= 2 images and num_pairs >= 1, got N={n}, num_pairs={num_pairs}")
    first, second = _sample_pairs(n, num_pairs, generator)
    first, second = first.to(images.device), second.to(images.device)
    step = items_per_call(images[0].numel(), MAX_VOXELS_PER_CALL, most=batch_size)
    values = [
        ms_ssim(
            images[first[i : i + step]],
            images[second[i : i + step]],
            data_range=data_range,
            reduction="none",
        )
        for i in range(0, first.numel(), step)
    ]
    return float(torch.cat(values).mean())
