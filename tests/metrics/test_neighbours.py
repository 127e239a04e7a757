"""Exact k-nearest neighbours against a brute-force reference."""

import pytest
import torch

from motfm.metrics.neighbours import NearestNeighbours, knn


def brute_force(queries: torch.Tensor, refs: torch.Tensor, k: int, exclude_self: bool = False):
    """Every pairwise distance from explicit differences in float64, fully sorted."""
    q, r = queries.reshape(len(queries), -1).double(), refs.reshape(len(refs), -1).double()
    d = (q[:, None, :] - r[None, :, :]).norm(dim=-1)
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    values, indices = d.sort(dim=1)
    return values[:, :k], indices[:, :k]


@pytest.mark.parametrize(("m", "n", "dims", "k"), [(37, 53, (16,), 1), (64, 200, (3, 8, 8), 4)])
def test_knn_matches_brute_force_with_tiny_blocks(m, n, dims, k) -> None:
    g = torch.Generator().manual_seed(m)
    queries, refs = torch.randn(m, *dims, generator=g), torch.randn(n, *dims, generator=g) * 2
    expected_d, expected_i = brute_force(queries, refs, k)
    # block_elements far below m * n forces many query blocks and many reference chunks
    for block in (50, 997, 1 << 20):
        d, i = knn(queries, refs, k, block_elements=block)
        assert torch.equal(i, expected_i), block
        assert torch.allclose(d, expected_d, rtol=1e-12, atol=1e-12)
        assert d.dtype == torch.float64 and i.dtype == torch.int64


def test_leave_one_out_excludes_only_the_item_itself() -> None:
    g = torch.Generator().manual_seed(1)
    points = torch.randn(40, 5, generator=g)
    points[7] = points[3]  # an exact duplicate is a neighbour at distance 0, the item itself is not
    d, i = knn(points, None, k=3, block_elements=64)
    expected_d, expected_i = brute_force(points, points, 3, exclude_self=True)
    assert torch.allclose(d, expected_d, atol=1e-12)
    assert (i != torch.arange(40)[:, None]).all()
    assert i[3, 0] == 7 and i[7, 0] == 3 and d[3, 0] == 0.0 and d[7, 0] == 0.0


def test_exact_copies_are_at_distance_zero_despite_large_norms() -> None:
    # the Gram expansion alone would give ~1e-8 * |x| instead of 0 here
    g = torch.Generator().manual_seed(2)
    refs = torch.randn(30, 2048, generator=g) * 100 + 500
    d, i = knn(refs[[4, 9, 4]], refs, k=2)
    assert d[:, 0].tolist() == [0.0, 0.0, 0.0] and i[:, 0].tolist() == [4, 9, 4]
    assert (d[:, 1] > 1000).all()


def test_streamed_chunks_equal_in_memory_search() -> None:
    g = torch.Generator().manual_seed(3)
    queries, refs = torch.randn(25, 12, generator=g), torch.randn(90, 12, generator=g)
    finder = NearestNeighbours(queries, k=2, block_elements=100)
    for start in (0, 40, 77):  # uneven chunks, as a dataset is read in batches
        finder.update(refs[start : {0: 40, 40: 77, 77: 90}[start]])
    assert finder.seen == 90
    d, i = finder.result()
    expected_d, expected_i = brute_force(queries, refs, 2)
    assert torch.equal(i, expected_i) and torch.allclose(d, expected_d, atol=1e-12)


def test_too_few_references_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 4 references"):
        knn(torch.randn(3, 2), None, k=3)
    with pytest.raises(ValueError, match="values per item"):
        NearestNeighbours(torch.randn(3, 2)).update(torch.randn(3, 5))
