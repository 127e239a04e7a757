"""SSIM / MS-SSIM in 2D and 3D, paired SSIM and intra-set MS-SSIM."""

import sys

import numpy as np
import pytest
import torch
from scipy.signal import correlate

from motfm.metrics.ssim import intra_set_ms_ssim, ms_ssim, num_ms_ssim_scales, paired_ssim, ssim


def _images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth structure plus texture, in [-1, 1]
    x = torch.rand(shape, generator=g)
    for axis in range(2, len(shape)):
        x = (x + x.roll(1, axis) + x.roll(-1, axis)) / 3
    return (x * 2 - 1).clamp(-1, 1)


def _noisy(x: torch.Tensor, level: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + level * torch.randn(x.shape, generator=g)).clamp(-1, 1)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 24, 20), (2, 1, 16, 16, 16)])
def test_ssim_identity_and_noise(shape: tuple[int, ...]) -> None:
    x = _images(shape)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    values = [ssim(x, _noisy(x, level)).item() for level in (0.05, 0.2, 0.5)]
    assert 1.0 > values[0] > values[1] > values[2]
    assert ssim(x, _noisy(x, 0.2), reduction="none").shape == (shape[0],)


def test_ssim_matches_reference_valid_filtering() -> None:
    x = _images((1, 1, 40, 40)).double()
    y = _noisy(x, 0.3).double()
    c = np.arange(11) - 5
    w = np.exp(-(c**2) / (2 * 1.5**2))
    window = np.outer(w, w) / w.sum() ** 2
    a, b = x[0, 0].numpy(), y[0, 0].numpy()

    def f(z: np.ndarray) -> np.ndarray:
        return correlate(z, window, mode="valid")

    mx, my = f(a), f(b)
    vx, vy, cxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    expected = ((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 24, 24, 24)])
def test_ms_ssim_identity_and_noise(shape: tuple[int, ...]) -> None:
    x = _images(shape)
    assert ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    noisy = [ms_ssim(x, _noisy(x, level)).item() for level in (0.05, 0.5)]
    assert 1.0 > noisy[0] > noisy[1] >= 0.0


def test_ms_ssim_scale_reduction() -> None:
    assert num_ms_ssim_scales((176, 176)) == 5
    assert num_ms_ssim_scales((64, 64)) == 3
    assert num_ms_ssim_scales((32, 64, 64)) == 2
    assert num_ms_ssim_scales((8, 8)) == 0
    x = _images((1, 1, 64, 64))
    y = _noisy(x, 0.2)
    assert ms_ssim(x, y).item() == pytest.approx(ms_ssim(x, y, scales=3).item())
    with pytest.raises(ValueError, match="5 MS-SSIM scales"):
        ms_ssim(x, y, scales=5)
    with pytest.raises(ValueError, match="win_size"):
        ssim(x[..., :8, :8], y[..., :8, :8])


def test_paired_ssim_mean_over_pairs() -> None:
    real = _images((5, 1, 24, 24))
    fake = _noisy(real, 0.2)
    per_pair = ssim(fake, real, reduction="none")
    assert paired_ssim(fake, real, batch_size=2) == pytest.approx(per_pair.mean().item(), rel=1e-6)
    assert paired_ssim(real, real) == pytest.approx(1.0, abs=1e-6)


def test_intra_set_ms_ssim_diversity() -> None:
    collapsed = _images((1, 1, 48, 48)).expand(6, -1, -1, -1)
    diverse = _images((6, 1, 48, 48), seed=3)
    g = torch.Generator().manual_seed(0)
    assert intra_set_ms_ssim(collapsed, num_pairs=10, generator=g) == pytest.approx(1.0, abs=1e-6)
    value = intra_set_ms_ssim(
        diverse, num_pairs=100, generator=torch.Generator().manual_seed(0)
    )  # clipped to 15
    assert value < 0.5
    again = intra_set_ms_ssim(diverse, num_pairs=4, generator=torch.Generator().manual_seed(5))
    assert again == intra_set_ms_ssim(diverse, num_pairs=4, generator=torch.Generator().manual_seed(5))


def test_large_volumes_are_scored_in_fewer_pairs_per_call_with_the_same_values(monkeypatch):
    # 32 pairs of 128^3 volumes per call took 20.6 GiB; the cap lowers the pairs per call, never the values.
    ssim_module = sys.modules["motfm.metrics.ssim"]  # the package re-exports a function of the same name
    g = torch.Generator().manual_seed(3)
    a, b = (torch.rand(6, 1, 24, 24, 24, generator=g) * 2 - 1 for _ in range(2))
    whole = (paired_ssim(a, b), intra_set_ms_ssim(a, 10, torch.Generator().manual_seed(0)))
    sizes = []
    original = ssim_module.ssim
    monkeypatch.setattr(
        ssim_module, "ssim", lambda x, *args, **kw: sizes.append(len(x)) or original(x, *args, **kw)
    )
    monkeypatch.setattr(ssim_module, "MAX_VOXELS_PER_CALL", 2 * 24**3)
    capped = (paired_ssim(a, b), intra_set_ms_ssim(a, 10, torch.Generator().manual_seed(0)))
    assert sizes == [2, 2, 2]  # paired: 6 pairs, 2 per call
    assert capped[0] == pytest.approx(whole[0], abs=1e-6) and capped[1] == pytest.approx(whole[1], abs=1e-6)
