"""Fidelity and diversity from k-nearest-neighbour balls in feature space.

* Improved precision and recall (Kynkäänniemi et al. 2019, NeurIPS, "Improved Precision and Recall Metric for
  Assessing Generative Models"): the manifold of a set is the union of balls around its points, each with the
  radius of its k-th nearest neighbour in the set, ``f(y, X) = 1 if |y - x| <= NN_k(x) for some x in X``;
  **precision** = mean over generated ``y`` of ``f(y, real)``, **recall** = mean over real ``x`` of
  ``f(x, generated)``. The paper uses k = 3 (also its released code's default) as the compromise between
  covering the manifold (larger k) and resolving its holes (smaller k); we keep k = 3.
* Density and coverage (Naeem et al. 2020, ICML, "Reliable Fidelity and Diversity Metrics for Generative
  Models"): only real balls (outliers among the generated samples cannot inflate them), with k = 5 as the
  paper recommends. **density** = ``1 / (k M) * sum_j sum_i 1[y_j in B(x_i, NN_k(x_i))]`` (expectation 1
  when the generated and real distributions are equal, any M and N; above 1 when samples crowd dense
  regions); **coverage** = share of real ``x_i`` whose ball holds at least one generated sample (expectation
  ``1 - prod_{t=1..k} (N - t) / (N - t + M)`` for equal distributions, ``1 - 2^-k`` = 0.969 for k = 5 and
  M = N large).

A point's own ball excludes the point itself: ``NN_k`` is the k-th nearest *other* point. Ball membership
uses ``<=`` (closed balls), on squared distances with a relative tolerance of
:data:`motfm.metrics.neighbours.GRAM_RTOL` so that exact duplicates lie inside each other's balls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from motfm.metrics.batching import items_per_call
from motfm.metrics.neighbours import (
    DEFAULT_BLOCK_ELEMENTS,
    GRAM_RTOL,
    flatten,
    knn,
    squared_distances,
)

PRECISION_RECALL_K = 3
DENSITY_COVERAGE_K = 5


def kth_neighbour_radii(points: Tensor, k: int, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> Tensor:
    """The distance of each point to its k-th nearest other point of the set.

    Args:
        points: ``[N, F]`` with ``N > k``.
        k: neighbour rank.

    Returns:
        ``[N]`` float64.
    """
    if points.shape[0] <= k:
        raise ValueError(f"k-th neighbour radii need more than k={k} points, got {points.shape[0]}")
    return knn(points, None, k, block_elements)[0][:, k - 1]


def manifold_metrics(
    real: Tensor,
    fake: Tensor,
    k_precision_recall: int = PRECISION_RECALL_K,
    k_density_coverage: int = DENSITY_COVERAGE_K,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> dict[str, float | int]:
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

    Args:
        real: ``[N, F]`` real features, ``N > max(k)``.
        fake: ``[M, F]`` generated features, ``M > k_precision_recall`` (recall needs generated balls).
        k_precision_recall: the k of precision and recall.
        k_density_coverage: the k of density and coverage.
        block_elements: the most float64 values of one distance block (memory bound).

    Returns:
        ``{"precision", "recall", "density", "coverage"}`` plus the two k as ``"pr_k"`` and ``"dc_k"``.

    Raises:
        ValueError: a set too small for its k.
    """
    if real.shape[0] <= max(k_precision_recall, k_density_coverage) or fake.shape[0] <= k_precision_recall:
        raise ValueError(
            f"precision/recall (k={k_precision_recall}) and density/coverage (k={k_density_coverage}) need "
            f"more real and generated items than k; got {real.shape[0]} real, {fake.shape[0]} generated"
        )
    x, y = flatten(real), flatten(fake)
    k_max = max(k_precision_recall, k_density_coverage)
    real_knn = knn(x, None, k_max, block_elements)[0]
    real_pr = real_knn[:, k_precision_recall - 1].square()
    real_dc = real_knn[:, k_density_coverage - 1].square()
    fake_pr = kth_neighbour_radii(y, k_precision_recall, block_elements).square()
    x_sq, y_sq = x.square().sum(1), y.square().sum(1)

    precise = torch.zeros(y.shape[0], dtype=torch.bool)
    in_real_balls = torch.zeros(y.shape[0], dtype=torch.int64)
    covered = torch.zeros(x.shape[0], dtype=torch.bool)
    recalled = torch.zeros(x.shape[0], dtype=torch.bool)
    rows = items_per_call(x.shape[0], block_elements)
    for start in range(0, y.shape[0], rows):
        stop = start + rows
        d2 = squared_distances(y[start:stop], x, y_sq[start:stop], x_sq)
        tol = GRAM_RTOL * (y_sq[start:stop, None] + x_sq[None, :])
        precise[start:stop] = (d2 <= real_pr[None, :] + tol).any(1)
        inside_dc = d2 <= real_dc[None, :] + tol
        in_real_balls[start:stop] = inside_dc.sum(1)
        covered |= inside_dc.any(0)
        recalled |= (d2 <= fake_pr[start:stop, None] + tol).any(0)
    return {
        "precision": precise.double().mean().item(),
        "recall": recalled.double().mean().item(),
        "density": in_real_balls.sum().item() / (k_density_coverage * y.shape[0]),
        "coverage": covered.double().mean().item(),
        "pr_k": k_precision_recall,
        "dc_k": k_density_coverage,
    }
