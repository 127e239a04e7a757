"""Samplers of a discrete diffusion model: DDPM, DDIM and DPM-Solver++(2M).

All three walk the ``steps`` trailing timesteps k_0 = T-1 > k_1 > ... > k_{steps-1} of
:func:`~motfm.diffusion.schedules.sampling_timesteps` and end at "k = -1", abar = 1 (noise-free), calling the
network exactly once per step (NFE == steps). With abar_k = A and abar_{k'} = A' of two consecutive visited
steps (A' = 1 after the last):

* ``ddpm``: ancestral sampling from the posterior q(x_{k'} | x_k, x0_hat) of the strided chain (Ho et al.
  2020, Eq. 6-7 with beta_k = 1 - A / A'): mean sqrt(A') beta_k / (1 - A) x0_hat + sqrt(A / A') (1 - A') /
  (1 - A) x_k, variance beta_tilde = (1 - A') / (1 - A) beta_k; the last step adds no noise (beta_tilde = 0).
* ``ddim``: Song et al. 2021 ("Denoising Diffusion Implicit Models", Eq. 12), x_{k'} = sqrt(A') x0_hat +
  sqrt(1 - A' - s^2) eps_hat + s z with s = eta sqrt(beta_tilde) (Eq. 16); deterministic for eta = 0, and
  the same chain as ``ddpm`` for eta = 1.
* ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2), a multistep second-order solver of
  the diffusion ODE in the data prediction x0_hat and the half log-SNR lambda = log(alpha / sigma). The
  first step is first order (DDIM); the last goes to sigma = 0 (lambda = inf), where the second-order
  correction is undefined, so it is first order and returns the last x0_hat. This is diffusers' behaviour with
  ``final_sigmas_type="zero"`` (it forces the first-order final step at every step count, on top of
  ``lower_order_final``, which with ``solver_order=2`` only concerns this final step for steps < 15).

With ``clip_x0`` (images in [-1, 1]) every sampler clamps x0_hat to [-1, 1] in every step. ``ddim`` then
re-derives eps_hat = (x_k - sqrt(A) x0_hat) / sqrt(1 - A) from the clamped x0_hat, as Dhariwal & Nichol's
guided-diffusion does; this keeps the DDIM step consistent with x_k and makes ``ddim`` with eta = 1 equal to
``ddpm``. diffusers' DDIMScheduler does this only with ``use_clipped_model_output=True`` (its default keeps
the unclamped eps_hat). ``dpmpp_2m`` uses the clamped x0_hat as its data prediction (also in the next step's
second-order term): diffusers' DPMSolverMultistepScheduler with ``thresholding=True`` and
``sample_max_value=1.0`` (its dynamic threshold is then 1), the thresholding the DPM-Solver++ paper
recommends for pixel-space models (Lu et al. 2022, Sec. 5). Who calls these decides the default per sampler
(see :class:`motfm.objectives.diffusion.Diffusion`).

Differences from diffusers (trailing spacing, ``set_alpha_to_one=True``): diffusers' DDPMScheduler adds noise
of standard deviation 1e-10 (its clamped zero variance) at a last step k > 0, where ``ddpm`` adds none; for
step counts that do not divide T, diffusers' DDIMScheduler steps from k to k - T // steps rather than to the
next trailing timestep that ``ddim`` uses.

The schedule is kept in float64 on the host; since the visited steps are known there, each step's
coefficients are python floats, so the loop moves no tensor between host and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from motfm.diffusion.schedules import NoiseSchedule, check_prediction, output_to_x0_eps, sampling_timesteps

DIFFUSION_SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")

ModelFn = Callable[[Tensor, Tensor], Tensor]
"""``model_fn(x_k [B, C, *spatial], k LongTensor [B])`` -> network output (eps or v); the caller maps k to the
network's time and applies classifier-free guidance."""

NoiseFn = Callable[[int], Tensor]
"""``noise_fn(step_index)`` -> standard normal noise shaped like x (ancestral sampling); the caller draws it
per sample from seeded generators."""


def diffusion_sample(
    model_fn: ModelFn,
    x_T: Tensor,
    schedule: NoiseSchedule,
    sampler: str,
    steps: int,
    prediction: str = "epsilon",
    noise_fn: NoiseFn | None = None,
    clip_x0: bool = True,
    eta: float = 0.0,
) -> tuple[Tensor, int]:
    """Sample a discrete diffusion model from x_T ~ N(0, I) at the noisiest step T-1 down to x0.

    Args:
        model_fn: ``model_fn(x_k [B, C, *spatial], k [B] int64) -> [B, C, *spatial]`` eps or v prediction.
        x_T: initial noise ``[B, C, *spatial]``; the result has its dtype and device.
        schedule: the noise schedule the model was trained with.
        sampler: ``"ddpm"``, ``"ddim"`` or ``"dpmpp_2m"``.
        steps: number of sampling steps (network calls), 1 <= steps <= T.
        prediction: what the network predicts, ``"epsilon"`` or ``"v"``.
        noise_fn: ``noise_fn(i) -> [B, C, *spatial]`` standard normal noise for step i (0-based); needed by
            ``ddpm`` and by ``ddim`` with eta > 0, and never called at the last step.
        clip_x0: clamp x0_hat to [-1, 1] in every step (see the module docstring).
        eta: DDIM stochasticity in [0, 1] (Song et al. 2021, Eq. 16); only for ``ddim``.

    Returns:
        ``(x0, nfe)``: the samples ``[B, C, *spatial]`` and the number of ``model_fn`` calls (== steps).
    """
    if sampler not in DIFFUSION_SAMPLERS:
        raise ValueError(f"unknown diffusion sampler {sampler!r}; expected one of {DIFFUSION_SAMPLERS}")
    check_prediction(prediction)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(f"eta applies to the ddim sampler only, got eta={eta} with {sampler!r}")
    if noise_fn is None and (sampler == "ddpm" or eta > 0):
        raise ValueError("ddpm, and ddim with eta > 0, add noise at each step: they need a noise_fn")
    ks = sampling_timesteps(schedule.num_train_steps, steps).tolist()
    abar = schedule.alphas_cumprod.tolist()
    # (k, abar_k, abar of the next visited step); the final step goes to abar = 1.
    path = [(k, abar[k], abar[k_next] if k_next >= 0 else 1.0) for k, k_next in zip(ks, [*ks[1:], -1])]

    x, nfe = x_T, 0
    prev: tuple[Tensor, float] | None = None  # dpmpp_2m: (x0_hat, abar) of the previous step
    for i, (k, a_bar, a_bar_next) in enumerate(path):
        alpha, sigma = math.sqrt(a_bar), math.sqrt(1.0 - a_bar)
        out = model_fn(x, torch.full(x.shape[:1], k, dtype=torch.long, device=x.device))
        nfe += 1
        x0, eps = output_to_x0_eps(out, x, alpha, sigma, prediction)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        is_last = i == len(path) - 1
        if sampler == "dpmpp_2m":
            x = x0 if is_last else _dpmpp_2m_step(x, x0, a_bar, a_bar_next, prev)
            prev = (x0, a_bar)
            continue
        noise = None if is_last or noise_fn is None else _checked_noise(noise_fn, i, x)
        if sampler == "ddpm":
            x = _ddpm_step(x, x0, a_bar, a_bar_next, noise)
        else:
            if clip_x0:
                eps = (x - alpha * x0) / sigma
            x = _ddim_step(x0, eps, a_bar, a_bar_next, eta, noise)
    return x, nfe


def _checked_noise(noise_fn: NoiseFn, i: int, x: Tensor) -> Tensor:
    noise = noise_fn(i)
    if noise.shape != x.shape:
        raise ValueError(f"noise_fn({i}) returned shape {list(noise.shape)}, expected {list(x.shape)}")
    return noise


def _posterior_variance(a_bar: float, a_bar_next: float) -> float:
    """beta_tilde of the strided chain (Ho et al. 2020, Eq. 7): (1 - A') / (1 - A) * (1 - A / A')."""
    return (1.0 - a_bar_next) / (1.0 - a_bar) * (1.0 - a_bar / a_bar_next)


def _ddpm_step(x: Tensor, x0: Tensor, a_bar: float, a_bar_next: float, noise: Tensor | None) -> Tensor:
    """One ancestral step x_k -> x_{k'} ~ q(x_{k'} | x_k, x0_hat) (Ho et al. 2020, Eq. 6-7)."""
    beta = 1.0 - a_bar / a_bar_next
    mean = (math.sqrt(a_bar_next) * beta / (1.0 - a_bar)) * x0 + (
        math.sqrt(a_bar / a_bar_next) * (1.0 - a_bar_next) / (1.0 - a_bar)
    ) * x
    if noise is None:
        return mean
    return mean + math.sqrt(_posterior_variance(a_bar, a_bar_next)) * noise


def _ddim_step(
    x0: Tensor, eps: Tensor, a_bar: float, a_bar_next: float, eta: float, noise: Tensor | None
) -> Tensor:
    """One DDIM step x_k -> x_{k'} (Song et al. 2021, Eq. 12 with sigma_k(eta) of Eq. 16)."""
    var = eta**2 * _posterior_variance(a_bar, a_bar_next)
    x = math.sqrt(a_bar_next) * x0 + math.sqrt(1.0 - a_bar_next - var) * eps
    if noise is None or var == 0.0:
        return x
    return x + math.sqrt(var) * noise


def _half_log_snr(a_bar: float) -> float:
    """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2 (Lu et al. 2022, Sec. 2)."""
    return 0.5 * math.log(a_bar / (1.0 - a_bar))


def _dpmpp_2m_step(
    x: Tensor, x0: Tensor, a_bar: float, a_bar_next: float, prev: tuple[Tensor, float] | None
) -> Tensor:
    """One DPM-Solver++(2M) step to a noise level abar' < 1 (Lu et al. 2022, Alg. 2).

    x' = (sigma' / sigma) x - alpha' (exp(-h) - 1) D with h = lambda' - lambda; D = x0_hat at first order
    (``prev`` is None), else D = (1 + 1 / (2r)) x0_hat - 1 / (2r) x0_hat_prev with r = h_prev / h, where
    ``prev = (x0_hat_prev, abar_prev)`` comes from the previous step.
    """
    lam = _half_log_snr(a_bar)
    h = _half_log_snr(a_bar_next) - lam
    d = x0
    if prev is not None:
        x0_prev, a_bar_prev = prev
        r = (lam - _half_log_snr(a_bar_prev)) / h
        d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
    sigma_ratio = math.sqrt((1.0 - a_bar_next) / (1.0 - a_bar))
    return sigma_ratio * x - (math.sqrt(a_bar_next) * math.expm1(-h)) * d
