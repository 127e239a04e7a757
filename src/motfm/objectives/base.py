"""The objective: the one thing that differs between the suite's generative methods.

Flow matching, the diffusion baseline, MeanFlow and reflow share the network, the data, the training
loop (:class:`motfm.lit.module.GenerativeModule`), EMA, resume, logging and the CLIs. An
:class:`Objective` has two jobs: the training ``loss`` of a network on a batch, and ``sample`` (turning
seeded noise into images with one of its samplers, counting network evaluations). Every objective maps
its own notion of time to the network's float ``t`` in [0, 1] (noise at 0, data at 1).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from motfm.flow.solvers import SampleResult, guided_velocity, seed_for, seeded_noise


class SamplerError(ValueError):
    """A sampler, step count or sampler option that the objective cannot use."""


@dataclass(frozen=True)
class SamplerOptions:
    """Options of the samplers; each objective reads those that apply to it.

    Attributes:
        time_grid: ``uniform``, ``shifted`` or ``edm`` (fixed-step flow solvers and MeanFlow;
            see :func:`motfm.flow.solvers.time_grid`).
        shift: the shift ``s`` of the ``shifted`` grid (``s > 1``: denser near the noise, t=0).
        rho: the exponent of the ``edm`` grid.
        rtol: relative tolerance of adaptive ODE solvers.
        atol: absolute tolerance of adaptive ODE solvers.
        eta: DDIM stochasticity (0: deterministic).
        clip_x0: diffusion samplers: clamp the predicted clean image to [-1, 1] in every step (for
            ``dpmpp_2m``: thresholding, Lu et al. 2022, Sec. 5); ``None``: the method's default (``ddpm`` and
            ``ddim`` clamp, ``dpmpp_2m`` does not).
    """

    time_grid: str = "uniform"
    shift: float = 1.0
    rho: float = 7.0
    rtol: float = 1e-5
    atol: float = 1e-5
    eta: float = 0.0
    clip_x0: bool | None = None


class SampleNoise:
    """The randomness of sampling, where sample ``i`` depends only on ``(seed, i)``.

    ``x0`` is the starting noise (the same for every method, so that methods can be compared on the same
    seeds); :meth:`step` draws the extra noise of stochastic samplers (ancestral DDPM), from a second stream
    per sample, lazily, so deterministic samplers pay nothing for it.

    Args:
        shape: the shape of one sample ``[C, *spatial]``.
        indices: global sample indices ``[B]``.
        seed: the sampling seed.
        device: where the noise goes.
        dtype: its dtype.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        indices: list[int],
        seed: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.shape, self.indices, self.seed = tuple(shape), list(indices), seed
        self.device, self.dtype = torch.device(device), dtype
        self.x0 = seeded_noise(self.shape, self.indices, seed, self.device, dtype)
        self._streams: list[torch.Generator] | None = None
        self._next = 0

    def step(self, index: int) -> Tensor:
        """Standard normal noise ``[B, C, *spatial]`` for step ``index`` of a stochastic sampler.

        Steps must be asked for in order 0, 1, 2, ... (each sample's stream is sequential).
        """
        if self._streams is None:
            self._streams = [
                torch.Generator().manual_seed(seed_for(seed_for(self.seed, i), 1)) for i in self.indices
            ]
        if index != self._next:
            raise ValueError(f"sampling noise asked for step {index}, expected step {self._next}")
        self._next += 1
        out = torch.stack([torch.randn(*self.shape, generator=g) for g in self._streams])
        return out.to(device=self.device, dtype=self.dtype)


NetFn = Callable[..., Tensor]


def drop_labels(
    cond: Tensor | None, p_uncond: float, null_index: int, generator: torch.Generator | None = None
) -> tuple[Tensor | None, Tensor | None]:
    """Replace each class label by the null token with probability ``p_uncond`` (Ho & Salimans 2022).

    Args:
        cond: int64 labels ``[B]`` or ``None``.
        p_uncond: the drop probability.
        null_index: the label value of the null token.
        generator: the step's random generator.

    Returns:
        ``(labels [B] with some replaced, dropped [B] bool)``; ``(None, None)`` without labels.
    """
    if cond is None:
        return None, None
    drop = torch.rand(cond.shape[0], device=cond.device, generator=generator) < p_uncond
    if p_uncond == 0.0:
        return cond, drop
    return torch.where(drop, torch.full_like(cond, null_index), cond), drop


def conditions(net: Any, batch: dict[str, Any]) -> tuple[Tensor | None, Tensor | None]:
    """The ``(cond, mask)`` the network needs, taken from a batch."""
    cond = batch["label"] if net.num_classes else None
    mask = batch["mask"] if net.num_mask_labels else None
    return cond, mask


class Objective(ABC):
    """A generative method: a training loss and samplers over the shared velocity network.

    Subclasses set ``name`` (recorded in checkpoints), ``samplers`` (the sampler names they accept) and
    ``default_samplers`` (what ``evaluate`` runs when none are named; the first is the default of
    ``sample``).

    Args:
        p_uncond: probability of dropping the class label in training (classifier-free guidance).
    """

    name: ClassVar[str]
    samplers: ClassVar[tuple[str, ...]]
    default_samplers: ClassVar[tuple[str, ...]]

    def __init__(self, p_uncond: float = 0.0) -> None:
        if not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
        self.p_uncond = p_uncond

    def net_kwargs(self) -> dict[str, Any]:
        """Extra arguments of :func:`motfm.nn.velocity.build_velocity_net` this objective needs."""
        return {}

    def check_sampler(self, sampler: str, steps: int | None) -> None:
        """Raise :class:`SamplerError` in one line for a sampler or step count this objective cannot use."""
        if sampler not in self.samplers:
            raise SamplerError(
                f"sampler {sampler!r} does not apply to a {self.name!r} model; "
                f"use one of {list(self.samplers)}"
            )
        if self.needs_steps(sampler) and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise SamplerError(f"steps={steps!r}: sampler {sampler!r} needs an integer >= 1")

    def needs_steps(self, sampler: str) -> bool:
        """Whether ``sampler`` takes a number of steps (adaptive ODE solvers do not)."""
        return True

    def train_conditions(
        self, net: Any, batch: dict[str, Any], generator: torch.Generator | None, train: bool
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(cond, mask, dropped)`` of a batch, with classifier-free-guidance label dropout in training."""
        cond, mask = conditions(net, batch)
        if not train or cond is None:
            return cond, mask, None
        cond, dropped = drop_labels(
            cond, self.p_uncond, net.num_classes, generator
        )  # null token = num_classes
        return cond, mask, dropped

    @abstractmethod
    def loss(
        self,
        net: NetFn,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
        train: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of ``net`` on a batch.

        Args:
            net: the velocity network, ``net(x, t, *, cond=None, mask=None) -> [B, C, *spatial]``.
            batch: ``image`` ``[B, C, *spatial]`` (and ``label`` / ``mask`` / method-specific entries).
            generator: the source of every random draw of the step (noise, times, label dropout).
            train: apply training-only randomness (label dropout); ``False`` for validation.

        Returns:
            ``(scalar loss, extra values to log)``.
        """

    def sample(
        self,
        net: NetFn,
        noise: SampleNoise,
        sampler: str,
        steps: int | None,
        cond: Tensor | None = None,
        mask: Tensor | None = None,
        guidance_scale: float = 1.0,
        options: SamplerOptions | None = None,
    ) -> SampleResult:
        """Turn ``noise.x0`` into samples.

        Args:
            net: the network (the EMA copy, usually).
            noise: the seeded noise.
            sampler: one of :attr:`samplers`.
            steps: sampler steps (``None`` for adaptive solvers).
            cond: class labels ``[B]`` of class-conditional models.
            mask: label maps ``[B, 1, *spatial]`` of mask-conditional models.
            guidance_scale: classifier-free guidance weight ``w`` (1: none).
            options: sampler options.

        Returns:
            The :class:`SampleResult`; ``x`` is not clamped, ``nfe`` counts every network evaluation.
        """
        self.check_sampler(sampler, steps)
        null = net.null_cond(noise.x0.shape[0], noise.x0.device) if cond is not None else None
        fn, evals = guided_velocity(net, cond, mask, guidance_scale, null)
        return self.run_sampler(fn, evals, noise, sampler, steps, options or SamplerOptions())

    @abstractmethod
    def run_sampler(
        self,
        fn: NetFn,
        evals_per_call: int,
        noise: SampleNoise,
        sampler: str,
        steps: int | None,
        options: SamplerOptions,
    ) -> SampleResult:
        """Run a (checked) sampler from ``noise.x0``.

        Args:
            fn: ``fn(x, t, **extra)``, the network with its conditions bound and guidance applied.
            evals_per_call: network evaluations one call of ``fn`` costs (2 with guidance).
            noise: the seeded noise.
            sampler: one of :attr:`samplers`.
            steps: sampler steps.
            options: sampler options.
        """
