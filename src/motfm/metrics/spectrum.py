"""High-frequency fidelity: radially averaged power spectra of generated vs real images (2D and 3D).

The power spectrum ``P(k) = |FFT(x)(k)|^2`` (orthonormal FFT over the spatial axes, so white noise of variance
``s^2`` has ``P = s^2`` at every frequency) is averaged over images, channels and the shell of frequencies
``|f| = sqrt(sum_i (k_i / n_i)^2)`` (cycles per pixel / voxel) falling into each radial bin, as in the
spectral analyses of generated images (Durall et al., CVPR 2020; Dzanic et al., NeurIPS 2020). Blurry
samples lack power at high frequencies, noisy ones have too much; both show in the upper half of the band,
``|f| >= 0.25``, which is what one level of Haar detail sub-bands mostly encodes.

Scores (:func:`spectrum_scores`):

- ``psd_hf_log_error``: mean over the high-frequency bins of ``|log10 P_fake - log10 P_real|`` (0: equal;
  0.3: a factor 2 off on average);
- ``psd_hf_ratio``: ``sum P_fake / sum P_real`` over those bins (< 1: too little fine detail, > 1: too much).
"""

from __future__ import annotations

import torch
from torch import Tensor

from motfm.metrics.batching import items_per_call

HIGH_FREQUENCY = 0.25  # cycles per pixel: the upper half of the band (Nyquist is 0.5)


def radial_frequency(size: tuple[int, ...]) -> Tensor:
    """``|f|`` in cycles per pixel / voxel for every FFT coefficient of an image of ``size`` ``[*size]``."""
    grids = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64) for n in size], indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


# Values per float64 FFT call: four 128^3 volumes (48 such volumes at once took 3.8 GiB above their input on
# a CPU; four at a time, 0.35 GiB).
MAX_VALUES_PER_FFT = 4 * 128**3


def radial_power_spectrum(
    images: Tensor, bins: int | None = None, max_values: int = MAX_VALUES_PER_FFT
) -> Tensor:
    """Radially averaged power spectrum of a set of images.

    Args:
        images: ``[N, C, *spatial]`` (2 or 3 spatial axes).
        bins: radial bins of equal width over ``[0, 0.5]`` cycles per pixel (default: half the smallest side);
            frequencies beyond Nyquist along the diagonal (``|f| > 0.5``) are left out.
        max_values: the most values transformed in one FFT call (memory bound; the result does not depend
            on it).

    Returns:
        float64 ``[bins]``: the mean power in each bin (bin ``b`` covers ``[b, b + 1) * 0.5 / bins``).
    """
    spatial = tuple(images.shape[2:])
    bins = bins or min(spatial) // 2
    dims = tuple(range(2, images.ndim))
    power = torch.zeros(spatial, dtype=torch.float64)
    for part in images.split(items_per_call(images[0].numel(), max_values)):
        power += torch.fft.fftn(part.to(torch.float64), dim=dims, norm="ortho").abs().square().sum((0, 1))
    power /= images.shape[0] * images.shape[1]
    f = radial_frequency(spatial)
    index = torch.floor(f / (0.5 / bins)).long()
    keep = index < bins
    total = torch.zeros(bins, dtype=torch.float64).index_add_(0, index[keep], power[keep])
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, index[keep], torch.ones_like(power[keep]))
    return total / count.clamp_min(1)


def bin_centres(bins: int) -> Tensor:
    """The centre frequency (cycles per pixel) of each of ``bins`` radial bins."""
    return (torch.arange(bins, dtype=torch.float64) + 0.5) * (0.5 / bins)


def spectrum_scores(real: Tensor, fake: Tensor, high: float = HIGH_FREQUENCY) -> dict[str, float]:
    """How the high-frequency power of ``fake`` compares with ``real`` (see the module docstring).

    Args:
        real: reference images ``[N, C, *spatial]``.
        fake: generated images of the same ``[C, *spatial]``.
        high: the lowest frequency (cycles per pixel) counted as high.

    Returns:
        ``psd_hf_log_error`` and ``psd_hf_ratio``.
    """
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real {tuple(real.shape[1:])} and generated {tuple(fake.shape[1:])} images differ")
    p_real, p_fake = radial_power_spectrum(real), radial_power_spectrum(fake)
    hf = bin_centres(p_real.numel()) >= high
    tiny = torch.finfo(torch.float64).tiny
    log_error = (p_fake[hf].clamp_min(tiny).log10() - p_real[hf].clamp_min(tiny).log10()).abs().mean()
    return {"psd_hf_log_error": float(log_error), "psd_hf_ratio": float(p_fake[hf].sum() / p_real[hf].sum())}
