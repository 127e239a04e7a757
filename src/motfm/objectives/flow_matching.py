"""Conditional flow matching, the suite's default method (``method=fm``).

Training (Lipman et al. 2023, "Flow Matching for Generative Modeling", Eq. 23; Tong et al. 2024 for the
minibatch-OT coupling): x1 ~ data, x0 ~ N(0, I) paired by the coupling, t ~ the time sampler, x_t and u_t
from the path, loss = mean |v(x_t, t, c) - u_t|^2. Sampling integrates dx/dt = v(x, t) from t=0 to 1 with
an ODE solver (:mod:`motfm.flow.solvers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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
        data_range: the intensity range ``[lo, hi]`` the network's flow ends in. The suite's data are in
            [-1, 1] (the default, where nothing is converted); a model imported from the original MOTFM code,
            trained on images min-max scaled to [0, 1], has ``[0, 1]``: training maps each batch into that
            range and sampling integrates there and maps the result back to [-1, 1] (the noise is N(0, I) in
            the network's own units either way, as the model was trained).
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
        data_range: Sequence[float] = (-1.0, 1.0),
    ) -> None:
        super().__init__(p_uncond)
        lo, hi = (float(v) for v in data_range)
        if not lo < hi:
            raise ValueError(f"data_range must be [lo, hi] with lo < hi, got {list(data_range)}")
        self.data_range = (lo, hi)
        self.coupling = coupling or Coupling("independent")
        self.path = path or CondOTPath()
        self.time_sampler = time_sampler or TimeSampler()

    def to_model_units(self, x: Tensor) -> Tensor:
        """Map images in [-1, 1] to the network's ``data_range`` (the identity for the default)."""
        lo, hi = self.data_range
        return x if (lo, hi) == (-1.0, 1.0) else lo + (x + 1.0) * (0.5 * (hi - lo))

    def to_data_units(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`to_model_units`."""
        lo, hi = self.data_range
        return x if (lo, hi) == (-1.0, 1.0) else (x - lo) * (2.0 / (hi - lo)) - 1.0

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
        x1 = self.to_model_units(batch["image"])
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
        """Integrate the (guided) velocity field from ``noise.x0`` at t=0 to t=1 (the result in [-1, 1] units,
        see ``data_range``)."""
        if sampler in ADAPTIVE_SOLVERS:
            result = integrate(
                fn, noise.x0, sampler, 1, options.rtol, options.atol, evals_per_call=evals_per_call
            )
        else:
            grid = time_grid(steps, options.time_grid, options.shift, options.rho)  # on the host
            result = integrate(fn, noise.x0, sampler, steps, evals_per_call=evals_per_call, grid=grid)
        if self.data_range == (-1.0, 1.0):
            return result
        trajectory = None if result.trajectory is None else self.to_data_units(result.trajectory)
        return dataclasses.replace(result, x=self.to_data_units(result.x), trajectory=trajectory)
