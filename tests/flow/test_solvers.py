import math

import pytest
import torch

from motfm.flow.solvers import (
    EULER,
    FIXED_STEP_SOLVERS,
    HEUN,
    MIDPOINT,
    RALSTON3,
    RK4,
    TIME_GRIDS,
    guided_velocity,
    integrate,
    seed_for,
    seeded_noise,
    solver_nfe,
    time_grid,
)


def test_euler_constant_field_is_exact_in_one_step():
    x0 = torch.randn(3, 1, 4, 4)
    c = torch.randn(1, 1, 4, 4)
    res = integrate(lambda x, t: c.expand_as(x), x0, "euler", steps=1)
    assert torch.allclose(res.x, x0 + c)
    assert res.nfe == 1


def test_one_euler_step_is_x0_plus_v_at_t0_not_identity():
    x0 = torch.randn(2, 1, 4, 4)
    seen_t = []

    def v(x, t):
        seen_t.append(t.clone())
        return 2 * x + 1

    res = integrate(v, x0, "euler", steps=1)
    assert torch.allclose(res.x, x0 + 2 * x0 + 1)
    assert not torch.allclose(res.x, x0)
    assert len(seen_t) == 1 and torch.all(seen_t[0] == 0) and seen_t[0].shape == (2,)


@pytest.mark.parametrize(
    ("solver", "steps", "order"), [("euler", 100, 1), ("midpoint", 20, 2), ("rk4", 10, 4)]
)
def test_linear_ode_matches_exponential(solver, steps, order):
    x0 = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    res = integrate(lambda x, t: x, x0, solver, steps=steps)
    err = (res.x - math.e).abs().max().item()
    h = 1 / steps
    assert err < 2 * h**order, err
    # order check: halving the step divides the error by about 2^order
    res2 = integrate(lambda x, t: x, x0, solver, steps=2 * steps)
    err2 = (res2.x - math.e).abs().max().item()
    assert err / err2 == pytest.approx(2**order, rel=0.15)


@pytest.mark.parametrize(
    ("solver", "nfe"),
    [
        ("euler", lambda n: n),
        ("heun", lambda n: 2 * n - 1),
        ("midpoint", lambda n: 2 * n),
        ("rk4", lambda n: 4 * n - 1),
    ],
)
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_nfe_counts(solver, nfe, steps):
    calls = []

    def v(x, t):
        calls.append(1)
        return -x

    res = integrate(v, torch.randn(2, 1, 2, 2), solver, steps=steps)
    # heun's last step is Euler's, rk4's Ralston's third-order method: neither evaluates at t = 1
    assert res.nfe == len(calls) == nfe(steps) == solver_nfe(solver, steps)


def test_dopri5_is_accurate_and_counts():
    calls = []

    def v(x, t):
        calls.append(1)
        return x * torch.cos(t).view(-1, 1, 1, 1)

    x0 = torch.ones(2, 1, 2, 2, dtype=torch.float64)
    res = integrate(v, x0, "dopri5", rtol=1e-8, atol=1e-8)
    assert torch.allclose(res.x, torch.full_like(x0, math.exp(math.sin(1.0))), atol=1e-6)
    assert res.nfe == len(calls) > 6


def test_trajectory_output():
    res = integrate(
        lambda x, t: torch.ones_like(x), torch.zeros(2, 1, 2, 2), "euler", 4, return_trajectory=True
    )
    assert res.trajectory.shape == (5, 2, 1, 2, 2)
    assert torch.allclose(res.times, torch.linspace(0, 1, 5))
    assert torch.allclose(res.trajectory[:, 0, 0, 0, 0], torch.linspace(0, 1, 5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown solver"):
        integrate(lambda x, t: x, torch.zeros(1, 1, 2, 2), "heun3")
    with pytest.raises(ValueError, match="steps"):
        integrate(lambda x, t: x, torch.zeros(1, 1, 2, 2), "euler", steps=0)


def test_seeded_noise_depends_only_on_seed_and_index():
    a = seeded_noise((1, 4, 4), [0, 1, 2, 3], seed=7)
    b = torch.cat([seeded_noise((1, 4, 4), [2, 3], seed=7), seeded_noise((1, 4, 4), [0, 1], seed=7)])
    assert torch.equal(a, b[[2, 3, 0, 1]])
    assert not torch.equal(a, seeded_noise((1, 4, 4), [0, 1, 2, 3], seed=8))
    assert seed_for(1, 2) != seed_for(2, 1)


def test_guidance_scale_one_equals_conditional_and_costs_no_extra_nfe():
    calls = []

    def net(x, t, *, cond=None, mask=None):
        calls.append(x.shape[0])
        return x * (cond.float().view(-1, 1, 1, 1) + 1)

    x0, cond, null = torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 2]), torch.full((3,), 5)
    v1, evals = guided_velocity(net, cond, None, 1.0, null)
    res = integrate(v1, x0, "euler", 2, evals_per_call=evals)
    assert res.nfe == 2 and calls == [3, 3]
    calls.clear()
    v2, evals = guided_velocity(net, cond, None, 3.0, null)
    t = torch.full((3,), 0.5)
    expected = net(x0, t, cond=null) + 3.0 * (net(x0, t, cond=cond) - net(x0, t, cond=null))
    calls.clear()
    assert torch.allclose(v2(x0, t), expected)
    assert calls == [6]  # both branches in one batched call
    assert integrate(v2, x0, "midpoint", 2, evals_per_call=evals).nfe == 8


@pytest.mark.parametrize("kind", TIME_GRIDS)
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_time_grids_go_from_0_to_1_increasing(kind, steps):
    g = time_grid(steps, kind, shift=3.0)
    assert g.shape == (steps + 1,) and g[0] == 0 and g[-1] == 1
    assert torch.all(g[1:] > g[:-1])


def test_shifted_grid_is_denser_near_the_noise_and_edm_near_both_ends():
    uniform, shifted, edm = time_grid(10), time_grid(10, "shifted", shift=3.0), time_grid(10, "edm")
    assert torch.all(shifted[1:-1] < uniform[1:-1])  # s > 1: more steps near t = 0
    assert torch.allclose(time_grid(10, "shifted", shift=1.0), uniform)
    # the shift formula t = u / (u + s (1 - u)) at u = 0.5 is 1 / (1 + s)
    assert shifted[5].item() == pytest.approx(1 / 4)
    widths = edm.diff()
    assert widths[0] < widths[5] and widths[-1] < widths[5]  # fine steps near both ends, coarse in between


@pytest.mark.parametrize("kind", ["shifted", "edm"])
@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_every_fixed_step_solver_keeps_its_order_on_nonuniform_grids(kind, solver, order):
    x0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)

    def err(steps):
        grid = time_grid(steps, kind, shift=2.0, rho=3.0).double()
        return (integrate(lambda x, t: x, x0, solver, steps, grid=grid).x - math.e).abs().item()

    assert err(40) / err(80) == pytest.approx(2**order, rel=0.25)


def test_nfe_is_exact_on_any_grid():
    calls = []

    def v(x, t):
        calls.append(float(t[0]))
        return x

    grid = time_grid(3, "edm")
    res = integrate(v, torch.zeros(2, 1, 2, 2), "heun", 3, grid=grid)
    assert res.nfe == len(calls) == 5
    g = grid.tolist()
    assert calls == pytest.approx([0.0, g[1], g[1], g[2], g[2]])  # never at t_N = 1


@pytest.mark.parametrize("solver", list(FIXED_STEP_SOLVERS))
@pytest.mark.parametrize("steps", [1, 4])
def test_no_fixed_step_solver_evaluates_the_field_at_the_data_end(solver, steps):
    """The field at t = 1 is learned only on the data: whatever it says there cannot matter (for heun: EDM's
    Algorithm 1, its last step is Euler's)."""
    x0 = torch.randn(3, 1, 4, 4, dtype=torch.float64)

    def v(x, t):
        return x + 5.0 * (t[:, None, None, None] == 1.0)  # a velocity that is wrong at t = 1 only

    torch.testing.assert_close(
        integrate(v, x0, solver, steps=steps).x, integrate(lambda x, t: x, x0, solver, steps=steps).x
    )


@pytest.mark.parametrize(("solver", "nfe", "growth"), [("heun", 1, 2.0), ("rk4", 3, 1 + 1 + 1 / 2 + 1 / 6)])
def test_one_step_of_heun_and_rk4_is_their_last_step_method(solver, nfe, growth):
    # dx/dt = x over [0, 1] in one step: Euler gives 1 + h, a third-order method the Taylor polynomial to h^3
    x0 = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    one_step = integrate(lambda x, t: x, x0, solver, steps=1)
    assert one_step.nfe == nfe
    torch.testing.assert_close(one_step.x, growth * x0)


@pytest.mark.parametrize(("method", "order"), [(EULER, 1), (MIDPOINT, 2), (HEUN, 2), (RALSTON3, 3), (RK4, 4)])
def test_butcher_tableaux_satisfy_their_order_conditions(method, order):
    """The order conditions up to order 4 (Butcher 2016, Sec. 31, Table 311(II))."""
    a = torch.zeros(method.stages, method.stages, dtype=torch.float64)
    for i, row in enumerate(method.a):
        a[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    b, c = (torch.tensor(v, dtype=torch.float64) for v in (method.b, method.c))
    assert len(method.a) == len(method.c) == method.stages
    torch.testing.assert_close(a.sum(1), c)  # the stage times are consistent with the stages
    conditions = [(1, b.sum(), 1.0)]
    conditions += [(2, b @ c, 1 / 2)]
    conditions += [(3, b @ c**2, 1 / 3), (3, b @ a @ c, 1 / 6)]
    conditions += [
        (4, b @ c**3, 1 / 4),
        (4, (b * c) @ a @ c, 1 / 8),
        (4, b @ a @ c**2, 1 / 12),
        (4, b @ a @ a @ c, 1 / 24),
    ]
    holds = {p: True for p in range(1, 5)}
    for p, value, exact in conditions:
        holds[p] &= abs(float(value) - exact) < 1e-12
    assert all(holds[p] for p in range(1, order + 1))  # every condition up to its order
    assert order == 4 or not holds[order + 1]  # and not all of the next
