import math

import numpy as np
import pytest
import torch

from motfm.diffusion.schedules import PREDICTIONS, NoiseSchedule, sampling_timesteps

T = 1000
DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def _cosine_f(t: np.ndarray) -> np.ndarray:
    """f(t) = cos^2((t/T + s) / (1 + s) * pi/2) of Nichol & Dhariwal 2021, Eq. 17."""
    return np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2


def _reference_alphas_cumprod(kind: str) -> np.ndarray:
    """abar_k computed independently with numpy."""
    if kind == "linear":
        betas = np.linspace(1e-4, 0.02, T)
    else:
        f = _cosine_f(np.arange(T + 1))
        betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_forward_noising_matches_the_closed_form(kind):
    schedule = NoiseSchedule(kind)
    abar = torch.from_numpy(_reference_alphas_cumprod(kind))
    x0 = torch.rand(6, 2, 5, 5, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    k = torch.tensor([0, 1, 250, 500, 998, 999])
    expected = abar[k].sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar[k]).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(schedule.add_noise(x0, eps, k), expected, rtol=0, atol=1e-12)


def test_cosine_alphas_cumprod_is_the_ratio_f_of_k_plus_1_over_f_0():
    # 0-based step k is the paper's t = k + 1; the 0.999 clip only bites at the last step.
    schedule = NoiseSchedule("cosine")
    k = np.arange(T - 1)
    expected = _cosine_f(k + 1) / _cosine_f(np.zeros(1))
    np.testing.assert_allclose(schedule.alphas_cumprod[:-1].numpy(), expected, rtol=1e-10)
    assert schedule.betas[:-1].max() < 0.999
    assert schedule.betas[-1] == 0.999


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alphas_cumprod_equal_diffusers(kind):
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_SCHEDULE[kind])
    schedule = NoiseSchedule(kind)
    assert schedule.alphas_cumprod.dtype == torch.float64 and schedule.alphas_cumprod.shape == (T,)
    torch.testing.assert_close(schedule.alphas_cumprod, reference.alphas_cumprod.double(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_true_noise_gives_zero_epsilon_loss_and_both_targets_round_trip(kind):
    schedule = NoiseSchedule(kind)
    x0 = torch.rand(5, 1, 4, 4, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    k = torch.tensor([0, 10, 400, 998, 999])
    x_k = schedule.add_noise(x0, eps, k)
    assert torch.mean((schedule.target(x0, eps, k, "epsilon") - eps) ** 2) == 0
    abar = torch.from_numpy(_reference_alphas_cumprod(kind))[k].view(-1, 1, 1, 1, 1)
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0  # Salimans & Ho 2022
    torch.testing.assert_close(schedule.target(x0, eps, k, "v"), v, rtol=0, atol=1e-12)
    for prediction in PREDICTIONS:
        out = schedule.target(x0, eps, k, prediction)
        x0_hat, eps_hat = schedule.to_x0_eps(out, x_k, k, prediction)
        # eps -> x0 divides by sqrt(abar_{T-1}) (5e-5 for the cosine schedule), hence atol 1e-9.
        torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
        torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-12)


def test_alpha_sigma_broadcasts_in_the_dtype_and_rank_of_like():
    schedule = NoiseSchedule()
    like = torch.zeros(3, 2, 4, 4, 4, dtype=torch.float32)
    alpha, sigma = schedule.alpha_sigma(torch.tensor([0, 500, 999]), like)
    assert alpha.shape == sigma.shape == (3, 1, 1, 1, 1)
    assert alpha.dtype == sigma.dtype == torch.float32
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
    assert alpha[0] > alpha[1] > alpha[2] > 0


def test_net_time_puts_noise_at_0_and_data_at_1():
    t = NoiseSchedule().net_time(torch.tensor([999, 666, 0]))
    assert t.dtype == torch.float32
    torch.testing.assert_close(t, torch.tensor([0.0, 333 / 999, 1.0]))


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7, 10, 20, 25, 50, 100, 250, 999, 1000])
def test_sampling_timesteps_equal_diffusers_trailing(steps):
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    reference.set_timesteps(steps)
    ks = sampling_timesteps(T, steps)
    assert ks.dtype == torch.int64 and ks[0] == T - 1
    torch.testing.assert_close(ks, reference.timesteps, rtol=0, atol=0)


def test_sampling_timesteps_differ_from_diffusers_only_by_its_float_rounding():
    # diffusers rounds np.arange(T, 0, -T / steps): an inexact float can flip a tie or add a step -1.
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    for steps in range(1, T + 1):
        ks = sampling_timesteps(T, steps)
        assert len(ks) == steps and ks[0] == T - 1 and ks[-1] >= 0 and bool((ks.diff() < 0).all())
        reference.set_timesteps(steps)
        ref = reference.timesteps
        assert len(ref) in (steps, steps + 1) and bool((ref[steps:] == -1).all())
        ties = torch.tensor([2 * (T * (steps - i) % steps) == steps for i in range(steps)])
        assert bool((ks[~ties] == ref[:steps][~ties]).all())
        assert bool(((ks[ties] - ref[:steps][ties]).abs() <= 1).all())


def test_invalid_arguments_raise_value_errors():
    schedule = NoiseSchedule()
    x = torch.zeros(2, 1, 4, 4)
    k = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="noise schedule"):
        NoiseSchedule("sigmoid")
    with pytest.raises(ValueError, match="num_train_steps"):
        NoiseSchedule(num_train_steps=1)
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule(beta_start=0.02, beta_end=1e-4)
    with pytest.raises(ValueError, match="prediction"):
        schedule.target(x, x, k, "x0")
    with pytest.raises(ValueError, match="prediction"):
        schedule.to_x0_eps(x, x, k, "sample")
    with pytest.raises(ValueError, match="integer"):
        schedule.add_noise(x, x, k.float())
    with pytest.raises(ValueError, match="shape"):
        schedule.add_noise(x, x, torch.tensor([1, 2, 3]))
    for steps in (0, T + 1, 2.0):
        with pytest.raises(ValueError, match="steps"):
            sampling_timesteps(T, steps)


def test_the_linear_schedule_keeps_its_end_points():
    schedule = NoiseSchedule("linear", num_train_steps=10, beta_start=1e-3, beta_end=0.05)
    assert math.isclose(schedule.betas[0], 1e-3) and math.isclose(schedule.betas[-1], 0.05)
    assert schedule.betas.shape == schedule.alphas_cumprod.shape == (10,)
