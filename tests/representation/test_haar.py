"""The Haar transform: PyWavelets' coefficients, exact inverse, orthonormality, compilable."""

import numpy as np
import pytest
import pywt
import torch

from motfm.representation.haar import check_divisible, haar_forward, haar_inverse, space_to_depth


def pywt_level(x: np.ndarray, d: int) -> np.ndarray:
    """One level of ``pywt.dwtn`` on the spatial axes, bands as channels in sorted key order."""
    coeffs = pywt.dwtn(x, "haar", axes=tuple(range(2, 2 + d)))
    bands = np.stack([coeffs[k] for k in sorted(coeffs)], axis=2)  # [B, C, 2^d, *half]
    return bands.reshape(x.shape[0], -1, *bands.shape[3:])


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("levels", [1, 2])
def test_matches_pywavelets_per_level(d, levels):
    size = (8, 12, 4)[:d]
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    expected = x.numpy()
    for _ in range(levels):  # level 2 transforms every sub-band again (wavelet packet)
        expected = pywt_level(expected, d)
    coeffs = haar_forward(x, levels)
    assert coeffs.shape == (2, 3 * 2 ** (d * levels), *(s // 2**levels for s in size))
    np.testing.assert_allclose(coeffs.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("levels", [1, 2])
def test_round_trip_and_energy(d, levels):
    x = torch.randn(3, 2, *(8,) * d)
    coeffs = haar_forward(x, levels)
    assert (haar_inverse(coeffs, levels) - x).abs().max() < 1e-6
    torch.testing.assert_close(coeffs.square().sum(), x.square().sum(), rtol=1e-6, atol=0)
    # orthonormal: the inverse of any coefficient tensor keeps its norm too
    c = torch.randn_like(coeffs)
    torch.testing.assert_close(haar_inverse(c, levels).square().sum(), c.square().sum(), rtol=1e-6, atol=0)


def test_low_band_of_a_constant_image_holds_everything():
    x = torch.full((1, 1, 4, 4, 4), 0.5)
    coeffs = haar_forward(x, 1)
    torch.testing.assert_close(coeffs[:, 0], torch.full((1, 2, 2, 2), 0.5 * 8**0.5))
    assert coeffs[:, 1:].abs().max() < 1e-7


def test_compiles_as_one_graph():
    forward = torch.compile(lambda x: haar_inverse(haar_forward(x, 2), 2), fullgraph=True, backend="eager")
    x = torch.randn(1, 2, 8, 8, 8)
    assert (forward(x) - x).abs().max() < 1e-6


def test_space_to_depth_is_a_lossless_block_rearrangement():
    x = torch.arange(2 * 3 * 4 * 8).reshape(2, 3, 4, 8)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 12, 2, 4)
    # block (i, j) of channel k holds x[k, 2i:2i+2, 2j:2j+2] in C order
    torch.testing.assert_close(y[1, 4:8, 1, 3], x[1, 1, 2:4, 6:8].reshape(-1))
    assert sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())


def test_sizes_not_divisible_are_refused_in_one_line():
    with pytest.raises(ValueError, match="divisible by 4; got image size \\(8, 6\\)"):
        check_divisible((8, 6), 2)
