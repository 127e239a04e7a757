"""Radially averaged power spectra: closed forms (white noise, a pure cosine, scaling)."""

import math

import pytest
import torch

from motfm.metrics.spectrum import bin_centres, radial_power_spectrum, spectrum_scores


@pytest.mark.parametrize("d", [2, 3])
def test_white_noise_has_a_flat_spectrum_at_its_variance(d):
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(128 if d == 2 else 16, 1, *(32,) * d, generator=g)
    p = radial_power_spectrum(x)
    assert p.shape == (16,)
    torch.testing.assert_close(p[2:], torch.full_like(p[2:], 0.25), rtol=0.1, atol=0)  # few terms below


def test_a_cosine_puts_its_power_in_its_own_bin():
    n, k = 32, 10  # cos(2 pi k x / n): frequency k / n = 0.3125 cycles per pixel
    x = torch.cos(2 * math.pi * k * torch.arange(n) / n).expand(n, n)[None, None]
    p = radial_power_spectrum(x)
    peak = int(p.argmax())
    assert bin_centres(16)[peak] == pytest.approx(k / n, abs=0.5 / 16)
    assert p[peak] > 100 * p[torch.arange(16) != peak].max()


def test_scores_of_a_scaled_copy_and_of_a_blurred_copy():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(8, 1, 32, 32, generator=g)
    same = spectrum_scores(real, real)
    assert same == {"psd_hf_log_error": 0.0, "psd_hf_ratio": 1.0}
    scaled = spectrum_scores(real, 2 * real)  # power x4 everywhere: log10 4
    assert scaled["psd_hf_log_error"] == pytest.approx(math.log10(4)) and scaled[
        "psd_hf_ratio"
    ] == pytest.approx(4)
    blurred = (real + real.roll(1, -1) + real.roll(1, -2) + real.roll((1, 1), (-2, -1))) / 4
    assert spectrum_scores(real, blurred)["psd_hf_ratio"] < 0.3  # a 2x2 box filter removes most fine detail
    with pytest.raises(ValueError, match="differ"):
        spectrum_scores(real, real[:, :, :16])


def test_the_spectrum_does_not_depend_on_how_many_images_are_transformed_at_a_time():
    # Transformed a few images at a time (memory at 128^3), the mean power is the one of the whole set.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 2, 8, 8, 8, generator=g) * torch.linspace(0.1, 2, 7)[:, None, None, None, None]
    one = x[0].numel()
    whole = radial_power_spectrum(x, max_values=7 * one)
    for chunk in (1, 3):
        part = radial_power_spectrum(x, max_values=chunk * one)
        torch.testing.assert_close(part, whole, rtol=1e-12, atol=0)
    direct = torch.fft.fftn(x.double(), dim=(2, 3, 4), norm="ortho").abs().square().mean((0, 1))
    assert whole[0] == pytest.approx(float(direct[0, 0, 0]))  # the DC bin holds exactly the zero frequency
