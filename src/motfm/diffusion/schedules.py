"""Discrete DDPM noise schedules, network targets and the sampling timesteps.

The forward process of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", Eq. 4) in closed form,

    x_k = sqrt(abar_k) * x0 + sqrt(1 - abar_k) * eps,      abar_k = prod_{j <= k} (1 - beta_j),

for integer steps k = 0 .. T-1 (0-based: k = 0 is the least noisy step, paper step t = k + 1). Here
``x0`` is the *data* and ``eps`` the noise, as in the diffusion literature (``motfm.flow`` names them the
other way round: there x0 is the noise and x1 the data). ``alpha = sqrt(abar)`` and
``sigma = sqrt(1 - abar)`` are the signal and noise scales.

Schedules:

* ``linear``: betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4);
  equal to diffusers' ``beta_schedule="linear"``.
* ``cosine``: Nichol & Dhariwal 2021 ("Improved Denoising Diffusion Probabilistic Models", Eq. 17),
  abar(t) = f(t) / f(0) with f(t) = cos^2((t/T + s) / (1 + s) * pi/2), s = 0.008, discretised as
  beta_k = min(1 - f(k+1) / f(k), 0.999); so abar_k = f(k+1) / f(0) until the clip bites (only at
  k = T-1 for T = 1000). Equal to diffusers' ``beta_schedule="squaredcos_cap_v2"``.

The tables are kept in float64 on the CPU (diffusers keeps float32); they are cast to the data's dtype
only when they are applied.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "v")

COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def check_prediction(prediction: str) -> None:
    """Raise a ValueError unless ``prediction`` is one of :data:`PREDICTIONS`."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def output_to_x0_eps(
    out: Tensor, x_k: Tensor, alpha: Tensor | float, sigma: Tensor | float, prediction: str
) -> tuple[Tensor, Tensor]:
    """Turn a network output into the predicted data and noise at one noise level.

    With x_k = alpha * x0 + sigma * eps and alpha^2 + sigma^2 = 1:

    * ``epsilon`` (Ho et al. 2020, Eq. 15): eps_hat = out, x0_hat = (x_k - sigma * eps_hat) / alpha;
    * ``v`` (Salimans & Ho 2022, "Progressive Distillation", Sec. 4, v = alpha * eps - sigma * x0):
      x0_hat = alpha * x_k - sigma * v, eps_hat = sigma * x_k + alpha * v.

    Args:
        out: the network output ``[B, C, *spatial]``.
        x_k: the noisy input ``[B, C, *spatial]``.
        alpha: sqrt(abar), a python float or a tensor broadcastable to ``x_k`` (``[B, 1, ..., 1]``).
        sigma: sqrt(1 - abar), like ``alpha``.
        prediction: ``"epsilon"`` or ``"v"``.

    Returns:
        ``(x0_hat, eps_hat)``, each ``[B, C, *spatial]``.
    """
    check_prediction(prediction)
    if prediction == "epsilon":
        return (x_k - sigma * out) / alpha, out
    return alpha * x_k - sigma * out, sigma * x_k + alpha * out


def _linear_betas(num_train_steps: int, beta_start: float, beta_end: float) -> Tensor:
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
    return torch.linspace(beta_start, beta_end, num_train_steps, dtype=torch.float64)


def _cosine_betas(num_train_steps: int) -> Tensor:
    t = torch.arange(num_train_steps + 1, dtype=torch.float64) / num_train_steps
    f = torch.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)


class NoiseSchedule:
    """Discrete 1000-step DDPM schedule (Ho et al. 2020; cosine: Nichol & Dhariwal 2021, Eq. 17, betas clipped
    at 0.999).

    Args:
        kind: ``"linear"`` or ``"cosine"`` (the latter ignores ``beta_start`` and ``beta_end``).
        num_train_steps: T, the number of discrete steps (>= 2).
        beta_start: beta_0 of the linear schedule.
        beta_end: beta_{T-1} of the linear schedule.

    Attributes:
        kind: the schedule's name.
        num_train_steps: T.
        betas: ``[T]`` float64 CPU tensor.
        alphas_cumprod: ``[T]`` float64 CPU tensor, abar_k.
    """

    def __init__(
        self,
        kind: str = "linear",
        num_train_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {kind!r}; expected one of {SCHEDULES}")
        if not isinstance(num_train_steps, int) or num_train_steps < 2:
            raise ValueError(f"num_train_steps must be an integer >= 2, got {num_train_steps!r}")
        self.kind = kind
        self.num_train_steps = num_train_steps
        if kind == "linear":
            self.betas = _linear_betas(num_train_steps, beta_start, beta_end)
        else:
            self.betas = _cosine_betas(num_train_steps)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        # [2, T]: sqrt(abar), sqrt(1 - abar); copies per (device, dtype) so that training steps index a
        # table already on the device instead of copying it there (a host-device sync) every call.
        self._scales = torch.stack([self.alphas_cumprod.sqrt(), (1 - self.alphas_cumprod).sqrt()])
        self._scales_on: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def alpha_sigma(self, k: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """The signal and noise scales sqrt(abar_k) and sqrt(1 - abar_k) of each sample.

        Args:
            k: integer steps ``[B]`` in [0, T-1].
            like: a ``[B, ...]`` tensor whose rank, dtype and device the result takes.

        Returns:
            ``(alpha, sigma)``, each ``[B, 1, ..., 1]`` (the rank of ``like``) in ``like``'s dtype and device.
        """
        if k.dtype.is_floating_point or k.dtype.is_complex or k.dtype == torch.bool:
            raise ValueError(f"diffusion steps k must be an integer tensor, got {k.dtype}")
        if k.shape != like.shape[:1]:
            raise ValueError(f"k must have shape [B] = {list(like.shape[:1])}, got {list(k.shape)}")
        key = (like.device, like.dtype)
        if key not in self._scales_on:
            self._scales_on[key] = self._scales.to(like.dtype).to(like.device)
        alpha, sigma = self._scales_on[key][:, k.to(like.device)]
        shape = (-1,) + (1,) * (like.ndim - 1)
        return alpha.view(shape), sigma.view(shape)

    def add_noise(self, x0: Tensor, eps: Tensor, k: Tensor) -> Tensor:
        """Sample the forward process in closed form (Ho et al. 2020, Eq. 4).

        Args:
            x0: data ``[B, C, *spatial]``.
            eps: standard normal noise like ``x0``.
            k: integer steps ``[B]``.

        Returns:
            x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps, ``[B, C, *spatial]``.
        """
        alpha, sigma = self.alpha_sigma(k, x0)
        return alpha * x0 + sigma * eps

    def net_time(self, k: Tensor) -> Tensor:
        """The network's continuous time at step k, in the suite's convention: noise at t=0, data at t=1.

        t = (T-1-k) / (T-1): the noisiest step k = T-1 maps to t = 0 and k = 0 to t = 1, so a diffusion
        network shares the time embedding of the flow-matching networks.

        Args:
            k: integer steps ``[B]``.

        Returns:
            ``[B]`` float32 times in [0, 1] on ``k``'s device.
        """
        return (self.num_train_steps - 1 - k).to(torch.float32) / (self.num_train_steps - 1)

    def target(self, x0: Tensor, eps: Tensor, k: Tensor, prediction: str) -> Tensor:
        """The regression target of the network at ``x_k = add_noise(x0, eps, k)``.

        Args:
            x0: data ``[B, C, *spatial]``.
            eps: the noise used to make ``x_k``, like ``x0``.
            k: integer steps ``[B]``.
            prediction: ``"epsilon"`` (Ho et al. 2020, Eq. 14) or ``"v"`` (Salimans & Ho 2022, Sec. 4:
                v = sqrt(abar) eps - sqrt(1 - abar) x0).

        Returns:
            ``[B, C, *spatial]`` target.
        """
        check_prediction(prediction)
        if prediction == "epsilon":
            return eps
        alpha, sigma = self.alpha_sigma(k, x0)
        return alpha * eps - sigma * x0

    def to_x0_eps(self, out: Tensor, x_k: Tensor, k: Tensor, prediction: str) -> tuple[Tensor, Tensor]:
        """Turn a network output at step k into ``(x0_hat, eps_hat)`` (see :func:`output_to_x0_eps`).

        Args:
            out: the network output ``[B, C, *spatial]``.
            x_k: the noisy input ``[B, C, *spatial]``.
            k: integer steps ``[B]``.
            prediction: ``"epsilon"`` or ``"v"``.

        Returns:
            ``(x0_hat, eps_hat)``, each ``[B, C, *spatial]``.
        """
        alpha, sigma = self.alpha_sigma(k, x_k)
        return output_to_x0_eps(out, x_k, alpha, sigma, prediction)


def sampling_timesteps(num_train_steps: int, steps: int) -> Tensor:
    """The ``steps`` training steps visited by a sampler, noisiest first, with "trailing" spacing.

    k_i = round(T (steps - i) / steps) - 1 for i = 0 .. steps-1 (Lin et al. 2024, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", Table 2): the first step is always T-1, so even one step starts
    from the noisiest level. Computed exactly (halves round to even); diffusers evaluates the same formula
    with a float ``np.arange``, which for some step counts (111 of 1..1000 when T = 1000, diffusers 0.42)
    rounds a half the other way or appends a spurious step -1.

    Args:
        num_train_steps: T.
        steps: number of sampling steps, 1 <= steps <= T.

    Returns:
        ``[steps]`` int64 CPU tensor, strictly decreasing from T-1.
    """
    if not isinstance(steps, int) or not 1 <= steps <= num_train_steps:
        raise ValueError(f"steps must be an integer in [1, {num_train_steps}], got {steps!r}")
    # T * (steps - i) / steps is a correctly rounded quotient of integers, so ties are exact halves.
    return torch.tensor([round(num_train_steps * (steps - i) / steps) - 1 for i in range(steps)])
