"""Precision / recall (Kynkäänniemi et al. 2019) and density / coverage (Naeem et al. 2020)."""

import math

import pytest
import torch

from motfm.metrics.manifold import kth_neighbour_radii, manifold_metrics


def test_hand_computed_one_dimensional_case() -> None:
    # real points 0..9 on a line: with k = 1 every real ball has radius 1
    real = torch.arange(10.0)[:, None]
    fake = torch.tensor([[0.4], [9.3], [11.2], [-1.7]])
    # fake radii (k = 1): -1.7 -> 2.1, 0.4 -> 2.1, 9.3 -> 1.9, 11.2 -> 1.9
    m = manifold_metrics(real, fake, k_precision_recall=1, k_density_coverage=1)
    # inside some real ball: 0.4 (of 0 and 1) and 9.3 (of 9); 11.2 and -1.7 are not
    assert m["precision"] == pytest.approx(2 / 4)
    # reals inside some fake ball: 0 (-1.7 and 0.4), 1, 2 (0.4), 8, 9 (9.3); 10 is not real
    assert m["recall"] == pytest.approx(5 / 10)
    # 0.4 lies in 2 real balls, 9.3 in 1 (|9.3 - 8| = 1.3 > 1): (2 + 1) / (k M)
    assert m["density"] == pytest.approx(3 / 4)
    # real balls holding a sample: 0, 1, 9
    assert m["coverage"] == pytest.approx(3 / 10)
    assert (m["pr_k"], m["dc_k"]) == (1, 1)
    # with k = 2 the end balls (around 0 and 9) grow to radius 2: -1.7 is in, 11.2 (2.2 from 9) still out
    assert manifold_metrics(real, fake, 2, 2)["precision"] == pytest.approx(3 / 4)


def test_identical_sets() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g)
    m = manifold_metrics(x, x.clone())
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0
    # every ball holds its centre and the centre's k nearest neighbours: N (k + 1) memberships / (k N)
    assert m["density"] == pytest.approx((5 + 1) / 5)


def test_two_draws_of_one_gaussian_match_expectations() -> None:
    g = torch.Generator().manual_seed(1)
    n = m_ = 2000
    real, fake = torch.randn(n, 8, generator=g), torch.randn(m_, 8, generator=g)
    m = manifold_metrics(real, fake)
    assert m["density"] == pytest.approx(1.0, abs=0.05)  # E[density] = 1 exactly for equal distributions
    expected_coverage = 1 - math.prod((n - t) / (n - t + m_) for t in range(1, 6))
    assert m["coverage"] == pytest.approx(expected_coverage, abs=0.02)
    assert m["precision"] > 0.6 and m["recall"] > 0.6


def test_far_apart_gaussians_score_zero() -> None:
    g = torch.Generator().manual_seed(2)
    real = torch.randn(200, 8, generator=g)
    fake = torch.randn(150, 8, generator=g) + 50.0
    m = manifold_metrics(real, fake, block_elements=1000)
    assert m["precision"] == m["recall"] == m["density"] == m["coverage"] == 0.0


def test_mode_collapse_keeps_precision_but_loses_recall_and_coverage() -> None:
    g = torch.Generator().manual_seed(3)
    real = torch.randn(1000, 4, generator=g)
    fake = real[real[:, 0] > 1.0][:150] + 0.01 * torch.randn(150, 4, generator=g)  # one tail only
    m = manifold_metrics(real, fake)
    assert m["precision"] > 0.95 and m["recall"] < 0.4 and m["coverage"] < 0.3


def test_radii_and_size_errors() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert kth_neighbour_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert kth_neighbour_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(ValueError, match="more real and generated items than k"):
        manifold_metrics(torch.randn(5, 2), torch.randn(10, 2))
