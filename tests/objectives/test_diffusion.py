"""The diffusion objective's sampler defaults: which samplers clamp the predicted image."""

import pytest
import torch

from motfm.diffusion.schedules import NoiseSchedule
from motfm.objectives.base import SampleNoise, SamplerOptions
from motfm.objectives.diffusion import Diffusion


def _net(x, t, *, cond=None, mask=None):
    """An epsilon 'network' whose predicted image is far outside [-1, 1] at high noise (x0_hat = x / alpha
    - sigma / alpha * eps with eps = -x: about 3x / alpha), so that a clamp changes every sampler's path."""
    return -x


def _sample(sampler: str, options: SamplerOptions | None, clip_x0: bool = True) -> torch.Tensor:
    objective = Diffusion(NoiseSchedule("linear"), clip_x0=clip_x0)
    noise = SampleNoise((1, 4, 4), [0, 1], seed=3, dtype=torch.float64)
    return objective.sample(_net, noise, sampler, 4, options=options).x


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_ddpm_and_ddim_clamp_by_default_and_the_option_overrides(sampler):
    default = _sample(sampler, None)
    assert torch.equal(default, _sample(sampler, SamplerOptions(clip_x0=True)))
    assert not torch.allclose(default, _sample(sampler, SamplerOptions(clip_x0=False)))
    assert torch.equal(_sample(sampler, None, clip_x0=False), _sample(sampler, SamplerOptions(clip_x0=False)))


def test_dpmpp_2m_does_not_clamp_by_default_and_thresholds_on_request():
    default = _sample("dpmpp_2m", None)
    assert torch.equal(default, _sample("dpmpp_2m", SamplerOptions(clip_x0=False)))
    clipped = _sample("dpmpp_2m", SamplerOptions(clip_x0=True))
    assert clipped.abs().max() <= 1 < default.abs().max()
