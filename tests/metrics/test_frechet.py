"""Fréchet distance and the reference-statistics cache."""

import numpy as np
import pytest
import scipy.linalg
import torch

from motfm.metrics.frechet import (
    feature_statistics,
    fid_bootstrap,
    fid_from_features,
    frechet_distance,
    load_statistics,
    save_statistics,
)


def _random_cov(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_set_with_itself_is_zero() -> None:
    feats = torch.randn(200, 16)
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_rank_deficient_set_with_itself_is_zero() -> None:
    # fewer samples than dimensions: singular covariance, eigenvalues clipped, no NaN or complex parts
    feats = np.random.default_rng(0).standard_normal((10, 64))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-10)


def test_diagonal_closed_form() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    s1, s2 = rng.uniform(0.1, 2.0, 8), rng.uniform(0.1, 2.0, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_full_covariance_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    s1, s2 = _random_cov(rng, 12), _random_cov(rng, 12)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_symmetric_and_accepts_tensors() -> None:
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = _random_cov(rng, 6), _random_cov(rng, 6)
    d12 = frechet_distance(mu1, s1, mu2, s2)
    d21 = frechet_distance(torch.from_numpy(mu2).float(), torch.from_numpy(s2).float(), mu1, s1)
    assert d12 == pytest.approx(d21, rel=1e-5)
    assert d12 > 0


def test_feature_statistics_unbiased() -> None:
    feats = np.random.default_rng(4).standard_normal((50, 5))
    mu, sigma = feature_statistics(feats)
    assert mu.dtype == np.float64 and sigma.shape == (5, 5)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False, ddof=1))
    with pytest.raises(ValueError):
        feature_statistics(feats[:1])


def test_mean_shift_grows() -> None:
    real = torch.randn(300, 4)
    near = fid_from_features(real, real + 0.1)
    far = fid_from_features(real, real + 1.0)
    assert near == pytest.approx(4 * 0.01, rel=1e-6) and far == pytest.approx(4.0, rel=1e-6)


def test_statistics_cache_round_trip_and_rejection(tmp_path) -> None:
    mu, sigma = feature_statistics(np.random.default_rng(5).standard_normal((20, 3)))
    meta = {"extractor": "random_conv2d", "weights_hash": "abc123", "dataset": "echo", "split": "test"}
    path = tmp_path / "stats" / "ref.npz"
    assert load_statistics(path, meta) is None  # missing file
    save_statistics(path, mu, sigma, {**meta, "num_samples": 20})
    assert [p.name for p in path.parent.iterdir()] == ["ref.npz"]  # no temporary left behind
    loaded = load_statistics(path, meta)
    assert loaded is not None
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)
    with pytest.warns(UserWarning, match="weights_hash"):
        assert load_statistics(path, {**meta, "weights_hash": "other"}) is None
    with pytest.warns(UserWarning, match="split"):
        assert load_statistics(path, {**meta, "split": "train"}) is None


def test_fid_bootstrap_draws_equal_the_full_computation_on_their_resamples():
    g = np.random.default_rng(0)
    real, fake = g.normal(size=(300, 12)), g.normal(0.3, 1.2, size=(40, 12))
    stats = feature_statistics(real)
    fids = fid_bootstrap(stats, fake, draws=3, seed=5)
    rng = np.random.default_rng(5)
    for value in fids:
        resample = fake[rng.integers(0, 40, 40)]
        assert value == pytest.approx(frechet_distance(*stats, *feature_statistics(resample)), rel=1e-9)
    spread = fid_bootstrap(stats, fake, draws=200, seed=0).std()
    assert 0 < spread < fid_from_features(real, fake)
