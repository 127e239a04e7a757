"""Couplings between noise x0 and data x1 within a training batch.

``independent`` pairs them as drawn. ``minibatch_ot`` solves the exact assignment problem on the
squared Euclidean cost inside the batch (Tong et al. 2024, "Improving and generalizing flow-based
generative models with minibatch optimal transport", Sec. 3.2; Pooladian et al. 2023), which
straightens the learned paths. We re-order the *noise*, so the data keep their labels and masks,
and we use an exact permutation (Hungarian algorithm) rather than sampling pairs from the plan with
replacement, which would duplicate some samples and drop others.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def pairwise_sq_dist(x0: Tensor, x1: Tensor) -> Tensor:
    """Squared Euclidean distances between flattened samples.

    Args:
        x0: ``[B, ...]``.
        x1: ``[B, ...]``.

    Returns:
        ``[B, B]`` cost with entry (i, j) = ||x0_i - x1_j||^2, in float64.
    """
    a = x0.reshape(x0.shape[0], -1).double()
    b = x1.reshape(x1.shape[0], -1).double()
    return torch.cdist(a, b).pow(2)


def ot_permutation(x0: Tensor, x1: Tensor) -> Tensor:
    """Permutation ``perm`` minimising sum_j ||x0[perm[j]] - x1[j]||^2.

    Args:
        x0: noise ``[B, C, *spatial]``.
        x1: data ``[B, C, *spatial]``.

    Returns:
        int64 ``[B]``, a permutation of ``0..B-1`` (on ``x0.device``).
    """
    cost = pairwise_sq_dist(x0, x1).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[cols] = rows
    return torch.as_tensor(perm, dtype=torch.long, device=x0.device)


class Coupling:
    """Pairs noise with data for a training batch.

    Args:
        kind: ``"independent"`` or ``"minibatch_ot"``.
    """

    def __init__(self, kind: str = "independent") -> None:
        if kind not in ("independent", "minibatch_ot"):
            raise ValueError(f"unknown coupling {kind!r}; expected 'independent' or 'minibatch_ot'")
        self.kind = kind

    def __call__(self, x0: Tensor, x1: Tensor) -> Tensor:
        """Return the noise re-ordered to pair with ``x1`` (``x1`` and its conditions stay in place).

        Args:
            x0: noise ``[B, C, *spatial]``.
            x1: data ``[B, C, *spatial]``.

        Returns:
            ``x0`` permuted, ``[B, C, *spatial]``.
        """
        if self.kind == "independent" or x0.shape[0] < 2:
            return x0
        with torch.no_grad():
            perm = ot_permutation(x0, x1)
        return x0[perm]
