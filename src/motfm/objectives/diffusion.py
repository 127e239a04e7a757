"""The diffusion baseline (``method=ddpm``): the same network and conditioning, a DDPM objective.

Training (Ho et al. 2020, Alg. 1; v-prediction: Salimans & Ho 2022): x0 ~ data, eps ~ N(0, I), a step
k ~ U{0, ..., T-1}, x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps, loss = mean |f(x_k, t_k, c) - target|^2
with target eps (or v = sqrt(abar_k) eps - sqrt(1 - abar_k) x0). The network sees the step as the float time
t_k = (T-1-k)/(T-1) (noise at 0, data at 1, as for flow matching), never as an integer embedding.
Sampling: ancestral DDPM, DDIM or DPM-Solver++(2M) on trailing steps (:mod:`motfm.diffusion.samplers`), with
classifier-free guidance on the network output exactly as for flow matching.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from motfm.diffusion.samplers import DIFFUSION_SAMPLERS, diffusion_sample
from motfm.diffusion.schedules import NoiseSchedule, check_prediction
from motfm.flow.solvers import SampleResult
from motfm.objectives.base import NetFn, Objective, SampleNoise, SamplerOptions


class Diffusion(Objective):
    """A DDPM trained with epsilon or v prediction on a 1000-step schedule.

    Args:
        schedule: the noise schedule (linear or cosine).
        prediction: ``epsilon`` or ``v``.
        clip_x0: clamp the predicted clean image to [-1, 1] in the ``ddpm`` and ``ddim`` samplers by default
            (``dpmpp_2m`` does not by default, as diffusers; :attr:`SamplerOptions.clip_x0` decides per call).
        p_uncond: probability of dropping the class label in training (classifier-free guidance).
    """

    name = "ddpm"
    samplers = DIFFUSION_SAMPLERS
    default_samplers = ("dpmpp_2m", "ddim", "ddpm")

    def __init__(
        self,
        schedule: NoiseSchedule | None = None,
        prediction: str = "epsilon",
        clip_x0: bool = True,
        p_uncond: float = 0.0,
    ) -> None:
        super().__init__(p_uncond)
        check_prediction(prediction)
        self.schedule = schedule or NoiseSchedule()
        self.prediction = prediction
        self.clip_x0 = clip_x0

    def check_sampler(self, sampler: str, steps: int | None) -> None:
        """A diffusion sampler with 1 <= steps <= T."""
        super().check_sampler(sampler, steps)
        if steps > self.schedule.num_train_steps:
            raise ValueError(
                f"steps={steps}: a {self.schedule.num_train_steps}-step schedule allows at most that"
            )

    def loss(
        self,
        net: NetFn,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
        train: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Denoising loss on a batch (see the module docstring)."""
        x0 = batch["image"]
        cond, mask, _ = self.train_conditions(net, batch, generator, train)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        k = torch.randint(
            0, self.schedule.num_train_steps, (x0.shape[0],), generator=generator, device=x0.device
        )
        out = net(self.schedule.add_noise(x0, eps, k), self.schedule.net_time(k), cond=cond, mask=mask)
        target = self.schedule.target(x0, eps, k, self.prediction)
        return torch.mean((out.float() - target.float()) ** 2), {}

    def run_sampler(
        self,
        fn: NetFn,
        evals_per_call: int,
        noise: SampleNoise,
        sampler: str,
        steps: int | None,
        options: SamplerOptions,
    ) -> SampleResult:
        """Run a diffusion sampler from ``noise.x0`` (the same noise flow matching starts from)."""
        # By default ddpm and ddim clamp x0_hat (method.clip_x0) and dpmpp_2m does not, as diffusers.
        clip = options.clip_x0 if options.clip_x0 is not None else self.clip_x0 and sampler != "dpmpp_2m"
        x, calls = diffusion_sample(
            lambda x, k: fn(x, self.schedule.net_time(k)),
            noise.x0,
            self.schedule,
            sampler,
            steps,
            self.prediction,
            noise_fn=noise.step,
            clip_x0=clip,
            eta=options.eta if sampler == "ddim" else 0.0,
        )
        return SampleResult(x=x, nfe=calls * evals_per_call)
