"""Conditional flow matching, the suite's default method (``method=fm``).

Training (Lipman et al. 2023, "Flow Matching for Generative Modeling", Eq. 23; Tong et al. 2024 for the
minibatch-OT coupling): x1 ~ data, x0 ~ N(0, I) paired by the coupling, t ~ the time sampler, x_t and u_t
from the path, loss = mean |v(x_t, t, c) - u_t|^2. Sampling integrates dx/dt = v(x, t) from t=0 to 1 with
an ODE solver (:mod:`motfm.flow.solvers`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from motfm.flow.coupling import Coupling
from motfm.flow.paths import CondOTPath, TimeSampler
from motfm.flow.solvers import ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS, SampleResult, integrate, time_grid
from motfm.objectives.base import NetFn, Objective, SampleNoise, SamplerOptions


class FlowMatching(Objective):
    """Flow matching on the conditional OT path with an optional minibatch-OT coupling.

    Args:
        coupling: pairs noise with data (independent or minibatch OT).
        path: the probability path.
        time_sampler: draws training times.
        p_uncond: probability of dropping the class label in training (classifier-free guidance).
    """

    name = "fm"
    samplers = (*FIXED_STEP_SOLVERS, *ADAPTIVE_SOLVERS)
    default_samplers = ("euler", "midpoint")

    def __init__(
        self,
        coupling: Coupling | None = None,
        path: CondOTPath | None = None,
        time_sampler: TimeSampler | None = None,
        p_uncond: float = 0.0,
    ) -> None:
        super().__init__(p_uncond)
        self.coupling = coupling or Coupling("independent")
        self.path = path or CondOTPath()
        self.time_sampler = time_sampler or TimeSampler()

    def needs_steps(self, sampler: str) -> bool:
        """Adaptive solvers choose their own steps."""
        return sampler not in ADAPTIVE_SOLVERS

    def flow_loss(
        self,
        net: NetFn,
        x0: Tensor,
        x1: Tensor,
        cond: Tensor | None,
        mask: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """mean |v(x_t, t, c) - u_t|^2 for noise ``x0`` paired with data ``x1``, both ``[B, C, *spatial]``."""
        t = self.time_sampler(x1.shape[0], x1.device, generator)
        ps = self.path.sample(x0, x1, t)
        v = net(ps.xt, ps.t, cond=cond, mask=mask)
        return torch.mean((v.float() - ps.ut.float()) ** 2)

    def loss(
        self,
        net: NetFn,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
        train: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Flow-matching loss on a batch (see the module docstring)."""
        x1 = batch["image"]
        cond, mask, _ = self.train_conditions(net, batch, generator, train)
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        x0 = self.coupling(x0, x1)
        return self.flow_loss(net, x0, x1, cond, mask, generator), {}

    def run_sampler(
        self,
        fn: NetFn,
        evals_per_call: int,
        noise: SampleNoise,
        sampler: str,
        steps: int | None,
        options: SamplerOptions,
    ) -> SampleResult:
        """Integrate the (guided) velocity field from ``noise.x0`` at t=0 to t=1."""
        if sampler in ADAPTIVE_SOLVERS:
            return integrate(
                fn, noise.x0, sampler, 1, options.rtol, options.atol, evals_per_call=evals_per_call
            )
        grid = time_grid(steps, options.time_grid, options.shift, options.rho)  # on the host
        return integrate(fn, noise.x0, sampler, steps, evals_per_call=evals_per_call, grid=grid)
