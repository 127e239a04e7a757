"""KID, RBF-MMD and CMMD."""

import math

import numpy as np
import pytest
import torch

from motfm.metrics.kernels import cmmd, kid, median_bandwidth, mmd_rbf


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_kid_near_zero_for_same_distribution_and_grows_with_shift() -> None:
    g = _gen(0)
    real = torch.randn(400, 32, generator=g)
    same = torch.randn(400, 32, generator=g)
    mean_same, std_same = kid(real, same, num_subsets=20, subset_size=200, generator=_gen(1))
    assert abs(mean_same) < 3 * std_same + 1e-3
    previous = mean_same
    for shift in (0.25, 0.5, 1.0):
        mean_shift, _ = kid(real, same + shift, num_subsets=20, subset_size=200, generator=_gen(1))
        assert mean_shift > previous
        previous = mean_shift


def test_kid_subset_size_clipped_and_reproducible() -> None:
    real, fake = torch.randn(30, 8), torch.randn(20, 8) + 1
    first = kid(real, fake, num_subsets=5, subset_size=1000, generator=_gen(3))
    second = kid(real, fake, num_subsets=5, subset_size=1000, generator=_gen(3))
    assert first == second and first[0] > 0


def test_kid_single_subset_matches_hand_computation() -> None:
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randn(6, 4, dtype=torch.float64) + 0.5
    k = lambda a, b: (a @ b.T / 4 + 1) ** 3  # noqa: E731
    m = 6
    kxx, kyy = k(x, x), k(y, y)
    expected = (
        (kxx.sum() - kxx.trace()) / (m * (m - 1))
        + (kyy.sum() - kyy.trace()) / (m * (m - 1))
        - 2 * k(x, y).mean()
    )
    mean, std = kid(x, y, num_subsets=3, subset_size=6, generator=_gen(0))  # full sets: order is irrelevant
    assert mean == pytest.approx(float(expected), rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_mmd_rbf_identical_and_different_sets() -> None:
    x = torch.randn(100, 5, generator=_gen(0))
    assert mmd_rbf(x, x.clone(), unbiased=False) == 0.0  # biased V-statistic: exactly 0
    assert abs(mmd_rbf(x, x.clone())) < 0.05  # unbiased: close to 0, not exactly
    far = mmd_rbf(x, x + 2.0)
    assert far > 0.1 and mmd_rbf(x, x + 2.0, unbiased=False) > 0.1


def test_mmd_rbf_explicit_bandwidth_matches_hand_computation() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    k = lambda a, b: math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / 2)  # noqa: E731
    xs, ys = x.tolist(), y.tolist()
    unbiased = k(xs[0], xs[1]) + k(ys[0], ys[1]) - 2 * np.mean([k(a, b) for a in xs for b in ys])
    assert mmd_rbf(x, y, bandwidth=1.0) == pytest.approx(unbiased, rel=1e-12)


def test_median_bandwidth() -> None:
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[3.0]])
    # pooled distances 1, 3, 2 -> median 2
    assert median_bandwidth(x, y) == pytest.approx(2.0)


def test_cmmd_hand_computed() -> None:
    # two unit vectors per set; ||a - b||^2 between orthogonal unit vectors is 2
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    e = math.exp(-2 / (2 * 10.0**2))
    k_xx = (1 + e + e + 1) / 4
    k_yy = 1.0
    k_xy = (1 + 1 + e + e) / 4
    expected = 1000 * (k_xx + k_yy - 2 * k_xy)
    assert cmmd(x, y) == pytest.approx(expected, rel=1e-12)
    assert cmmd(x, x.clone()) == 0.0
    assert cmmd(x, y, sigma=1.0, scale=1.0) == pytest.approx(
        (1 + math.exp(-1)) / 2 + 1 - (1 + math.exp(-1)), rel=1e-12
    )


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="feature dimensions"):
        kid(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        cmmd(torch.randn(5), torch.randn(5))
