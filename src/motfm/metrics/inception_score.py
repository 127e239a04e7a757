"""Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs", Sec. 4).

``IS = exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the marginal class distribution of the evaluated set.
As in the original implementation, the set is cut (in order) into ``splits`` parts, the score is computed
on each part with that part's marginal, and the mean and standard deviation over parts are reported.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def inception_score(probs: Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score from class probabilities.

    Args:
        probs: ``[N, K]`` class probabilities ``p(y|x)`` (rows non-negative, summing to 1), e.g. the
            ``probs()`` of a classifier extractor in :mod:`motfm.metrics.extractors`.
        splits: number of consecutive parts (``1 <= splits <= N``); parts differ in size by at most one.

    Returns:
        ``(mean, std)`` over the parts (population standard deviation, as in Salimans et al.'s code). The
        score lies in ``[1, K]``: 1 when every prediction is the same, ``K`` for confident predictions spread
        uniformly over the ``K`` classes.
    """
    p = torch.as_tensor(probs).detach().to(torch.float64).cpu()
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, K], got shape {tuple(p.shape)}")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be in [1, N={p.shape[0]}], got {splits}")
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
        raise ValueError("probs rows must be non-negative and sum to 1 (apply softmax to logits first)")
    scores = []
    for part in torch.tensor_split(p, splits):
        marginal = part.mean(0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(1)
        scores.append(float(torch.exp(kl.mean())))
    arr = np.asarray(scores)
    return float(arr.mean()), float(arr.std())
