"""Discrete diffusion baseline math: DDPM noise schedules and the DDPM, DDIM and DPM-Solver++(2M) samplers.

Plain PyTorch; nothing here imports Lightning or Hydra.
"""

from motfm.diffusion.samplers import DIFFUSION_SAMPLERS, ModelFn, NoiseFn, diffusion_sample
from motfm.diffusion.schedules import PREDICTIONS, SCHEDULES, NoiseSchedule, sampling_timesteps

__all__ = [
    "DIFFUSION_SAMPLERS",
    "PREDICTIONS",
    "SCHEDULES",
    "ModelFn",
    "NoiseFn",
    "NoiseSchedule",
    "diffusion_sample",
    "sampling_timesteps",
]
