import pytest
import torch

from motfm.flow.paths import CondOTPath, TimeSampler, expand_time


@pytest.mark.parametrize("shape", [(4, 1, 8, 8), (3, 2, 4, 6, 8)])
def test_cond_ot_path_matches_closed_form(shape):
    x0, x1, t = torch.randn(shape), torch.randn(shape), torch.rand(shape[0])
    ps = CondOTPath().sample(x0, x1, t)
    for i in range(shape[0]):
        assert torch.allclose(ps.xt[i], t[i] * x1[i] + (1 - t[i]) * x0[i], atol=1e-6)
    assert torch.allclose(ps.ut, x1 - x0)


def test_path_end_points_and_sigma_min():
    x0, x1 = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    path = CondOTPath(sigma_min=0.1)
    assert torch.allclose(path.sample(x0, x1, torch.zeros(2)).xt, x0)
    assert torch.allclose(path.sample(x0, x1, torch.ones(2)).xt, x1 + 0.1 * x0, atol=1e-6)
    ps = path.sample(x0, x1, torch.full((2,), 0.3))
    # u_t is the time derivative of x_t: check by finite differences.
    eps = 1e-3
    fd = (path.sample(x0, x1, torch.full((2,), 0.3 + eps)).xt - ps.xt) / eps
    assert torch.allclose(fd, ps.ut, atol=1e-2)


def test_expand_time_rejects_wrong_batch():
    with pytest.raises(ValueError, match=r"\[B\]"):
        expand_time(torch.rand(3), torch.zeros(4, 1, 2, 2))
    assert expand_time(torch.tensor(0.5), torch.zeros(4, 1, 2, 2, 2)).shape == (1, 1, 1, 1, 1)


def test_time_samplers_range_and_shape():
    g = torch.Generator().manual_seed(0)
    for kind in ("uniform", "logit_normal"):
        t = TimeSampler(kind)(10_000, generator=g)
        assert t.shape == (10_000,) and t.min() >= 0 and t.max() <= 1
        assert abs(t.mean().item() - 0.5) < 0.02
    # logit-normal concentrates mass in the middle.
    ln = TimeSampler("logit_normal")(10_000, generator=g)
    un = TimeSampler("uniform")(10_000, generator=g)
    assert ln.std() < un.std()
    with pytest.raises(ValueError, match="unknown time sampler"):
        TimeSampler("beta")
