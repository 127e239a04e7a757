"""Sampling: integrate dx/dt = v(x, t) from noise at t=0 to data at t=1.

Fixed-step solvers (``euler``, ``heun``, ``midpoint``, ``rk4``) step over a time grid (:func:`time_grid`:
uniform, shifted or EDM-style) held on the host, so the loop never synchronises with a GPU and the network
call can be a replayed CUDA graph; ``dopri5`` adapts its steps to ``rtol``/``atol`` through torchdiffeq
(Chen et al. 2018). Every call reports the number of network evaluations
(NFE) it actually used. Euler with one step is x1 = x0 + v(x0, 0): a single evaluation and a jump to
t=1 (the original MOTFM returned the untouched noise there). Classifier-free guidance (Ho & Salimans
2022, Eq. 6, in velocity form v = v_uncond + w (v_cond - v_uncond)) evaluates the conditional and
unconditional branches in one batched network call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchdiffeq import odeint


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method (Butcher 2016, "Numerical Methods for Ordinary Differential Equations",
    Sec. 23): stage ``i`` evaluates the field at ``t0 + c[i] h`` and ``x + h sum_j a[i][j] k_j`` (``j < i``);
    the step is ``x + h sum_i b[i] k_i``.

    Attributes:
        a: the strictly lower-triangular stage coefficients, row ``i`` holding ``i`` entries.
        b: the weights of the stages.
        c: the stage times, as fractions of the step.
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]

    @property
    def stages(self) -> int:
        """Field evaluations per step."""
        return len(self.b)


EULER = ButcherTableau(a=((),), b=(1.0,), c=(0.0,))
MIDPOINT = ButcherTableau(a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5))
# The explicit trapezoidal rule.
HEUN = ButcherTableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0))
# The classical fourth-order method.
RK4 = ButcherTableau(
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), c=(0.0, 0.5, 0.5, 1.0)
)
# Ralston's third-order method (Ralston 1962, "Runge-Kutta methods with minimum error bounds"): its stages
# stay inside the step (c < 1).
RALSTON3 = ButcherTableau(a=((), (0.5,), (0.0, 0.75)), b=(2 / 9, 1 / 3, 4 / 9), c=(0.0, 0.5, 0.75))


@dataclass(frozen=True)
class FixedStepSolver:
    """A fixed-step solver: ``method`` for every step but the last, ``last`` for the step onto the data end.

    The field at t = 1 is only learned on the data (there ``E[x0 | x1] = 0``, so a flow model answers about
    ``v(x, 1) = x``): a stage evaluated there at a solver's off-manifold point puts noise back into the image.
    So the last step uses a method whose stages all lie before t = 1: Heun's becomes Euler's (Karras et al.
    2022, Algorithm 1, line 8), RK4's (whose fourth stage must sit at the end of the step) Ralston's
    third-order method, which keeps the global order 4. Measured on the echo phantom (the one-step study's fm
    model, ``experiments/one_step/results_2d/fixed_step_solvers.md``): 1-step Heun with the trapezoidal last
    step FID 355 against Euler's 192; RK4 with its fourth stage at t = 1 FID 164 at NFE 4 (Euler 82), with
    Ralston's last step 96 at NFE 3 (Euler 118).
    """

    method: ButcherTableau
    last: ButcherTableau

    def nfe(self, steps: int) -> int:
        """Field evaluations of ``steps`` steps (without guidance)."""
        return (steps - 1) * self.method.stages + self.last.stages


FIXED_STEP_SOLVERS = {
    "euler": FixedStepSolver(EULER, EULER),
    "heun": FixedStepSolver(HEUN, EULER),
    "midpoint": FixedStepSolver(MIDPOINT, MIDPOINT),
    "rk4": FixedStepSolver(RK4, RALSTON3),
}
ADAPTIVE_SOLVERS = ("dopri5",)
SOLVERS = (*FIXED_STEP_SOLVERS, *ADAPTIVE_SOLVERS)
TIME_GRIDS = ("uniform", "shifted", "edm")

VelocityFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class SampleResult:
    """The output of :func:`integrate`.

    Attributes:
        x: the samples at t=1, ``[B, C, *spatial]``.
        nfe: network evaluations used (a guided evaluation of both branches counts as 2).
        times: ``[T]`` times of ``trajectory`` (``None`` unless a trajectory was asked for).
        trajectory: ``[T, B, C, *spatial]`` states at ``times`` (or ``None``).
    """

    x: Tensor
    nfe: int
    times: Tensor | None = None
    trajectory: Tensor | None = None


def time_grid(
    steps: int,
    kind: str = "uniform",
    shift: float = 1.0,
    rho: float = 7.0,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The ``steps + 1`` times ``0 = t_0 < ... < t_steps = 1`` of a fixed-step solver.

    - ``uniform``: ``t_i = i / steps``.
    - ``shifted``: ``t = u / (u + s (1 - u))`` of the uniform ``u`` (the time shift of Esser et al. 2024,
      Sec. 5.3.2, in the suite's convention with the noise at t=0): ``s > 1`` puts more steps near the
      noise, ``s < 1`` near the data, ``s = 1`` is uniform.
    - ``edm``: the noise levels of Karras et al. 2022 (Eq. 5, ``sigma_max=80``, ``sigma_min=0.002``,
      exponent ``rho``), where the straight path's noise-to-signal ratio is ``sigma = (1 - t) / t``, so
      ``t = 1 / (1 + sigma)``; the first and last times are then set to exactly 0 and 1.

    Args:
        steps: number of steps (>= 1).
        kind: ``uniform``, ``shifted`` or ``edm``.
        shift: ``s`` of the shifted grid (> 0).
        rho: exponent of the EDM grid (> 0).
        device: where the grid goes.

    Returns:
        float32 ``[steps + 1]``, increasing from 0 to 1.
    """
    if kind not in TIME_GRIDS:
        raise ValueError(f"unknown time grid {kind!r}; expected one of {TIME_GRIDS}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "shifted":
        if shift <= 0:
            raise ValueError(f"the time shift must be > 0, got {shift}")
        t = u / (u + shift * (1.0 - u))
    elif kind == "edm":
        if rho <= 0:
            raise ValueError(f"the EDM exponent rho must be > 0, got {rho}")
        smax, smin = 80.0 ** (1.0 / rho), 0.002 ** (1.0 / rho)
        sigma = (smax + u * (smin - smax)) ** rho
        t = 1.0 / (1.0 + sigma)
        t[0], t[-1] = 0.0, 1.0
    else:
        t = u
    return t.to(device=device, dtype=torch.float32)


class CountingVelocity:
    """Wrap a velocity field ``v(x, t)`` so that it counts network evaluations.

    The ODE solver calls it with a scalar ``t``; it is broadcast to ``[B]`` before the network sees it.

    Args:
        fn: the velocity field, ``fn(x [B, ...], t [B]) -> [B, ...]``.
        evals_per_call: network evaluations one call costs (2 with classifier-free guidance).
    """

    def __init__(self, fn: VelocityFn, evals_per_call: int = 1) -> None:
        self.fn = fn
        self.evals_per_call = evals_per_call
        self.nfe = 0

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += self.evals_per_call
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 states
        return self.fn(x, t.to(device=x.device, dtype=dtype).expand(x.shape[0]))


def integrate(
    velocity: VelocityFn,
    x0: Tensor,
    solver: str = "euler",
    steps: int = 10,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    return_trajectory: bool = False,
    evals_per_call: int = 1,
    grid: Tensor | None = None,
) -> SampleResult:
    """Solve dx/dt = v(x, t) on t in [0, 1] starting from ``x0``.

    Args:
        velocity: ``v(x [B, C, *spatial], t [B]) -> [B, C, *spatial]``.
        x0: initial noise ``[B, C, *spatial]``.
        solver: ``euler``, ``heun``, ``midpoint``, ``rk4`` or ``dopri5``.
        steps: number of steps of a fixed-step solver (ignored by ``dopri5``).
        rtol: relative tolerance of ``dopri5``.
        atol: absolute tolerance of ``dopri5``.
        return_trajectory: also return the states at every step (``steps + 1`` times for fixed-step
            solvers; t = 0, 0.1, ..., 1 for ``dopri5``).
        evals_per_call: network evaluations per velocity call, for NFE accounting.
        grid: the ``steps + 1`` times of a fixed-step solver (default: uniform; see :func:`time_grid`).

    Returns:
        A :class:`SampleResult` with the final state and the NFE used.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if solver in FIXED_STEP_SOLVERS and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    func = CountingVelocity(velocity, evals_per_call)
    device = x0.device
    if solver in FIXED_STEP_SOLVERS:
        grid = time_grid(steps) if grid is None else grid
        if grid.shape != (steps + 1,):
            raise ValueError(f"a {steps}-step grid needs {steps + 1} times, got {tuple(grid.shape)}")
        times = [float(t) for t in grid.cpu()]
        states = fixed_step_solve(func, x0, solver, times, return_trajectory)
        out = torch.stack(states) if return_trajectory else states[-1][None]
        times_out = torch.tensor(times, device=device) if return_trajectory else None
    else:
        times_out = torch.linspace(0.0, 1.0, 11 if return_trajectory else 2, device=device)
        out = odeint(func, x0, times_out, method=solver, rtol=rtol, atol=atol)
    return SampleResult(
        x=out[-1],
        nfe=func.nfe,
        times=times_out if return_trajectory else None,
        trajectory=out if return_trajectory else None,
    )


def fixed_step_solve(
    func: CountingVelocity, x: Tensor, solver: str, times: list[float], keep_all: bool = False
) -> list[Tensor]:
    """Step ``dx/dt = func(t, x)`` over the host-side grid ``times`` with a fixed-step Runge-Kutta method
    (:data:`FIXED_STEP_SOLVERS`; the last step with the solver's ``last`` method, :class:`FixedStepSolver`).

    Returns:
        The states at every time (``keep_all``) or just the final one, as a list of ``[B, ...]`` tensors.
    """
    rule = FIXED_STEP_SOLVERS[solver]
    states = [x]
    last = len(times) - 2
    for i, (t0, t1) in enumerate(zip(times[:-1], times[1:])):
        x = runge_kutta_step(func, x, t0, t1 - t0, rule.last if i == last else rule.method)
        if keep_all:
            states.append(x)
        else:
            states[0] = x
    return states


def runge_kutta_step(
    func: CountingVelocity, x: Tensor, t0: float, h: float, method: ButcherTableau
) -> Tensor:
    """One step of an explicit Runge-Kutta method from ``(t0, x [B, ...])`` to ``t0 + h``. Zero coefficients
    cost nothing: Euler and the midpoint rule compute exactly ``x + h k1`` and
    ``x + h f(t0 + h/2, x + h/2 k1)``.
    """
    ks: list[Tensor] = []
    for c, row in zip(method.c, method.a):
        y = x
        for a, k in zip(row, ks):
            if a:
                y = y + (h * a) * k
        ks.append(func(torch.full((), t0 + c * h, device=y.device), y).to(y.dtype))
    for b, k in zip(method.b, ks):
        if b:
            x = x + (h * b) * k
    return x


def solver_nfe(solver: str, steps: int) -> int:
    """Network evaluations of ``steps`` steps of a fixed-step solver, without guidance (heun: ``2 steps - 1``,
    rk4: ``4 steps - 1``, their last steps avoiding t = 1; see :class:`FixedStepSolver`)."""
    return FIXED_STEP_SOLVERS[solver].nfe(steps)


def seed_for(seed: int, index: int) -> int:
    """A 63-bit generator seed that depends only on ``(seed, index)`` (via numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def seeded_noise(
    shape: Sequence[int],
    indices: Sequence[int] | Tensor,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise where sample ``i`` depends only on ``(seed, i)``.

    Each sample is drawn on the CPU from its own generator, so results do not depend on the batch
    composition, the number of devices or the device type.

    Args:
        shape: the shape of one sample, ``[C, *spatial]``.
        indices: global sample indices ``[B]``.
        seed: the run's seed.
        device: where the result goes.
        dtype: the result's dtype.

    Returns:
        ``[B, *shape]`` noise.
    """
    out = []
    for i in torch.as_tensor(indices).tolist():
        g = torch.Generator().manual_seed(seed_for(seed, i))
        out.append(torch.randn(*shape, generator=g))
    return torch.stack(out).to(device=device, dtype=dtype)


def guided_velocity(
    net: Callable[..., Tensor],
    cond: Tensor | None = None,
    mask: Tensor | None = None,
    guidance_scale: float = 1.0,
    null_cond: Tensor | None = None,
) -> tuple[Callable[..., Tensor], int]:
    """Bind conditions to a network and apply classifier-free guidance.

    Args:
        net: ``net(x, t, *, cond=None, mask=None, **extra) -> v``.
        cond: class labels ``[B]`` or a context ``[B, L, D]`` (or ``None``).
        mask: label map ``[B, 1, *spatial]`` (or ``None``); it conditions both branches.
        guidance_scale: ``w``; 1 means plain conditional sampling with no extra evaluations.
        null_cond: the "no condition" value of ``cond`` for the unconditional branch ``[B]`` / ``[B, L, D]``.

    Returns:
        ``(v(x, t, **extra), evals_per_call)``: the bound field and the network evaluations each call costs.
        ``extra`` holds further per-sample inputs ``[B]`` of the network (MeanFlow's second time ``r``),
        duplicated for the two branches.
    """
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if cond is None or guidance_scale == 1.0:
        return (lambda x, t, **extra: net(x, t, cond=cond, mask=mask, **extra)), 1
    if null_cond is None:
        raise ValueError("classifier-free guidance needs the null condition of the model")
    if guidance_scale == 0.0:
        return (lambda x, t, **extra: net(x, t, cond=null_cond, mask=mask, **extra)), 1
    both_cond = torch.cat([cond, null_cond])
    both_mask = None if mask is None else torch.cat([mask, mask])

    def v(x: Tensor, t: Tensor, **extra: Tensor) -> Tensor:
        doubled = {k: torch.cat([e, e]) for k, e in extra.items()}
        out = net(torch.cat([x, x]), torch.cat([t, t]), cond=both_cond, mask=both_mask, **doubled)
        v_cond, v_uncond = out.chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    return v, 2
