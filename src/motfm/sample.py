"""Sample from a trained model:
``python -m motfm.sample ckpt_path=... steps=5 [sampler=euler] num_samples=64 seed=0``.

The checkpoint records its method (flow matching, the diffusion baseline, ...); ``sampler`` must be one of
that method's samplers (default: its first), and a sampler of another method is refused in one line.

Writes to ``out_dir`` (the run folder by default):

- ``grid.png``: a picture of the first samples (3D: orthogonal mid slices; masks drawn above samples);
- ``samples.npz`` (2D): ``images`` float32 ``[N, C, H, W]`` in [-1, 1], ``indices``, and the
  ``labels`` / ``masks`` each sample was conditioned on;
- ``volumes/sample_XXXXX.nii.gz`` (3D), with ``..._mask.nii.gz`` beside mask-conditioned ones;
- ``sampling.json``: method, sampler, steps, NFE, precision (and why), seconds and samples/s of the
  generation itself.

Every file is written atomically. Samples are generated in batches saved as ``parts/`` shards, so an
interrupted run restarted with the same arguments skips the batches it already wrote; since sample i
depends only on ``(seed, i)`` the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from motfm.cli import readable_errors
from motfm.conditions import Conditions, resolve_conditions
from motfm.io.atomic import atomic_path, write_json
from motfm.io.images import sample_picture, save_png, with_masks
from motfm.io.nifti import save_nifti
from motfm.loading import LoadedModel, load_model
from motfm.objectives.base import SampleNoise, SamplerOptions
from motfm.runtime import autocast, pick_device, resolve_precision

log = logging.getLogger(__name__)


def sampler_options(cfg: DictConfig) -> SamplerOptions:
    """The sampler options of a sampling / evaluation config."""
    return SamplerOptions(
        time_grid=cfg.get("time_grid", "uniform"),
        shift=float(cfg.get("time_shift", 1.0)),
        rho=float(cfg.get("rho", 7.0)),
        rtol=float(cfg.get("rtol", 1e-5)),
        atol=float(cfg.get("atol", 1e-5)),
        eta=float(cfg.get("eta", 0.0)),
    )


@torch.inference_mode()
def generate_batch(
    model: LoadedModel,
    indices: list[int],
    seed: int,
    sampler: str,
    steps: int | None,
    conditions: Conditions,
    guidance_scale: float = 1.0,
    precision: str = "fp32",
    options: SamplerOptions | None = None,
) -> tuple[torch.Tensor, int, float]:
    """Generate samples ``indices`` with a sampler of the model's method.

    Args:
        model: the loaded model.
        indices: global sample indices; sample i depends only on ``(seed, i)``.
        seed: the sampling seed.
        sampler: a sampler of ``model.objective``.
        steps: sampler steps (``None`` for adaptive solvers).
        conditions: labels / masks, cycled over the indices.
        guidance_scale: classifier-free guidance weight.
        precision: ``fp32`` or ``bf16`` (resolved, see :func:`motfm.runtime.resolve_precision`).
        options: sampler options.

    Returns:
        Images ``[B, C, *spatial]`` in [-1, 1] (on the CPU), the NFE used, and the seconds the generation
        took (the device synchronised before and after, noise drawing and integration included).
    """
    net = model.net
    device = next(net.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    noise = SampleNoise((model.spec.channels, *model.spec.image_size), indices, seed, device)
    cond, mask = conditions.for_indices(indices, device)
    with autocast(device, precision):
        result = model.objective.sample(net, noise, sampler, steps, cond, mask, guidance_scale, options)
    images = result.x.float().clamp(-1, 1).cpu()
    return images, result.nfe, time.perf_counter() - t0


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Run sampling as configured; returns the content of ``sampling.json``."""
    device = pick_device(cfg.device)
    model = load_model(
        cfg.ckpt_path, use_ema=cfg.use_ema, model_overrides=cfg.get("model_overrides"), device=device
    )
    out_dir = Path(cfg.out_dir)
    objective = model.objective
    sampler, steps = cfg.sampler or objective.default_samplers[0], cfg.steps
    objective.check_sampler(sampler, steps)
    steps = steps if objective.needs_steps(sampler) else None
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {cfg.num_samples}, {cfg.batch_size}")
    options = sampler_options(cfg)
    precision = resolve_precision(cfg.precision, device, model.spec.spatial_dims)
    log.info("precision %s: %s", precision.name, precision.reason)
    conditions = resolve_conditions(cfg, model)
    parts = out_dir / "parts"
    run_key = {
        "ckpt": str(Path(cfg.ckpt_path).resolve()),
        "seed": cfg.seed,
        "method": objective.name,
        "sampler": sampler,
        "steps": steps,
        "options": vars(options),
        "guidance_scale": cfg.guidance_scale,
        "use_ema": cfg.use_ema,
        "batch_size": cfg.batch_size,
        "precision": precision.name,
        "conditions": conditions.describe(),
    }
    key_file = parts / "run.json"
    if key_file.exists() and json.loads(key_file.read_text()) != run_key:
        raise ValueError(f"{out_dir} holds samples of a different run ({key_file}); choose another out_dir")
    write_json(key_file, run_key)

    seconds, generated = 0.0, 0
    for start in range(0, cfg.num_samples, cfg.batch_size):
        indices = list(range(start, min(start + cfg.batch_size, cfg.num_samples)))
        shard = parts / f"part_{start:06d}.pt"
        if shard.exists():
            continue
        images, nfe, batch_seconds = generate_batch(
            model, indices, cfg.seed, sampler, steps, conditions, cfg.guidance_scale, precision.name, options
        )
        seconds += batch_seconds
        generated += len(indices)
        with atomic_path(shard) as tmp:
            torch.save({"indices": torch.tensor(indices), "images": images, "nfe": nfe}, tmp)
        log.info("samples %d-%d: %d NFE", indices[0], indices[-1], nfe)

    shards = [torch.load(p, weights_only=True) for p in sorted(parts.glob("part_*.pt"))]
    images = torch.cat([s["images"] for s in shards])[: cfg.num_samples]
    indices = torch.cat([s["indices"] for s in shards])[: cfg.num_samples]
    nfe = int(shards[0]["nfe"])  # every batch uses the same sampler and grid; also right after a restart
    labels, masks = conditions.for_indices(indices.tolist(), "cpu")
    write_outputs(out_dir, model, images, indices, labels, masks, conditions, cfg.grid_size)
    info = {
        "ckpt_path": str(cfg.ckpt_path),
        "method": objective.name,
        "sampler": sampler,
        "steps": steps,
        "nfe": nfe,
        "options": vars(options),
        "guidance_scale": cfg.guidance_scale,
        "num_samples": cfg.num_samples,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "use_ema": cfg.use_ema,
        "precision": precision.name,
        "precision_reason": precision.reason,
        "device": str(device),
        "generated_now": generated,
        "seconds": seconds,
        "samples_per_s": generated / seconds if seconds > 0 else None,
        "torch": torch.__version__,
    }
    write_json(out_dir / "sampling.json", info)
    log.info("wrote %d samples to %s (%s, %s steps, NFE %d)", cfg.num_samples, out_dir, sampler, steps, nfe)
    return info


def write_outputs(
    out_dir: Path,
    model: LoadedModel,
    images: torch.Tensor,
    indices: torch.Tensor,
    labels: torch.Tensor | None,
    masks: torch.Tensor | None,
    conditions: Conditions,
    grid_size: int,
) -> None:
    """Write the picture and the sample files (see the module docstring)."""
    shown = images[:grid_size]
    if masks is not None:
        shown = with_masks(shown, masks[:grid_size], model.spec.num_mask_labels)
    save_png(sample_picture(shown), out_dir / "grid.png", upscale=2 if images.shape[-1] <= 64 else 1)
    arrays: dict[str, np.ndarray] = {"images": images.numpy().astype(np.float32), "indices": indices.numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    if masks is not None:
        arrays["masks"] = masks.numpy().astype(np.uint8)
    if model.spec.spatial_dims == 2:
        with atomic_path(out_dir / "samples.npz") as tmp:
            np.savez_compressed(tmp, **arrays)
        return
    affine = conditions.affine
    for img, i in zip(images, indices.tolist()):
        save_nifti(img, out_dir / "volumes" / f"sample_{i:05d}.nii.gz", affine)
    if masks is not None:
        for m, i in zip(masks, indices.tolist()):
            save_nifti(m.float(), out_dir / "volumes" / f"sample_{i:05d}_mask.nii.gz", affine)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="sample")
@readable_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    sample(cfg)


if __name__ == "__main__":
    main()
