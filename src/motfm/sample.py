"""Sample from a trained model:
``python -m motfm.sample ckpt_path=... steps=5 [sampler=euler] num_samples=64 seed=0``.

The checkpoint records its method (flow matching, the diffusion baseline, ...); ``sampler`` must be one of
that method's samplers (default: its first), and a sampler of another method is refused in one line.

Writes to ``out_dir`` (the run folder by default):

- ``grid.png``: a picture of the first samples (3D: orthogonal mid slices; masks drawn above samples);
- ``samples.npz`` (2D): ``images`` float32 ``[N, C, H, W]`` in [-1, 1], ``indices``, and the
  ``labels`` / ``masks`` each sample was conditioned on;
- ``volumes/sample_XXXXX.nii.gz`` (3D), with ``..._mask.nii.gz`` (integer labels) beside mask-conditioned
  ones;
- ``sampling.json``: method, sampler, steps, NFE, precision (and why), seconds and samples/s of the
  generation itself, and for an imported model its ``origin`` (what it is and how its network is fed).

With ``export=nnunet|msd|png`` the samples are instead written as a dataset (:mod:`motfm.io.export`) under
``export_root`` (default ``out_dir``), batch by batch as they are generated, so memory stays bounded
whatever ``num_samples``; its ``dataset.json`` comes last.

Every file is written atomically. Samples are generated in batches recorded as ``parts/`` shards, so an
interrupted run restarted with the same arguments skips the batches it already wrote; since sample i
depends only on ``(seed, i)`` the result is identical to an uninterrupted run. Under ``torchrun`` (or SLURM)
the batches are shared among the processes and rank 0 merges (see :func:`sample`).
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
from motfm.distributed import (
    DistInfo,
    barrier,
    broadcast_text,
    max_over_ranks,
    process_group,
    sum_over_ranks,
)
from motfm.io.atomic import atomic_path, write_json
from motfm.io.export import DatasetWriter, make_writer
from motfm.io.images import sample_picture, save_png, with_masks
from motfm.io.nifti import save_nifti
from motfm.loading import LoadedModel, load_model
from motfm.nn.captured import CapturedNet, sampling_net
from motfm.objectives.base import SampleNoise, SamplerOptions
from motfm.progress import progress
from motfm.runtime import autocast, pick_device, resolve_precision

log = logging.getLogger(__name__)

# Dataset numbers of exports when dataset_id=null: nnU-Net DatasetXXX (1-10 are the Decathlon's), MSD TaskXX.
DEFAULT_DATASET_ID = {"nnunet": 500, "msd": 99}


# Config key of a sampling / evaluation config -> the SamplerOptions field it sets (the one list of them).
SAMPLER_OPTION_KEYS = {
    "time_grid": "time_grid",
    "time_shift": "shift",
    "rho": "rho",
    "rtol": "rtol",
    "atol": "atol",
    "eta": "eta",
    "clip_x0": "clip_x0",
}


def sampler_options(cfg: DictConfig) -> SamplerOptions:
    """The sampler options of a sampling / evaluation config (:data:`SAMPLER_OPTION_KEYS`; a key the config
    lacks keeps the :class:`SamplerOptions` default, a float option is read as a float)."""
    defaults = SamplerOptions()
    values = {}
    for key, field in SAMPLER_OPTION_KEYS.items():
        default = getattr(defaults, field)
        value = cfg.get(key, default)
        values[field] = float(value) if isinstance(default, float) else value
    return SamplerOptions(**values)


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
    net: Any = None,
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
        net: what to call instead of ``model.net`` (e.g. its CUDA-graph or compiled form, see
            :func:`motfm.nn.captured.sampling_net`).

    Returns:
        Images ``[B, C, *spatial]`` in [-1, 1] (on the CPU, decoded from the model's representation), the
        NFE used, and the seconds the generation took (the device synchronised before and after, noise
        drawing and integration included).
    """
    device = next(model.net.parameters()).device
    net = model.net if net is None else net
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    noise = SampleNoise(model.representation.coeff_shape, indices, seed, device)
    cond, mask = conditions.for_indices(indices, device)
    with autocast(device, precision, cache=not isinstance(net, CapturedNet)):
        result = model.objective.sample(net, noise, sampler, steps, cond, mask, guidance_scale, options)
    images = model.representation.decode(result.x.float()).clamp(-1, 1).cpu()
    return images, result.nfe, time.perf_counter() - t0


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Run sampling as configured; returns the content of ``sampling.json``.

    Under ``torchrun`` / SLURM every process generates its share of the batches (batch ``b`` on rank
    ``b mod world_size``, so every batch is the one a single process would generate) and rank 0 merges after
    a barrier: the result is the same as a single-process run with the same seed.
    """
    dist = DistInfo.from_env()
    with process_group(dist):
        return _sample(cfg, dist)


def _sample(cfg: DictConfig, dist: DistInfo) -> dict[str, Any]:
    device = pick_device(cfg.device)
    if device.type == "cuda" and dist.world_size > 1:
        device = torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    model = load_model(
        cfg.ckpt_path, use_ema=cfg.use_ema, model_overrides=cfg.get("model_overrides"), device=device
    )
    out_dir = Path(broadcast_text(str(cfg.out_dir)))  # a run folder named by the time must be rank 0's
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
    net = sampling_net(model.net, cfg.get("cuda_graphs", False), cfg.get("compile", False))
    writer = export_writer(cfg, model, conditions, out_dir) if cfg.get("export") else None
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
        "cuda_graphs": bool(cfg.get("cuda_graphs", False)),
        "compile": cfg.get("compile", False),
        "conditions": conditions.describe(),
        "export": None if writer is None else str(writer.folder.resolve()),
    }
    key_file = parts / "run.json"
    if key_file.exists() and json.loads(key_file.read_text()) != run_key:
        raise ValueError(f"{out_dir} holds samples of a different run ({key_file}); choose another out_dir")
    if dist.is_main:
        write_json(key_file, run_key)

    batches = [
        list(range(start, min(start + cfg.batch_size, cfg.num_samples)))
        for start in range(0, cfg.num_samples, cfg.batch_size)
    ]
    seconds, generated = 0.0, 0
    for indices in progress(dist.shard(batches), desc="sample", unit="batch"):
        shard = parts / f"part_{indices[0]:06d}.pt"
        if shard.exists() and (writer is None or all(writer.is_complete(i) for i in indices)):
            continue
        images, nfe, batch_seconds = generate_batch(
            model,
            indices,
            cfg.seed,
            sampler,
            steps,
            conditions,
            cfg.guidance_scale,
            precision.name,
            options,
            net,
        )
        seconds += batch_seconds
        generated += len(indices)
        record: dict[str, Any] = {"indices": torch.tensor(indices), "nfe": nfe}
        if writer is None:
            record["images"] = images
        else:  # streamed: the batch goes to its files now; only the picture's samples are kept
            writer.write_batch(indices, images, conditions.for_indices(indices, "cpu")[1])
            record["grid"] = images[: max(0, cfg.grid_size - indices[0])].clone()
        with atomic_path(shard) as tmp:
            torch.save(record, tmp)
        log.info("samples %d-%d: %d NFE", indices[0], indices[-1], nfe)
    barrier()
    generated = int(sum_over_ranks([generated])[0])
    seconds = max_over_ranks(seconds)  # the ranks work side by side
    provenance = {"checkpoint": str(cfg.ckpt_path), "seed": cfg.seed, "sampler": sampler, "steps": steps}
    provenance["guidance_scale"] = cfg.guidance_scale
    nfe = merge_outputs(cfg, out_dir, model, conditions, writer, provenance) if dist.is_main else 0
    nfe = int(sum_over_ranks([nfe])[0])  # rank 0's, known everywhere
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
        "world_size": dist.world_size,
        "export": None if writer is None else {"format": writer.format, "folder": str(writer.folder)},
        # How an imported model (python -m motfm.import_motfm) feeds its network; None for suite models.
        "origin": model.config.get("origin"),
        "generated_now": generated,
        "seconds": seconds,
        "samples_per_s": generated / seconds if seconds > 0 else None,
        "torch": torch.__version__,
    }
    if dist.is_main:
        write_json(out_dir / "sampling.json", info)
        log.info(
            "wrote %d samples to %s (%s, %s steps, NFE %d)", cfg.num_samples, out_dir, sampler, steps, nfe
        )
    return info


def merge_outputs(
    cfg: DictConfig,
    out_dir: Path,
    model: LoadedModel,
    conditions: Conditions,
    writer: DatasetWriter | None,
    provenance: dict[str, Any],
) -> int:
    """Rank 0, after every batch is written: the picture and the sample files, or the export's description
    (``provenance`` is recorded in its ``dataset.json``).

    Returns:
        The NFE of the run (recorded in every shard, so also known after a fully resumed run).
    """
    shard_files = sorted((out_dir / "parts").glob("part_*.pt"))
    if writer is None:
        shards = [torch.load(p, weights_only=True) for p in shard_files]
        images = torch.cat([s["images"] for s in shards])[: cfg.num_samples]
        indices = torch.cat([s["indices"] for s in shards])[: cfg.num_samples]
        labels, masks = conditions.for_indices(indices.tolist(), "cpu")
        write_outputs(out_dir, model, images, indices, labels, masks, conditions, cfg.grid_size)
        return int(shards[0]["nfe"])  # every batch uses the same sampler and grid
    nfe, grid = 0, []
    for p in shard_files:  # small records: indices, NFE and the picture's first samples
        record = torch.load(p, weights_only=True)
        nfe = int(record["nfe"])
        if record["grid"].shape[0]:
            grid.append(record["grid"])
    indices = list(range(cfg.num_samples))
    labels, _ = conditions.for_indices(indices, "cpu")
    path = writer.finish(indices, labels, provenance)
    log.info("exported %d cases to %s (%s)", len(indices), writer.folder, path.name)
    shown = torch.cat(grid)[: cfg.grid_size]
    masks = conditions.for_indices(list(range(shown.shape[0])), "cpu")[1]
    write_picture(out_dir, model, shown, masks)
    return nfe


def export_writer(
    cfg: DictConfig, model: LoadedModel, conditions: Conditions, out_dir: Path
) -> DatasetWriter:
    """The dataset writer of ``export=nnunet|msd|png`` (options ``export_root``, ``dataset_id``,
    ``dataset_name``, ``channel_names``; defaults from the model's training data)."""
    dataset_cfg = (model.config.get("data") or {}).get("dataset") or {}
    target = str(dataset_cfg.get("_target_", "motfm.data.Dataset")).rsplit(".", 1)[-1]
    name = cfg.get("dataset_name") or "Motfm" + (target.removesuffix("Dataset") or "Samples")
    channels = model.spec.channels
    names = cfg.get("channel_names")  # given: the writer checks it has one name per channel
    if names is None:
        names = dataset_cfg.get("modalities")
        if names is None or len(names) != channels:
            names = ["image"] if channels == 1 else [f"channel_{c}" for c in range(channels)]
    dataset_id = cfg.get("dataset_id")
    return make_writer(
        cfg.export,
        root=Path(cfg.get("export_root") or out_dir),
        spec=model.spec,
        name=name,
        dataset_id=DEFAULT_DATASET_ID.get(cfg.export, 1) if dataset_id is None else dataset_id,
        channel_names=[str(n) for n in names],
        affine=conditions.affine,
        spacing=conditions.spacing,
        with_masks=conditions.masks is not None,
    )


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
    write_picture(out_dir, model, images[:grid_size], None if masks is None else masks[:grid_size])
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
            save_nifti(m, out_dir / "volumes" / f"sample_{i:05d}_mask.nii.gz", affine)  # integer labels


def write_picture(out_dir: Path, model: LoadedModel, shown: torch.Tensor, masks: torch.Tensor | None) -> None:
    """``grid.png``: the samples ``shown`` (3D: mid slices), below their conditioning masks when given."""
    upscale = 2 if shown.shape[-1] <= 64 else 1
    if masks is not None:
        shown = with_masks(shown, masks, model.spec.num_mask_labels)
    save_png(sample_picture(shown), out_dir / "grid.png", upscale=upscale)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="sample")
@readable_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    sample(cfg)


if __name__ == "__main__":
    main()
