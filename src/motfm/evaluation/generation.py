"""Sets of samples generated on the fly for an evaluation, all from the same seeded noise (sample ``i``
depends only on ``(seed, i)``). The one place where evaluations call :func:`motfm.sample.generate_batch`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from motfm.checkpoint import LoadedModel
from motfm.conditions import Conditions
from motfm.evaluation.errors import InputError
from motfm.evaluation.inputs import GeneratedSet, Reference
from motfm.flow.solvers import FIXED_STEP_SOLVERS, SOLVERS
from motfm.sample import generate_batch


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
    solver: str,
    steps: int | None,
    num_samples: int,
    batch_size: int,
    seed: int,
    guidance_scale: float = 1.0,
    precision: str = "fp32",
    solver_kwargs: dict[str, Any] | None = None,
) -> GeneratedSet:
    """Samples ``0 .. num_samples - 1`` of one solver setting, in batches.

    Args:
        model: the network.
        conditions: labels / masks, cycled over sample indices.
        solver: a name of :data:`motfm.flow.solvers.SOLVERS`.
        steps: solver steps (``None`` for adaptive solvers).
        num_samples: ``M``.
        batch_size: samples per network call.
        seed: the noise seed.
        guidance_scale: classifier-free guidance scale.
        precision: ``fp32`` or ``bf16``.
        solver_kwargs: e.g. ``rtol`` / ``atol`` of adaptive solvers.

    Returns:
        The images ``[M, C, *spatial]`` in [-1, 1] with their conditions and ``info`` (solver, steps, nfe,
        seconds, images_per_s).
    """
    if num_samples < 1 or batch_size < 1:
        raise InputError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    batches, seconds, nfe = [], 0.0, 0
    starts = range(0, num_samples, batch_size)
    for start in tqdm(starts, desc=f"sample {solver} steps={steps}", unit="batch", leave=False):
        indices = list(range(start, min(start + batch_size, num_samples)))
        images, nfe, batch_seconds = generate_batch(
            model,
            indices,
            seed,
            solver,
            steps or 1,  # adaptive solvers ignore it
            conditions,
            guidance_scale,
            precision,
            solver_kwargs or {},
        )
        seconds += batch_seconds
        batches.append(images)
    indices_t = torch.arange(num_samples)
    labels, masks = conditions.for_indices(indices_t.tolist(), "cpu")
    info = {
        "solver": solver,
        "steps": steps,
        "nfe": nfe,
        "seconds": seconds,
        "images_per_s": num_samples / seconds if seconds > 0 else None,
    }
    return GeneratedSet(torch.cat(batches), indices_t, labels, masks, info)


def solver_arguments(solver: str, steps: int, rtol: float, atol: float) -> tuple[int | None, dict[str, Any]]:
    """``(steps, solver_kwargs)`` of one solver: fixed-step solvers take ``steps``, adaptive ones ``rtol`` /
    ``atol`` (and no steps).

    Raises:
        InputError: an unknown solver or fewer than one step.
    """
    if solver not in SOLVERS:
        raise InputError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if solver not in FIXED_STEP_SOLVERS:
        return None, {"rtol": rtol, "atol": atol}
    if int(steps) < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    return int(steps), {}


def solver_settings(cfg: DictConfig) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    """``(solver, steps, solver_kwargs)`` for every ``cfg.solvers`` x ``cfg.steps`` pair (adaptive solvers
    once, with ``cfg.rtol`` / ``cfg.atol``)."""
    for solver in cfg.solvers:
        step_list = cfg.steps if solver in FIXED_STEP_SOLVERS else [1]
        for steps in step_list:
            yield solver, *solver_arguments(solver, steps, cfg.rtol, cfg.atol)


def generate_sets(cfg: DictConfig, model: LoadedModel, reference: Reference) -> Iterator[GeneratedSet]:
    """Yield a :class:`GeneratedSet` per solver x steps pair of the config, conditioned on the reference."""
    conditions = reference_conditions(model, reference, cfg.ref_split)
    for solver, steps, kwargs in solver_settings(cfg):
        yield generate_set(
            model,
            conditions,
            solver,
            steps,
            cfg.num_samples,
            cfg.batch_size,
            cfg.seed,
            cfg.guidance_scale,
            cfg.precision,
            kwargs,
        )
