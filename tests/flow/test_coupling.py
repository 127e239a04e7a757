import itertools

import pytest
import torch

from motfm.flow.coupling import Coupling, ot_permutation, pairwise_sq_dist


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("shape", [(8, 1, 4, 4), (5, 2, 2, 3, 3)])
def test_ot_is_permutation_and_never_costlier_than_independent(seed, shape):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(shape, generator=g), torch.randn(shape, generator=g) + 0.5
    perm = ot_permutation(x0, x1)
    assert sorted(perm.tolist()) == list(range(shape[0]))
    cost = pairwise_sq_dist(x0, x1)
    ot_cost = cost[perm, torch.arange(shape[0])].sum()
    assert ot_cost <= cost.diagonal().sum() + 1e-9


def test_ot_is_optimal_against_brute_force():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(6, 1, 3, 3, generator=g), torch.randn(6, 1, 3, 3, generator=g)
    cost = pairwise_sq_dist(x0, x1)
    best = min(sum(cost[p[j], j] for j in range(6)) for p in itertools.permutations(range(6)))
    perm = ot_permutation(x0, x1)
    assert torch.isclose(cost[perm, torch.arange(6)].sum(), torch.as_tensor(best, dtype=cost.dtype))


def test_coupling_reorders_noise_only():
    x0 = torch.randn(7, 1, 4, 4)
    x1 = x0[torch.randperm(7)] + 1e-3  # data that are a shuffled copy of the noise
    paired = Coupling("minibatch_ot")(x0, x1)
    assert torch.allclose(paired, x1, atol=1e-2)  # OT recovers the shuffle
    assert torch.equal(Coupling("independent")(x0, x1), x0)
    with pytest.raises(ValueError, match="unknown coupling"):
        Coupling("sinkhorn")
