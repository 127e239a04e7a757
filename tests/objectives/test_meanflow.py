"""MeanFlow: the identity in the suite's convention, its JVP, one-step sampling, and a toy problem."""

import math

import pytest
import torch
from torch import nn

from motfm.objectives.base import SampleNoise
from motfm.objectives.flow_matching import FlowMatching
from motfm.objectives.meanflow import MeanFlow, meanflow_target

MU, S = torch.tensor([2.0, -1.0]), 0.5  # data N(MU, S^2 I); noise N(0, I)


def sigma(t):
    """Std of x_t = t x1 + (1 - t) x0 for independent Gaussians."""
    return torch.sqrt((1 - t) ** 2 + (t * S) ** 2)


def exact_u(x, t, r):
    """Average velocity of the Gaussian-to-Gaussian flow: x_t = t MU + sigma_t z along each trajectory."""
    t, r = t[:, None], r[:, None]
    z = (x - t * MU) / sigma(t)
    dsig = torch.where(
        (r - t).abs() > 1e-9,
        (sigma(r) - sigma(t)) / torch.where((r - t).abs() > 1e-9, r - t, torch.ones_like(r)),
        (t * S**2 - (1 - t)) / sigma(t),  # d sigma / dt at r = t
    )
    return MU + dsig * z


def exact_v(x, t):
    return exact_u(x, t, t)


class PointNet(nn.Module):
    """An MLP average-velocity model of 2D points with the suite's network signature."""

    num_classes = num_mask_labels = 0

    def __init__(self, width=128):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(4, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2)
        )

    def forward(self, x, t, *, r=None, cond=None, mask=None):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        r = t if r is None else torch.as_tensor(r, dtype=x.dtype).expand(x.shape[0])
        return self.mlp(torch.cat([x, t[:, None], (r - t)[:, None]], dim=1))


def test_exact_average_velocity_satisfies_the_identity_and_has_zero_loss():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(512, 2, generator=g, dtype=torch.float64)
    t = torch.rand(512, generator=g, dtype=torch.float64) * 0.9
    r = t + (1 - t) * torch.rand(512, generator=g, dtype=torch.float64)
    xt = t[:, None] * MU.double() + sigma(t)[:, None] * x0  # points on the exact trajectories
    u, target = meanflow_target(exact_u, xt, t, r, exact_v(xt, t))
    assert torch.allclose(u, target, atol=1e-10)  # the loss of the exact field is zero
    # and the average velocity really transports x_t to x_r
    xr = r[:, None] * MU.double() + sigma(r)[:, None] * x0
    assert torch.allclose(xt + (r - t)[:, None] * u, xr, atol=1e-12)


def test_target_reduces_to_flow_matching_when_r_equals_t():
    net = PointNet().double()
    g = torch.Generator().manual_seed(1)
    xt, v = torch.randn(64, 2, generator=g).double(), torch.randn(64, 2, generator=g).double()
    t = torch.rand(64, generator=g).double()
    u, target = meanflow_target(lambda x, t_, r_: net(x, t_, r=r_), xt, t, t, v)
    assert torch.equal(target, v)  # the flow-matching target u_t = x1 - x0
    assert torch.allclose(u, net(xt, t))


def test_jvp_tangent_matches_finite_differences():
    net = PointNet().double()
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(16, 2, generator=g).double(), torch.randn(16, 2, generator=g).double()
    t = torch.rand(16, generator=g).double() * 0.5
    r = t + 0.3
    u, target = meanflow_target(lambda x_, t_, r_: net(x_, t_, r=r_), x, t, r, v)
    h = 1e-6
    dudt = (net(x + h * v, t + h, r=r) - net(x - h * v, t - h, r=r)) / (2 * h)
    assert torch.allclose(target, v + (r - t)[:, None] * dudt, atol=1e-8)


def test_one_step_sampling_costs_one_evaluation_and_is_x0_plus_u():
    calls = []
    net = PointNet()

    def counted(x, t, *, r=None, cond=None, mask=None):
        calls.append((t.clone(), r.clone()))
        return net(x, t, r=r)

    counted.null_cond = None
    noise = SampleNoise((2,), [0, 1, 2], seed=3)
    res = MeanFlow().sample(counted, noise, "meanflow", 1)
    assert res.nfe == 1 and len(calls) == 1
    assert torch.equal(calls[0][0], torch.zeros(3)) and torch.equal(calls[0][1], torch.ones(3))
    with torch.no_grad():
        assert torch.allclose(res.x, noise.x0 + net(noise.x0, 0.0, r=1.0))
    assert MeanFlow().sample(counted, SampleNoise((2,), [0], 3), "meanflow", 4).nfe == 4


def test_meanflow_refuses_flow_solvers_and_vice_versa():
    with pytest.raises(ValueError, match="does not apply to a 'meanflow' model"):
        MeanFlow().check_sampler("euler", 1)
    with pytest.raises(ValueError, match="does not apply to a 'fm' model"):
        FlowMatching().check_sampler("meanflow", 1)


class AffineNet(nn.Module):
    """u = a(t, r) + b(t, r) * x with a small MLP for a and b: the exact average velocity of Gaussian data is
    of this form, so the test measures the objective, not the capacity of the network."""

    num_classes = num_mask_labels = 0
    null_cond = None

    def __init__(self, width=64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 4)
        )

    def forward(self, x, t, *, r=None, cond=None, mask=None):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        r = t if r is None else torch.as_tensor(r, dtype=x.dtype).expand(x.shape[0])
        a, b = self.mlp(torch.stack([t, r - t], 1)).chunk(2, 1)
        return a + b * x


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threading costs more than it gives
    yield
    torch.set_num_threads(threads)


def test_small_mlp_learns_one_step_gaussian_samples(one_thread):
    torch.manual_seed(0)
    net = AffineNet()
    objective = MeanFlow()  # the paper's settings: logit-normal times, 25% r != t, adaptive weight p = 1
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        x1 = MU + S * torch.randn(256, 2, generator=g)
        loss, _ = objective.loss(net, {"image": x1}, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = objective.sample(net, SampleNoise((2,), list(range(4096)), seed=0), "meanflow", 1).x
    assert torch.allclose(x.mean(0), MU, atol=0.1), x.mean(0)
    assert torch.allclose(x.std(0), torch.full((2,), S), atol=0.1), x.std(0)
    assert math.isfinite(loss.item())
