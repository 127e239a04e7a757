"""Memorisation statistics on nearest-training distances, and the fixed verdict rule."""

import pytest
import torch
from scipy import stats

from motfm.metrics.memorisation import (
    RULE,
    authenticity,
    betabinom_upper_tail,
    cell_statistic,
    copying_statistics,
    copying_verdict,
    kmeans,
    mann_whitney_z,
    structure_vectors,
)


def test_mann_whitney_z_matches_scipy_and_its_sign() -> None:
    g = torch.Generator().manual_seed(0)
    heldout = torch.rand(300, generator=g) + 1.0
    closer = torch.rand(200, generator=g) + 0.8  # generated samples nearer the training set
    result = mann_whitney_z(closer, heldout)
    assert result["z"] < -5
    assert stats.norm.cdf(result["z"]) == pytest.approx(result["p_value"], rel=1e-9)
    farther = mann_whitney_z(heldout + 0.3, heldout)
    assert farther["z"] > 5
    # with ties (exact copies at distance 0) the tie-corrected z still reproduces scipy
    tied = torch.cat([torch.zeros(50), torch.rand(50, generator=g)])
    with_ties = mann_whitney_z(tied, heldout)
    assert stats.norm.cdf(with_ties["z"]) == pytest.approx(with_ties["p_value"], rel=1e-9)
    assert mann_whitney_z(torch.ones(5), torch.ones(7))["z"] == 0.0


def test_copying_statistics_counts_and_null_law() -> None:
    heldout = torch.tensor([2.0, 3.0, 4.0, 5.0])
    samples = torch.tensor([0.0, 1.0, 1.5, 2.5, 6.0])
    s = copying_statistics(samples, heldout)
    assert s["copied"]["count"] == 3 and s["copied"]["share"] == pytest.approx(0.6)
    assert s["copied"]["threshold"] == 2.0 and s["copied"]["expected_share_if_novel"] == pytest.approx(1 / 5)
    # P(K >= 3) for K ~ BetaBin(5, 1, 4)
    assert s["copied"]["p_value"] == pytest.approx(stats.betabinom(5, 1, 4).sf(2))
    assert s["ratio"]["denominator"] == pytest.approx(3.5)  # median of the held-out distances
    assert s["ratio"]["min"] == 0.0 and s["ratio"]["max"] == pytest.approx(6 / 3.5)


def test_copied_share_p_value_keeps_tiny_tails() -> None:
    # P(K >= 54) for K ~ BetaBin(128, 1, 256) is about 1.6e-30; 1 - cdf would round it to 0
    p = betabinom_upper_tail(54, 128, 256)
    assert 1e-31 < p < 1e-29 and p == pytest.approx(stats.betabinom(128, 1, 256).pmf(range(54, 129)).sum())
    assert betabinom_upper_tail(0, 128, 256) == 1.0


def test_copied_share_p_value_is_calibrated_for_novel_samples() -> None:
    # samples exchangeable with held-out data: P(p < 0.05) must not exceed 0.05 (up to Monte-Carlo error)
    g = torch.Generator().manual_seed(1)
    p_values = [
        copying_statistics(torch.rand(64, generator=g), torch.rand(128, generator=g))["copied"]["p_value"]
        for _ in range(400)
    ]
    assert sum(p < 0.05 for p in p_values) / 400 < 0.08


def test_authenticity() -> None:
    radii = torch.tensor([1.0, 0.5, 2.0])
    distances = torch.tensor([0.0, 0.6, 1.0, 3.0])
    nearest = torch.tensor([0, 1, 2, 2])
    # authentic: 0.6 > 0.5 and 3 > 2; a copy (0.0) and 1.0 < 2.0 are not
    assert authenticity(distances, nearest, radii) == pytest.approx(0.5)


def test_kmeans_finds_separated_clusters_deterministically() -> None:
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    points = torch.cat([c + torch.randn(50, 2, generator=g) for c in centres])
    found = kmeans(points, 3, seed=5)
    assert torch.equal(found, kmeans(points, 3, seed=5))
    nearest = torch.cdist(centres, found.float()).min(1).values
    assert (nearest < 0.5).all()


def make_sets(copies: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(400, 6, generator=g)
    heldout = torch.randn(300, 6, generator=g)
    samples = torch.randn(200, 6, generator=g)
    samples[:copies] = train[:copies]  # exact copies of training items
    return train, heldout, samples


def test_cell_statistic_separates_copying_from_novel_samples() -> None:
    novel = cell_statistic(*make_sets(0), num_cells=4, seed=0)
    assert novel["num_cells"] == 4 and abs(novel["c_t"]) < 3
    assert sum(c["samples"] for c in novel["cells"]) == 200
    copied = cell_statistic(*make_sets(200), num_cells=4, seed=0)
    assert copied["c_t"] < -5
    # too few samples for cells of 20: one cell, and C_T is the global z
    train, heldout, samples = make_sets(0)
    one = cell_statistic(train, heldout, samples[:30], num_cells=4)
    global_z = mann_whitney_z(
        torch.cdist(samples[:30], train).min(1).values, torch.cdist(heldout, train).min(1).values
    )
    assert one["num_cells"] == 1 and one["c_t"] == pytest.approx(global_z["z"], abs=1e-6)


def test_structure_vectors_average_away_texture() -> None:
    g = torch.Generator().manual_seed(4)
    anatomy = torch.zeros(1, 1, 64, 64)
    anatomy[..., 16:48, 20:40] = 1.0
    speckled = anatomy + 0.5 * torch.randn(2, 1, 64, 64, generator=g)  # two noise draws of one anatomy
    thumbs = structure_vectors(speckled, 16)
    assert thumbs.shape == (2, 256)
    # 4 x 4 averaging divides the noise by 4: the two draws are far closer as thumbnails than as pixels
    raw = (speckled[0] - speckled[1]).norm() / 64
    assert (thumbs[0] - thumbs[1]).norm() / 16 < raw / 3
    assert structure_vectors(torch.rand(3, 2, 8, 20, 20), 16).shape == (3, 2 * 8 * 16 * 16)


def space(c_t, p_value):
    return {"c_t": {"c_t": c_t}, "copied": {"p_value": p_value}}


def test_verdict_rule() -> None:
    assert RULE == {
        "spaces": ["features", "structure"],
        "c_t_below": -3.0,
        "copied_share_p_value_below": 1e-3,
    }
    assert copying_verdict({"features": space(-1.0, 0.5), "structure": space(2.0, 0.9)}) == (False, [])
    suspected, reasons = copying_verdict({"features": space(-3.5, 0.5), "structure": space(0.0, 0.5)})
    assert suspected and reasons == ["features: C_T = -3.50 < -3"]
    suspected, reasons = copying_verdict({"features": space(1.0, 0.5), "structure": space(None, 1e-4)})
    assert suspected and reasons == ["structure: copied-share p-value 0.0001 < 0.001"]
    # spaces outside the rule (raw pixels) never decide
    assert copying_verdict({"features": space(0.0, 0.5), "pixels": space(-9.0, 0.0)}) == (False, [])
