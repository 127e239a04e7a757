"""Exact Euclidean k-nearest neighbours between sets of vectors (features or flattened images), in bounded
memory.

Distances are computed block by block from the Gram expansion ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` in float64
(a BLAS matrix product, so 10k x 10k sets of 2048-d features take seconds on a CPU); no block holds more than
``block_elements`` float64 values, whatever the set sizes. The expansion loses absolute precision near zero
(about ``1e-8 |a|`` for identical rows), so the distances of the ``k`` candidates kept per query are
recomputed directly from the differences ``a - b``: an exact copy is at distance 0.0, and the result equals a
brute-force search up to float64 rounding.

:class:`NearestNeighbours` takes the reference set in chunks, so a reference set streamed from disk (a
training split of thousands of images) never has to be in memory at once; :func:`knn` is the in-memory form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from motfm.metrics.batching import items_per_call

# 2^23 float64 values = 64 MiB per distance block.
DEFAULT_BLOCK_ELEMENTS = 1 << 23
# Relative rounding bound of the float64 Gram expansion for inputs of up to ~10^5 dimensions; only decides
# whether a point exactly on a ball's boundary (a duplicate, say) counts as inside.
GRAM_RTOL = 1e-12


def flatten(x: Tensor) -> Tensor:
    """``[N, *dims]`` -> ``[N, D]`` float64 (features pass through, images are flattened)."""
    return x.reshape(x.shape[0], -1).double()


def squared_distances(a: Tensor, b: Tensor, a_sq: Tensor | None = None, b_sq: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances ``[M, N]`` from the Gram expansion (clamped at 0).

    Args:
        a: ``[M, D]`` float64.
        b: ``[N, D]`` float64.
        a_sq: ``|a|^2`` ``[M]`` if already known.
        b_sq: ``|b|^2`` ``[N]`` if already known.
    """
    a_sq = a.square().sum(1) if a_sq is None else a_sq
    b_sq = b.square().sum(1) if b_sq is None else b_sq
    return (a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


class NearestNeighbours:
    """The exact ``k`` nearest references of a fixed query set, fed with reference chunks.

    Args:
        queries: ``[M, *dims]`` (features ``[M, F]`` or images ``[M, C, *spatial]``).
        k: neighbours per query.
        exclude_self: the queries are the reference set itself: reference ``j`` is never a neighbour of
            query ``j`` (the leave-one-out neighbours of a set).
        block_elements: the most float64 values of one distance block.
    """

    def __init__(
        self,
        queries: Tensor,
        k: int = 1,
        exclude_self: bool = False,
        block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.queries = flatten(queries)
        self.queries_sq = self.queries.square().sum(1)
        self.k, self.exclude_self, self.block_elements = k, exclude_self, block_elements
        m = self.queries.shape[0]
        self.distances = torch.full((m, k), float("inf"), dtype=torch.float64)
        self.indices = torch.full((m, k), -1, dtype=torch.int64)
        self.seen = 0

    def update(self, references: Tensor, offset: int | None = None) -> None:
        """Merge a chunk of references ``[n, *dims]`` whose global indices start at ``offset`` (default: right
        after the previous chunk)."""
        refs = flatten(references)
        if refs.shape[1] != self.queries.shape[1]:
            raise ValueError(
                f"queries have {self.queries.shape[1]} values per item, references {refs.shape[1]}"
            )
        offset = self.seen if offset is None else offset
        self.seen = max(self.seen, offset + refs.shape[0])
        refs_sq = refs.square().sum(1)
        keep = min(self.k, refs.shape[0])
        rows = items_per_call(max(refs.shape[0], keep * refs.shape[1]), self.block_elements)
        for start in range(0, self.queries.shape[0], rows):
            q = self.queries[start : start + rows]
            d2 = squared_distances(q, refs, self.queries_sq[start : start + rows], refs_sq)
            if self.exclude_self:
                own = torch.arange(start, start + q.shape[0]) - offset
                hit = (own >= 0) & (own < refs.shape[0])
                d2[hit.nonzero().squeeze(1), own[hit]] = float("inf")
            candidates = d2.topk(keep, dim=1, largest=False).indices
            exact = (q[:, None, :] - refs[candidates]).norm(dim=-1)
            exact = exact.masked_fill(d2.gather(1, candidates).isinf(), float("inf"))
            merged_d = torch.cat([self.distances[start : start + rows], exact], dim=1)
            merged_i = torch.cat([self.indices[start : start + rows], candidates + offset], dim=1)
            best = merged_d.topk(self.k, dim=1, largest=False)  # sorted ascending
            self.distances[start : start + rows] = best.values
            self.indices[start : start + rows] = merged_i.gather(1, best.indices)

    def result(self) -> tuple[Tensor, Tensor]:
        """``(distances [M, k] float64 ascending, indices [M, k] int64)`` over all references seen.

        Raises:
            ValueError: fewer than ``k`` references (``k + 1`` with ``exclude_self``) were seen.
        """
        if not torch.isfinite(self.distances).all():
            need = self.k + int(self.exclude_self)
            raise ValueError(f"{self.k} nearest neighbours need at least {need} references, got {self.seen}")
        return self.distances, self.indices


def knn(
    queries: Tensor,
    references: Tensor | None = None,
    k: int = 1,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours in Euclidean distance.

    Args:
        queries: ``[M, *dims]``.
        references: ``[N, *dims]``; ``None`` for the leave-one-out neighbours of ``queries`` within itself
            (an item is not its own neighbour; exact duplicates still are at distance 0).
        k: neighbours per query.
        block_elements: the most float64 values of one distance block (memory bound).

    Returns:
        ``(distances [M, k] float64, ascending; indices [M, k] int64 into references)``.
    """
    refs = queries if references is None else references
    finder = NearestNeighbours(queries, k, exclude_self=references is None, block_elements=block_elements)
    chunk = max(k, items_per_call(flatten(refs[:1]).shape[1], block_elements))
    for start in range(0, refs.shape[0], chunk):
        finder.update(refs[start : start + chunk], start)
    return finder.result()
