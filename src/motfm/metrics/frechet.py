"""Fréchet distance between Gaussian fits of feature sets (FID, Heusel et al. 2017), and a cache for
reference statistics.

Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
Eq. 6: for N(mu1, S1) and N(mu2, S2)

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

Everything is computed in float64 with numpy. The trace term uses
``Tr (S1 S2)^(1/2) = ||L1^T L2||_*``, the nuclear norm (sum of singular values) of the product of factors
``S = L L^T``: the eigenvalues of ``S1 S2`` are those of ``L1^T S2 L1 = (L1^T L2)(L1^T L2)^T``, i.e. the
squared singular values of ``L1^T L2``. The factors come from symmetric eigendecompositions,
``L = V diag(lambda)^(1/2)`` over the eigenvalues above the rank tolerance of ``numpy.linalg.matrix_rank``
(``lambda_max * F * eps``; smaller ones, including round-off negatives, are dropped as numerical zeros).
Everything stays real, no eps offset is needed, rank-deficient covariances (fewer samples than feature
dimensions) shrink the SVD to ``rank x rank``, and no square root of a near-zero eigenvalue of the product is
taken: a set compared with itself gives ~1e-13 where the ``scipy.linalg.sqrtm`` route of the TF/pytorch-fid
code (with its eps-offset retry) gives ~1e-6. On well-conditioned inputs both agree to round-off.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motfm.io.atomic import atomic_path

ArrayLike = np.ndarray | torch.Tensor

_FORMAT_VERSION = 1


def _to_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """``L [F, r]`` with ``L L^T = sigma`` from ``eigh``, eigenvalues below the rank tolerance dropped."""
    eigval, eigvec = np.linalg.eigh((sigma + sigma.T) / 2)
    keep = eigval > max(eigval.max(), 0.0) * sigma.shape[0] * np.finfo(np.float64).eps
    return eigvec[:, keep] * np.sqrt(eigval[keep])


def trace_sqrt_product(sigma1: ArrayLike, sigma2: ArrayLike) -> float:
    """``Tr (S1 S2)^(1/2)`` for two covariance matrices ``[F, F]``, in float64.

    Computed as the sum of the singular values of ``L1^T L2`` for factors ``S = L L^T``; see the module
    docstring.
    """
    product = _psd_factor(_to_float64(sigma1)).T @ _psd_factor(_to_float64(sigma2))
    if product.size == 0:
        return 0.0
    return float(np.linalg.svd(product, compute_uv=False).sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, Eq. 6).

    Args:
        mu1: mean ``[F]``.
        sigma1: covariance ``[F, F]``.
        mu2: mean ``[F]``.
        sigma2: covariance ``[F, F]``.

    Returns:
        ``||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` as a Python float (the value
        reported as "FID" when the features are InceptionV3 pool3 activations).
    """
    m1, m2 = _to_float64(mu1), _to_float64(mu2)
    s1, s2 = _to_float64(sigma1), _to_float64(sigma2)
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"means must be vectors of equal length, got {m1.shape} and {m2.shape}")
    dim = m1.shape[0]
    if s1.shape != (dim, dim) or s2.shape != (dim, dim):
        raise ValueError(f"covariances must be [{dim}, {dim}], got {s1.shape} and {s2.shape}")
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set.

    Args:
        features: ``[N, F]`` with ``N >= 2``.

    Returns:
        ``(mu [F], sigma [F, F])`` in float64; ``sigma`` uses the ``N - 1`` denominator.
    """
    f = _to_float64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, F] with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def fid_from_features(real: ArrayLike, fake: ArrayLike) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets.

    Args:
        real: ``[N, F]`` reference features.
        fake: ``[M, F]`` generated features.

    Returns:
        The squared Fréchet distance (FID when the features are InceptionV3 pool3 activations).
    """
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def fid_bootstrap(
    real_stats: tuple[ArrayLike, ArrayLike], fake: ArrayLike, draws: int, seed: int = 0
) -> np.ndarray:
    """FIDs of ``draws`` bootstrap resamples of the generated features (drawn with replacement; the
    reference statistics fixed), whose spread is the sampling uncertainty of the reported FID (Efron &
    Tibshirani 1993, Ch. 6).

    Each resample's covariance ``S2 = Xc^T Xc / (M - 1)`` has the factor ``L2 = Xc^T / sqrt(M - 1)``, so
    ``Tr (S1 S2)^(1/2)`` is the sum of the singular values of the small ``[r, M]`` matrix ``L1^T L2`` with
    ``L1`` computed once: a draw costs O(M F r), not an ``[F, F]`` decomposition.

    Args:
        real_stats: ``(mu [F], sigma [F, F])`` of the reference.
        fake: ``[M, F]`` generated features.
        draws: number of resamples.
        seed: seed of the resampling.

    Returns:
        ``[draws]`` float64 FIDs.
    """
    mu1, s1 = _to_float64(real_stats[0]), _to_float64(real_stats[1])
    f = _to_float64(fake)
    m = f.shape[0]
    if m < 2 or draws < 1:
        raise ValueError(f"need >= 2 generated features and >= 1 draw, got {m} and {draws}")
    l1t = _psd_factor(s1).T
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    for i in range(draws):
        x = f[rng.integers(0, m, m)]
        mu2 = x.mean(axis=0)
        xc = (x - mu2) / np.sqrt(m - 1)
        tr_sqrt = np.linalg.svd(l1t @ xc.T, compute_uv=False).sum()
        diff = mu1 - mu2
        out[i] = diff @ diff + np.trace(s1) + np.sum(xc * xc) - 2.0 * tr_sqrt
    return out


def _canonical(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON round-trip of ``meta``: what a stored copy of it compares equal to."""
    return json.loads(json.dumps(dict(meta), sort_keys=True, default=str))


def save_statistics(
    path: str | os.PathLike[str], mu: ArrayLike, sigma: ArrayLike, meta: Mapping[str, Any]
) -> None:
    """Write reference statistics and their provenance to an ``.npz`` file, atomically.

    Args:
        path: destination, conventionally ending in ``.npz``.
        mu: mean ``[F]``.
        sigma: covariance ``[F, F]``.
        meta: JSON-serialisable provenance, e.g. ``{"extractor": ..., "weights_hash": ..., "dataset": ...,
            "split": ..., "num_samples": ...}``; :func:`load_statistics` compares it with what the caller
            expects.
    """
    mu_arr, sigma_arr = _to_float64(mu), _to_float64(sigma)
    meta_json = json.dumps({"format_version": _FORMAT_VERSION, **_canonical(meta)}, sort_keys=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=mu_arr, sigma=sigma_arr, meta_json=np.array(meta_json))


def load_statistics(
    path: str | os.PathLike[str], expected_meta: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Read statistics written by :func:`save_statistics` if they were made the way the caller expects.

    Every key of ``expected_meta`` (e.g. extractor name, weights hash, dataset and split) must be stored with
    an equal value; keys stored but not expected (e.g. ``num_samples``) are not compared.

    Args:
        path: the ``.npz`` file.
        expected_meta: the provenance the statistics must have.

    Returns:
        ``(mu, sigma)`` in float64, or ``None`` when the file does not exist or is stale (a ``UserWarning``
        names the keys that differ); the caller then recomputes and overwrites it.
    """
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        stored = json.loads(str(data["meta_json"]))
        mu, sigma = data["mu"], data["sigma"]
    expected = {"format_version": _FORMAT_VERSION, **_canonical(expected_meta)}
    mismatched = {k: (stored.get(k), v) for k, v in expected.items() if stored.get(k) != v}
    if mismatched:
        details = ", ".join(f"{k}: stored {s!r} != expected {e!r}" for k, (s, e) in mismatched.items())
        warnings.warn(f"ignoring stale feature statistics {path} ({details})", UserWarning, stacklevel=2)
        return None
    return mu, sigma
