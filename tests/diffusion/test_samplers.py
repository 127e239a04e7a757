"""DDPM, DDIM and DPM-Solver++(2M) against exact Gaussian-data solutions and against diffusers.

The diffusers comparisons run in float64 with diffusers' tables replaced by the float64 schedule (its
``alphas_cumprod``, and the DPM solver's ``sigmas``): diffusers stores them in float32, and at the noisiest
step an epsilon model's x0_hat = (x - sigma eps) / alpha magnifies their rounding by 1 / alpha (157 for the
linear schedule, 2e4 for the cosine one), so a float32 comparison measures diffusers' rounding (up to 5e-3
for the cosine schedule), not the samplers. The schedules themselves are compared with diffusers' float32
tables in test_schedules.py.
"""

import math

import pytest
import torch

from motfm.diffusion.samplers import DIFFUSION_SAMPLERS, diffusion_sample
from motfm.diffusion.schedules import NoiseSchedule, sampling_timesteps

T = 1000
KINDS = ("linear", "cosine")
DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction"}

# Gaussian data x0 ~ N(MU, SD^2), independently per element of a [2, 2, 2] sample.
MU = torch.tensor([0.3, -0.5, 0.1, 0.0, 0.6, -0.2, 0.25, -0.7], dtype=torch.float64).view(1, 2, 2, 2)
SD = torch.tensor([0.5, 0.2, 0.8, 0.35, 0.6, 0.3, 0.45, 0.25], dtype=torch.float64).view(1, 2, 2, 2)
N_SAMPLES = 4096

W = torch.tensor([[0.9, -0.4], [0.3, 0.7]], dtype=torch.float64)


def _exact_eps(schedule: NoiseSchedule):
    """E[eps | x_k] for the Gaussian data: sqrt(1 - A) (x_k - sqrt(A) MU) / (A SD^2 + 1 - A), A = abar_k."""
    abar = schedule.alphas_cumprod.tolist()

    def model_fn(x, k):
        a_bar = abar[k[0]]  # the samplers give every sample the same step
        return math.sqrt(1 - a_bar) * (x - math.sqrt(a_bar) * MU) / (a_bar * SD**2 + 1 - a_bar)

    return model_fn


def _last_step_variance(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Variance of E[x0 | x_k] at the last visited step k (what the samplers return): SD^2 rho,
    rho = A SD^2 / (A SD^2 + 1 - A)."""
    a_bar = schedule.alphas_cumprod[sampling_timesteps(T, steps)[-1]]
    return SD**2 * a_bar * SD**2 / (a_bar * SD**2 + 1 - a_bar)


def _fixed_model(schedule: NoiseSchedule, prediction: str, offset: float = -0.1):
    """A fixed affine denoiser x0_hat = 1.5 sqrt(abar_k) W x + 0.3 t + offset (t: network time), as eps or v.

    Written through x0_hat so that x0_hat stays of order 1 at every noise level (a fixed affine eps map gives
    x0_hat ~ 1 / sqrt(abar_{T-1}) at the first step); the gain 1.5 puts some x0_hat outside [-1, 1], so that
    clipping acts.
    """
    abar = schedule.alphas_cumprod

    def model_fn(x, k):
        alpha = abar[k].sqrt().view(-1, 1, 1, 1)
        sigma = (1 - abar[k]).sqrt().view(-1, 1, 1, 1)
        t = schedule.net_time(k).to(x.dtype).view(-1, 1, 1, 1)
        x0 = 1.5 * alpha * torch.einsum("ij,bj...->bi...", W, x) + 0.3 * t + offset
        eps = (x - alpha * x0) / sigma
        return eps if prediction == "epsilon" else alpha * eps - sigma * x0

    return model_fn


def _step_noise(shape, seed: int = 100):
    """noise_fn(i) drawn from a generator seeded with seed + i, so that diffusers can draw the same."""
    return lambda i: torch.randn(
        shape, generator=torch.Generator().manual_seed(seed + i), dtype=torch.float64
    )


def _x_T() -> torch.Tensor:
    return torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _diffusers_sample(scheduler, schedule, model_fn, x, steps, step_kwargs=lambda i: {}):
    """Sample with a diffusers scheduler using the float64 tables of ``schedule`` (see module docstring)."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    scheduler.set_timesteps(steps)
    if isinstance(scheduler, DPMSolverMultistepScheduler):  # sigma = sqrt((1 - abar) / abar), then 0
        a_bar = schedule.alphas_cumprod[scheduler.timesteps]
        scheduler.sigmas = torch.cat([((1 - a_bar) / a_bar).sqrt(), torch.zeros(1, dtype=torch.float64)])
    for i, k in enumerate(scheduler.timesteps):
        x = scheduler.step(model_fn(x, k.expand(x.shape[0])), k, x, **step_kwargs(i)).prev_sample
    return x


def _assert_clipping_acted(x: torch.Tensor) -> None:
    # The last step returns the clamped x0_hat itself.
    assert x.abs().max() == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("sampler", "steps", "var_tol"), [("ddim", 1000, 0.02), ("dpmpp_2m", 50, 0.04)])
def test_deterministic_samplers_recover_gaussian_data(kind, sampler, steps, var_tol):
    schedule = NoiseSchedule(kind)
    x_T = torch.randn(N_SAMPLES, 2, 2, 2, dtype=torch.float64)
    x_T = (x_T - x_T.mean(0)) / x_T.std(0, correction=0)  # exact N(0, 1) moments: only solver error is left
    x0, nfe = diffusion_sample(_exact_eps(schedule), x_T, schedule, sampler, steps, clip_x0=False)
    assert nfe == steps
    assert ((x0.mean(0) - MU).abs() / SD).max() < 0.01
    # The last step returns E[x0 | x_k] at the last visited step, whose variance is SD^2 rho with rho in
    # (0.9975, 1) for 1000 steps (k = 0) and (0.87, 0.998) for 50 steps (k = 19).
    assert (x0.var(0, correction=0) / _last_step_variance(schedule, steps) - 1).abs().max() < var_tol


@pytest.mark.parametrize("kind", KINDS)
def test_ddpm_ancestral_sampling_recovers_gaussian_data(kind):
    schedule = NoiseSchedule(kind)
    x_T = torch.randn(N_SAMPLES, 2, 2, 2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    noise_fn = lambda i: torch.randn(x_T.shape, generator=gen, dtype=torch.float64)  # noqa: E731
    x0, nfe = diffusion_sample(
        _exact_eps(schedule), x_T, schedule, "ddpm", T, noise_fn=noise_fn, clip_x0=False
    )
    assert nfe == T
    assert ((x0.mean(0) - MU).abs() / SD).max() < 0.07  # 4.5 standard errors
    assert (x0.var(0, correction=0) / SD**2 - 1).abs().max() < 0.1
    # Pooled over the 8 elements: standard errors 0.0055 (mean) and 0.0078 (variance). The fixed posterior
    # variance beta_tilde ignores the uncertainty of x0_hat, which makes narrow data 1-2% too narrow.
    z = (x0 - MU) / _last_step_variance(schedule, T).sqrt()
    assert z.mean().abs() < 0.02
    assert (z.var(correction=0) - 1).abs() < 0.05


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("kind", KINDS)
def test_ddpm_matches_diffusers(kind, prediction, clip):
    diffusers = pytest.importorskip("diffusers")
    schedule, model_fn, x_T = NoiseSchedule(kind), _fixed_model(NoiseSchedule(kind), prediction), _x_T()
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule=DIFFUSERS_SCHEDULE[kind],
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing="trailing",
        clip_sample=clip,
    )
    # diffusers draws its noise in step(generator=...); one generator per step keeps both draws equal although
    # ours skips the last step (diffusers adds 1e-10 times noise there: its clamped zero variance).
    ref = _diffusers_sample(
        scheduler,
        schedule,
        model_fn,
        x_T,
        10,
        lambda i: {"generator": torch.Generator().manual_seed(100 + i)},
    )
    x, _ = diffusion_sample(model_fn, x_T, schedule, "ddpm", 10, prediction, _step_noise(x_T.shape), clip)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)
    if clip:
        _assert_clipping_acted(x)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("kind", KINDS)
def test_ddim_matches_diffusers(kind, prediction, clip, eta):
    # set_alpha_to_one=True: the last step goes to abar = 1 as ours; steps_offset only shifts "leading".
    # use_clipped_model_output=True: eps_hat is re-derived from the clamped x0_hat, as ours (samplers.py).
    # 10 steps divide T: otherwise diffusers steps from k to k - T // steps, not to the next trailing step.
    diffusers = pytest.importorskip("diffusers")
    schedule, model_fn, x_T = NoiseSchedule(kind), _fixed_model(NoiseSchedule(kind), prediction), _x_T()
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule=DIFFUSERS_SCHEDULE[kind],
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing="trailing",
        clip_sample=clip,
        set_alpha_to_one=True,
        steps_offset=0,
    )
    noise_fn = _step_noise(x_T.shape)
    ref = _diffusers_sample(
        scheduler,
        schedule,
        model_fn,
        x_T,
        10,
        lambda i: {"eta": eta, "use_clipped_model_output": True, "variance_noise": noise_fn(i)},
    )
    x, _ = diffusion_sample(model_fn, x_T, schedule, "ddim", 10, prediction, noise_fn, clip, eta)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)
    if clip:
        _assert_clipping_acted(x)


# Raised inside diffusers' set_timesteps (np.array of a torch tensor), not by motfm.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("kind", KINDS)
def test_dpmpp_2m_matches_diffusers(kind, prediction, steps):
    diffusers = pytest.importorskip("diffusers")
    schedule, model_fn, x_T = NoiseSchedule(kind), _fixed_model(NoiseSchedule(kind), prediction), _x_T()
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_schedule=DIFFUSERS_SCHEDULE[kind],
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing="trailing",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    ref = _diffusers_sample(scheduler, schedule, model_fn, x_T, steps)
    x, _ = diffusion_sample(model_fn, x_T, schedule, "dpmpp_2m", steps, prediction, clip_x0=False)
    # diffusers rounds the state to float32 in every step (about 1e-7 here).
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
@pytest.mark.parametrize("steps", [2, 10])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_clipped_dpmpp_2m_is_diffusers_thresholding_at_1(prediction, steps):
    diffusers = pytest.importorskip("diffusers")
    schedule, x_T = NoiseSchedule("linear"), _x_T()
    model_fn = _fixed_model(schedule, prediction, offset=0.8)  # x0_hat beyond 1 at the noisy steps
    options = dict(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing="trailing",
        thresholding=True,  # dynamic threshold max(quantile(|x0|), 1) clamped to sample_max_value = 1
        sample_max_value=1.0,
        **options,
    )
    ref = _diffusers_sample(scheduler, schedule, model_fn, x_T, steps)
    x, _ = diffusion_sample(model_fn, x_T, schedule, "dpmpp_2m", steps, prediction, clip_x0=True)
    unclipped, _ = diffusion_sample(model_fn, x_T, schedule, "dpmpp_2m", steps, prediction, clip_x0=False)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)
    assert (x - unclipped).abs().max() > 1e-2  # the clamp acted (in early, noisy steps)


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_ddim_with_eta_1_is_ddpm(kind, clip):
    schedule, model_fn, x_T = NoiseSchedule(kind), _fixed_model(NoiseSchedule(kind), "epsilon"), _x_T()
    ddpm, _ = diffusion_sample(
        model_fn, x_T, schedule, "ddpm", 10, noise_fn=_step_noise(x_T.shape), clip_x0=clip
    )
    ddim, _ = diffusion_sample(
        model_fn, x_T, schedule, "ddim", 10, noise_fn=_step_noise(x_T.shape), clip_x0=clip, eta=1.0
    )
    torch.testing.assert_close(ddim, ddpm, rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("sampler", DIFFUSION_SAMPLERS)
def test_one_model_call_per_step_at_the_trailing_steps_in_the_input_dtype(sampler, steps):
    schedule = NoiseSchedule()
    x_T = torch.randn(3, 1, 4, 4, 4)
    seen, noise_steps = [], []

    def model_fn(x, k):
        assert x.dtype == torch.float32 and k.dtype == torch.int64 and k.shape == (3,)
        seen.append(k)
        return 0.5 * x

    def noise_fn(i):
        noise_steps.append(i)
        return torch.randn(3, 1, 4, 4, 4)

    x, nfe = diffusion_sample(
        model_fn, x_T, schedule, sampler, steps, noise_fn=noise_fn if sampler == "ddpm" else None
    )
    assert nfe == steps == len(seen)
    assert torch.equal(torch.stack(seen), sampling_timesteps(T, steps)[:, None].expand(steps, 3))
    assert noise_steps == (list(range(steps - 1)) if sampler == "ddpm" else [])
    assert x.dtype == torch.float32 and x.shape == x_T.shape and torch.isfinite(x).all()


def test_invalid_arguments_raise_value_errors():
    schedule = NoiseSchedule()
    x_T = torch.randn(2, 1, 4, 4)
    model_fn = lambda x, k: x  # noqa: E731
    noise_fn = lambda i: torch.randn(2, 1, 4, 4)  # noqa: E731
    with pytest.raises(ValueError, match="noise_fn"):
        diffusion_sample(model_fn, x_T, schedule, "ddpm", 10)
    with pytest.raises(ValueError, match="noise_fn"):
        diffusion_sample(model_fn, x_T, schedule, "ddim", 10, eta=0.5)
    with pytest.raises(ValueError, match="sampler"):
        diffusion_sample(model_fn, x_T, schedule, "euler", 10)
    with pytest.raises(ValueError, match="prediction"):
        diffusion_sample(model_fn, x_T, schedule, "ddim", 10, prediction="x0")
    for steps in (0, T + 1):
        with pytest.raises(ValueError, match="steps"):
            diffusion_sample(model_fn, x_T, schedule, "ddim", steps)
    with pytest.raises(ValueError, match="eta"):
        diffusion_sample(model_fn, x_T, schedule, "ddim", 10, noise_fn=noise_fn, eta=1.5)
    with pytest.raises(ValueError, match="eta"):
        diffusion_sample(model_fn, x_T, schedule, "dpmpp_2m", 10, noise_fn=noise_fn, eta=0.5)
    with pytest.raises(ValueError, match="shape"):
        diffusion_sample(model_fn, x_T, schedule, "ddpm", 10, noise_fn=lambda i: torch.randn(1, 1, 4, 4))
