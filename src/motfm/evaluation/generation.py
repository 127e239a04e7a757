"""Sets of samples generated on the fly for an evaluation, all from the same seeded noise (sample ``i``
depends only on ``(seed, i)``). The one place where evaluations call :func:`motfm.sample.generate_batch`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import DictConfig

from motfm.conditions import Conditions
from motfm.evaluation.errors import InputError
from motfm.evaluation.inputs import GeneratedSet, Reference
from motfm.loading import LoadedModel
from motfm.nn.captured import sampling_net
from motfm.objectives.base import Objective, SamplerOptions
from motfm.progress import progress
from motfm.runtime import resolve_precision
from motfm.sample import generate_batch, sampler_options


def reference_conditions(model: LoadedModel, reference: Reference, split: str) -> Conditions:
    """Condition a conditional model on the labels / masks of the reference items (sample ``i`` on item
    ``i mod N``); an unconditional model gets empty conditions."""
    return Conditions(
        reference.labels if model.net.num_classes > 0 else None,
        reference.masks if model.net.num_mask_labels > 0 else None,
        f"data:{split}",
        reference.affine,
    )


def generate_set(
    model: LoadedModel,
    conditions: Conditions,
    sampler: str,
    steps: int | None,
    num_samples: int,
    batch_size: int,
    seed: int,
    guidance_scale: float = 1.0,
    precision: str = "fp32",
    options: SamplerOptions | None = None,
    net: Any = None,
) -> GeneratedSet:
    """Samples ``0 .. num_samples - 1`` of one sampler setting, in batches.

    Args:
        model: the network and its objective.
        conditions: labels / masks, cycled over sample indices.
        sampler: a sampler of the model's method.
        steps: sampler steps (``None`` for adaptive solvers).
        num_samples: ``M``.
        batch_size: samples per network call.
        seed: the noise seed.
        guidance_scale: classifier-free guidance scale.
        precision: ``fp32`` or ``bf16`` (resolved).
        options: sampler options.
        net: what to call instead of ``model.net`` (its CUDA-graph or compiled form).

    Returns:
        The images ``[M, C, *spatial]`` in [-1, 1] with their conditions and ``info`` (sampler, steps, nfe,
        seconds, images_per_s).
    """
    if num_samples < 1 or batch_size < 1:
        raise InputError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    batches, seconds, nfe = [], 0.0, 0
    starts = range(0, num_samples, batch_size)
    for start in progress(starts, desc=f"sample {sampler} steps={steps}", unit="batch", leave=False):
        indices = list(range(start, min(start + batch_size, num_samples)))
        images, nfe, batch_seconds = generate_batch(
            model, indices, seed, sampler, steps, conditions, guidance_scale, precision, options, net
        )
        seconds += batch_seconds
        batches.append(images)
    indices_t = torch.arange(num_samples)
    labels, masks = conditions.for_indices(indices_t.tolist(), "cpu")
    info = {
        "sampler": sampler,
        "steps": steps,
        "nfe": nfe,
        "seconds": seconds,
        "images_per_s": num_samples / seconds if seconds > 0 else None,
    }
    return GeneratedSet(torch.cat(batches), indices_t, labels, masks, info)


def sampler_settings(
    objective: Objective, samplers: list[str] | None, steps: list[int]
) -> list[tuple[str, int | None]]:
    """``(sampler, steps)`` for every sampler x steps pair (``samplers=None``: the method's defaults; adaptive
    solvers once, without steps), each checked against the method.

    Raises:
        SamplerError: a sampler of another method, or a bad step count (before any work).
    """
    settings = []
    for sampler in list(samplers or objective.default_samplers):
        for n in list(steps) if objective.needs_steps(sampler) else [None]:
            objective.check_sampler(sampler, None if n is None else int(n))
            settings.append((sampler, None if n is None else int(n)))
    return settings


def generate_for(
    cfg: DictConfig, model: LoadedModel, conditions: Conditions, settings: list[tuple[str, int | None]]
) -> Iterator[GeneratedSet]:
    """A :class:`GeneratedSet` per ``(sampler, steps)`` setting, with the precision, CUDA-graph / compile
    options, sampler options, ``num_samples``, ``batch_size``, ``seed`` and ``guidance_scale`` of ``cfg``."""
    device = next(model.net.parameters()).device
    precision = resolve_precision(cfg.precision, device, model.spec.spatial_dims)
    net = sampling_net(model.net, cfg.get("cuda_graphs", False), cfg.get("compile", False))
    for sampler, steps in settings:
        generated = generate_set(
            model,
            conditions,
            sampler,
            steps,
            cfg.num_samples,
            cfg.batch_size,
            cfg.seed,
            cfg.guidance_scale,
            precision.name,
            sampler_options(cfg),
            net,
        )
        generated.info["compute_precision"] = precision.name
        yield generated


def generate_sets(cfg: DictConfig, model: LoadedModel, reference: Reference) -> Iterator[GeneratedSet]:
    """Yield a :class:`GeneratedSet` per sampler x steps pair of the config, conditioned on the reference."""
    settings = sampler_settings(model.objective, cfg.get("samplers"), list(cfg.steps))
    yield from generate_for(cfg, model, reference_conditions(model, reference, cfg.ref_split), settings)
