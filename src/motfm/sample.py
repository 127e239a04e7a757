"""Sample from a trained model:
``python -m motfm.sample ckpt_path=... steps=5 solver=euler num_samples=64 seed=0``.

Writes to ``out_dir`` (the run folder by default):

- ``grid.png``: a picture of the first samples (3D: orthogonal mid slices; masks drawn above samples);
- ``samples.npz`` (2D): ``images`` float32 ``[N, C, H, W]`` in [-1, 1], ``indices``, and the
  ``labels`` / ``masks`` each sample was conditioned on;
- ``volumes/sample_XXXXX.nii.gz`` (3D), with ``..._mask.nii.gz`` beside mask-conditioned ones;
- ``sampling.json``: solver, steps, NFE, seconds and samples/s of the generation itself.

Every file is written atomically. Samples are generated in batches saved as ``parts/`` shards, so an
interrupted run restarted with the same arguments skips the batches it already wrote; since sample i
depends only on ``(seed, i)`` the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from motfm.checkpoint import LoadedModel, load_model
from motfm.conditions import Conditions, resolve_conditions
from motfm.flow.solvers import guided_velocity, integrate, seeded_noise
from motfm.io.atomic import atomic_path, write_json
from motfm.io.images import sample_picture, save_png, with_masks
from motfm.io.nifti import save_nifti

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision=bf16``; nothing for ``fp32``."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.inference_mode()
def generate_batch(
    model: LoadedModel,
    indices: list[int],
    seed: int,
    solver: str,
    steps: int,
    conditions: Conditions,
    guidance_scale: float = 1.0,
    precision: str = "fp32",
    solver_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, int, float]:
    """Generate samples ``indices``.

    Returns:
        Images ``[B, C, *spatial]`` in [-1, 1] (on the CPU), the NFE used, and the seconds the generation
        took (the device synchronised before and after, noise drawing and integration included).
    """
    net = model.net
    device = next(net.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    x0 = seeded_noise((model.spec.channels, *model.spec.image_size), indices, seed, device)
    cond, mask = conditions.for_indices(indices, device)
    null = net.null_cond(len(indices), device) if cond is not None else None
    velocity, evals = guided_velocity(net, cond, mask, guidance_scale, null)
    with autocast(device, precision):
        result = integrate(velocity, x0, solver, steps, evals_per_call=evals, **(solver_kwargs or {}))
    images = result.x.float().clamp(-1, 1).cpu()
    return images, result.nfe, time.perf_counter() - t0


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Run sampling as configured; returns the content of ``sampling.json``."""
    device = pick_device(cfg.device)
    model = load_model(
        cfg.ckpt_path, use_ema=cfg.use_ema, model_overrides=cfg.get("model_overrides"), device=device
    )
    out_dir = Path(cfg.out_dir)
    solver, steps = cfg.solver.method, cfg.steps
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {cfg.num_samples}, {cfg.batch_size}")
    solver_kwargs = {k: cfg.solver[k] for k in ("rtol", "atol") if cfg.solver.get(k) is not None}
    conditions = resolve_conditions(cfg, model)
    parts = out_dir / "parts"
    run_key = {
        "ckpt": str(Path(cfg.ckpt_path).resolve()),
        "seed": cfg.seed,
        "solver": solver,
        "steps": steps,
        "guidance_scale": cfg.guidance_scale,
        "use_ema": cfg.use_ema,
        "batch_size": cfg.batch_size,
        "precision": cfg.precision,
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
            model,
            indices,
            cfg.seed,
            solver,
            steps,
            conditions,
            cfg.guidance_scale,
            cfg.precision,
            solver_kwargs,
        )
        seconds += batch_seconds
        generated += len(indices)
        with atomic_path(shard) as tmp:
            torch.save({"indices": torch.tensor(indices), "images": images, "nfe": nfe}, tmp)
        log.info("samples %d-%d: %d NFE", indices[0], indices[-1], nfe)

    shards = [torch.load(p, weights_only=True) for p in sorted(parts.glob("part_*.pt"))]
    images = torch.cat([s["images"] for s in shards])[: cfg.num_samples]
    indices = torch.cat([s["indices"] for s in shards])[: cfg.num_samples]
    nfe = int(shards[0]["nfe"])  # every batch integrates the same grid; also right after a restart
    labels, masks = conditions.for_indices(indices.tolist(), "cpu")
    write_outputs(out_dir, model, images, indices, labels, masks, conditions, cfg.grid_size)
    info = {
        "ckpt_path": str(cfg.ckpt_path),
        "solver": solver,
        "steps": steps,
        "nfe": nfe,
        "guidance_scale": cfg.guidance_scale,
        "num_samples": cfg.num_samples,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "use_ema": cfg.use_ema,
        "precision": cfg.precision,
        "device": str(device),
        "generated_now": generated,
        "seconds": seconds,
        "samples_per_s": generated / seconds if seconds > 0 else None,
        "torch": torch.__version__,
    }
    write_json(out_dir / "sampling.json", info)
    log.info(
        "wrote %d samples to %s (%s, %d steps, NFE %d)",
        cfg.num_samples,
        out_dir,
        solver,
        steps,
        nfe,
    )
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
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    sample(cfg)


if __name__ == "__main__":
    main()
