"""MeanFlow (``method=meanflow``): a network of the *average* velocity, sampled in one or a few steps.

Geng et al. 2025 ("Mean Flows for One-step Generative Modeling", arXiv 2505.13447), written in the suite's
convention: noise x0 at t=0, data x1 at t=1, x_t = t x1 + (1 - t) x0, instantaneous velocity v(x_t, t).
The average velocity over [t, r] along the ODE trajectory is

    u(x_t, t, r) = 1 / (r - t) * integral_t^r v(x_s, s) ds,   so that   x_r = x_t + (r - t) u(x_t, t, r).

Differentiating (r - t) u(x_t, t, r) = integral_t^r v(x_s, s) ds in t, with r fixed and x_t moving along
the trajectory (dx_t/dt = v), gives -u + (r - t) du/dt = -v, i.e. the MeanFlow identity in this convention:

    u(x_t, t, r) = v(x_t, t) + (r - t) * d/dt u(x_t, t, r),
    d/dt u = v . grad_x u + d_t u                  (a Jacobian-vector product with tangent (v, 1, 0)).

(The paper, with data at 0 and r < t, writes u = v - (t - r) du/dt: the same identity with time reversed.)
Training regresses u_theta(x_t, t, r) on the stop-gradient target v_t + (r - t) JVP, where v_t = x1 - x0 is
the conditional velocity; at r = t the target is v_t and the loss is the flow-matching loss. Following the
paper: (t, r) from two logit-normal draws (its best lognorm(-0.4, 1.0) on its time, i.e. mean +0.4 on ours)
sorted so that t <= r, with r != t for 25% of the batch (Table 1a); the adaptive weight
w = 1 / (||Delta||^2 + c)^p with p = 1, c = 1e-3 (Sec. 4.3, Table 1d); classifier-free guidance folded into
training (Sec. 4.2, App. B.1): the target uses v~ = w v_t + k u(x_t, t, t | c) + (1 - w - k) u(x_t, t, t | 0)
for conditioned samples (0: the null label), so that sampling needs one evaluation and no guidance. The
network is the shared UNet with a second time input (``interval_embedding``: an embedding of r - t, zero
at r = t).

Sampling (``sampler=meanflow``) jumps along a time grid: x_{i+1} = x_i + (t_{i+1} - t_i) u(x_i, t_i, t_{i+1});
one step is x1 = x0 + u(x0, 0, 1), one network evaluation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import jvp

from motfm.flow.coupling import Coupling
from motfm.flow.paths import TimeSampler, expand_time
from motfm.flow.solvers import SampleResult, time_grid
from motfm.nn.forward_ad import forward_ad_mode
from motfm.objectives.base import NetFn, Objective, SampleNoise, SamplerOptions


def meanflow_target(u_fn: NetFn, xt: Tensor, t: Tensor, r: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """The prediction u(x_t, t, r) and its MeanFlow target v + (r - t) du/dt (stop-gradient).

    Args:
        u_fn: ``u_fn(x [B, ...], t [B], r [B]) -> [B, ...]``, the average-velocity network.
        xt: points ``[B, ...]`` at times ``t``.
        t: current times ``[B]``.
        r: interval ends ``[B]``.
        v: the velocity at ``(xt, t)`` ``[B, ...]`` (the conditional x1 - x0 in training): the tangent of x.

    Returns:
        ``(u, target)``; ``u`` carries the graph for the backward pass, ``target`` is detached.
    """
    with forward_ad_mode():
        u, dudt = jvp(u_fn, (xt, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    return u, (v + expand_time(r - t, v) * dudt).detach()


class MeanFlow(Objective):
    """The MeanFlow objective and its few-step sampler.

    Args:
        time_sampler: the distribution of the two times (logit-normal, mean 0.4, std 1 by default).
        ratio_r_neq_t: fraction of the batch with r != t (the rest trains the instantaneous velocity).
        adaptive_p: power ``p`` of the adaptive loss weight (0: plain squared error).
        adaptive_c: constant ``c`` of the adaptive loss weight.
        guidance_omega: ``w`` of the guidance folded into training (1: none); needs class conditioning.
        guidance_kappa: ``k`` of the same (0 in the paper's main setting).
        coupling: pairs noise with data (independent, or minibatch OT).
        p_uncond: probability of dropping the class label in training.
    """

    name = "meanflow"
    samplers = ("meanflow",)
    default_samplers = ("meanflow",)

    def __init__(
        self,
        time_sampler: TimeSampler | None = None,
        ratio_r_neq_t: float = 0.25,
        adaptive_p: float = 1.0,
        adaptive_c: float = 1e-3,
        guidance_omega: float = 1.0,
        guidance_kappa: float = 0.0,
        coupling: Coupling | None = None,
        p_uncond: float = 0.0,
    ) -> None:
        super().__init__(p_uncond)
        if not 0.0 <= ratio_r_neq_t <= 1.0:
            raise ValueError(f"ratio_r_neq_t must be in [0, 1], got {ratio_r_neq_t}")
        if adaptive_p < 0 or adaptive_c <= 0:
            raise ValueError(f"need adaptive_p >= 0 and adaptive_c > 0, got {adaptive_p}, {adaptive_c}")
        if guidance_omega <= 0 or not 0.0 <= guidance_kappa < 1.0:
            raise ValueError(
                f"need guidance_omega > 0 and 0 <= guidance_kappa < 1, got {guidance_omega}, {guidance_kappa}"
            )
        self.time_sampler = time_sampler or TimeSampler("logit_normal", mean=0.4, std=1.0)
        self.ratio_r_neq_t = ratio_r_neq_t
        self.adaptive_p, self.adaptive_c = adaptive_p, adaptive_c
        self.guidance_omega, self.guidance_kappa = guidance_omega, guidance_kappa
        self.coupling = coupling or Coupling("independent")

    def net_kwargs(self) -> dict[str, Any]:
        """The network needs the second time input."""
        return {"interval_embedding": True}

    def sample_times(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """``(t, r)`` ``[B]`` with ``t <= r``, and ``r = t`` for a fraction ``1 - ratio_r_neq_t``."""
        a = self.time_sampler(batch_size, device, generator)
        b = self.time_sampler(batch_size, device, generator)
        t, r = torch.minimum(a, b), torch.maximum(a, b)
        keep = torch.rand(batch_size, device=device, generator=generator) < self.ratio_r_neq_t
        return t, torch.where(keep, r, t)

    def guided_target_velocity(
        self,
        net: NetFn,
        xt: Tensor,
        t: Tensor,
        v: Tensor,
        cond: Tensor | None,
        mask: Tensor | None,
        dropped: Tensor | None,
        null_index: int,
    ) -> Tensor:
        """v~ of the guidance folded into training (the plain v_t without guidance or for dropped labels)."""
        if cond is None or (self.guidance_omega == 1.0 and self.guidance_kappa == 0.0):
            return v
        with torch.no_grad():
            u_null = net(xt, t, r=t, cond=torch.full_like(cond, null_index), mask=mask).to(v.dtype)
            mix = self.guidance_omega * v + (1.0 - self.guidance_omega - self.guidance_kappa) * u_null
            if self.guidance_kappa:
                mix = mix + self.guidance_kappa * net(xt, t, r=t, cond=cond, mask=mask).to(v.dtype)
        return torch.where(dropped.view(-1, *([1] * (v.ndim - 1))), v, mix)

    def loss(
        self,
        net: NetFn,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
        train: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The adaptively weighted MeanFlow loss (see the module docstring).

        With ``train=False`` (validation) it returns the unweighted mean squared error per element instead:
        the weighted loss is close to 1 by construction and says little about progress.
        """
        x1 = batch["image"]
        cond, mask, dropped = self.train_conditions(net, batch, generator, train)
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        x0 = self.coupling(x0, x1)
        t, r = self.sample_times(x1.shape[0], x1.device, generator)
        tt = expand_time(t, x1)
        xt = tt * x1 + (1.0 - tt) * x0
        if dropped is None and cond is not None:  # validation: nothing dropped
            dropped = torch.zeros_like(cond, dtype=torch.bool)
        v = self.guided_target_velocity(net, xt, t, x1 - x0, cond, mask, dropped, net.num_classes)

        def u_fn(x: Tensor, t_: Tensor, r_: Tensor) -> Tensor:
            return net(x, t_, r=r_, cond=cond, mask=mask)

        u, target = meanflow_target(u_fn, xt, t, r, v)
        sq = ((u.float() - target.float()) ** 2).flatten(1).sum(1)  # ||Delta||^2 per sample
        mse = sq.mean() / x1[0].numel()
        if not train:
            return mse, {}
        weight = 1.0 / (sq.detach() + self.adaptive_c) ** self.adaptive_p
        return (weight * sq).mean(), {"mse": mse.detach()}

    def run_sampler(
        self,
        fn: NetFn,
        evals_per_call: int,
        noise: SampleNoise,
        sampler: str,
        steps: int | None,
        options: SamplerOptions,
    ) -> SampleResult:
        """Jump from t=0 to t=1 in ``steps`` average-velocity steps (1 step: one network evaluation)."""
        x = noise.x0
        grid = time_grid(steps, options.time_grid, options.shift, options.rho, x.device)
        for i in range(steps):
            t0, t1 = grid[i].expand(x.shape[0]), grid[i + 1].expand(x.shape[0])
            x = x + expand_time(t1 - t0, x) * fn(x, t0, r=t1).to(x.dtype)
        return SampleResult(x=x, nfe=steps * evals_per_call)
