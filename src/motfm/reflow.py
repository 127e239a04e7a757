"""Generate reflow pairs from a trained flow model:
``python -m motfm.reflow ckpt_path=TEACHER out_dir=PAIRS num_pairs=4096 steps=50 sampler=midpoint``.

Reflow (Liu et al. 2023, "Flow Straight and Fast", ICLR 2023, Sec. 2.3) retrains a flow on the couplings
its teacher induces: each pair is (noise x0, the teacher's sample x1 = ODE(x0)) with the condition it was
generated under, so the student's paths cross less and are straighter, and few-step sampling improves. The
conditions are those of the teacher's training data (pair ``i`` takes item ``i mod N`` of ``cond_split``), so
the student sees the conditioning distribution it was trained for.

Writes ``out_dir/parts/part_XXXXXX.pt`` shards (``indices``, ``noise``, ``images``, ``labels``, ``masks``),
each atomically; an interrupted run restarted with the same arguments writes only the missing shards (pair
``i`` depends only on ``(seed, i)``), and ``pairs.json`` (the teacher, its data config and spec, sampler,
steps, NFE, the generation's seconds: reflow's cost is pair generation plus student training) last. Train a
student with ``python -m motfm.train method=reflow data=pairs data.dataset.root=PAIRS init_ckpt=TEACHER``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from motfm.cli import readable_errors
from motfm.conditions import resolve_conditions
from motfm.io.atomic import atomic_path, write_json
from motfm.loading import load_model
from motfm.objectives.base import SampleNoise
from motfm.runtime import autocast, pick_device, resolve_precision
from motfm.sample import sampler_options

log = logging.getLogger(__name__)

PAIRS_FORMAT = 1


def generate_pairs(cfg: DictConfig) -> dict[str, Any]:
    """Generate the pairs as configured; returns the content of ``pairs.json``."""
    device = pick_device(cfg.device)
    model = load_model(cfg.ckpt_path, use_ema=True, device=device)
    objective = model.objective
    sampler = cfg.sampler or objective.default_samplers[0]
    objective.check_sampler(sampler, cfg.steps)
    if cfg.num_pairs < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_pairs and batch_size must be >= 1, got {cfg.num_pairs}, {cfg.batch_size}")
    precision = resolve_precision(cfg.precision, device, model.spec.spatial_dims)
    options = sampler_options(cfg)
    conditions = resolve_conditions(cfg, model)
    out_dir = Path(cfg.out_dir)
    parts = out_dir / "parts"
    run_key = {
        "ckpt": str(Path(cfg.ckpt_path).resolve()),
        "seed": cfg.seed,
        "sampler": sampler,
        "steps": cfg.steps,
        "options": vars(options),
        "guidance_scale": cfg.guidance_scale,
        "batch_size": cfg.batch_size,
        "precision": precision.name,
        "conditions": conditions.describe(),
    }
    key_file = parts / "run.json"
    if key_file.exists() and json.loads(key_file.read_text()) != run_key:
        raise ValueError(f"{out_dir} holds pairs of a different run ({key_file}); choose another out_dir")
    write_json(key_file, run_key)
    shape = model.representation.coeff_shape  # noise where the flow runs; images decoded
    for start in range(0, cfg.num_pairs, cfg.batch_size):
        indices = list(range(start, min(start + cfg.batch_size, cfg.num_pairs)))
        shard = parts / f"part_{start:06d}.pt"
        if shard.exists():
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode(), autocast(device, precision.name):
            noise = SampleNoise(shape, indices, cfg.seed, device)
            cond, mask = conditions.for_indices(indices, device)
            result = objective.sample(
                model.net, noise, sampler, cfg.steps, cond, mask, cfg.guidance_scale, options
            )
        images = model.representation.decode(result.x.float()).clamp(-1, 1).cpu()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        labels, masks = conditions.for_indices(indices, "cpu")
        with atomic_path(shard) as tmp:
            torch.save(
                {
                    "indices": torch.tensor(indices),
                    "noise": noise.x0.float().cpu(),
                    "images": images,
                    "labels": labels,
                    "masks": None if masks is None else masks.to(torch.uint8),
                    "nfe": result.nfe,
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                },
                tmp,
            )
        log.info("pairs %d-%d: NFE %d", indices[0], indices[-1], result.nfe)
    shards = [torch.load(p, weights_only=True, mmap=True) for p in sorted(parts.glob("part_*.pt"))]
    nfe = int(shards[0]["nfe"])  # every shard uses the same sampler and steps
    info = {
        "format": PAIRS_FORMAT,
        "teacher_ckpt": str(cfg.ckpt_path),
        "teacher_method": objective.name,
        "data": model.config["data"],
        "data_spec": model.spec.to_dict(),
        "num_pairs": cfg.num_pairs,
        "sampler": sampler,
        "steps": cfg.steps,
        "nfe": nfe,
        "guidance_scale": cfg.guidance_scale,
        "seed": cfg.seed,
        "cond_split": cfg.cond_split,
        "precision": precision.name,
        "device": str(device),
        # the whole generation, interrupted runs included: each shard records its own time
        "generation_seconds": sum(float(part["seconds"]) for part in shards),
        "generation_cpu_seconds": sum(float(part["cpu_seconds"]) for part in shards),
        "torch": torch.__version__,
    }
    write_json(out_dir / "pairs.json", info)
    log.info("wrote %d pairs to %s (%s, %s steps, NFE %s)", cfg.num_pairs, out_dir, sampler, cfg.steps, nfe)
    return info


@hydra.main(version_base="1.3", config_path="../../conf", config_name="reflow")
@readable_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    generate_pairs(cfg)


if __name__ == "__main__":
    main()
