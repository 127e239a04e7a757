"""Imported MOTFM models against their origin, at the released checkpoints' real sizes (``reference=true``).

For each released family of the original code (CAMUS 2D 384x384 with mask + class, MRI 3D 96^3
unconditional) the original network is built at its YAML's architecture with random weights (MONAI
Generative's ``DiffusionModelUNet`` + ``ControlNet``, called as its ``MergedModel`` is), imported into the
suite exactly as ``python -m motfm.import_motfm`` imports a checkpoint (:mod:`motfm.interop`), and both are
timed in turns: one network evaluation, and Euler sampling (the original with ``flow_matching``'s
``ODESolver``, the import with the suite's sampler). How far the two velocities lie apart is recorded too.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from motfm.bench.reference import MotfmStyleModel
from motfm.bench.timing import timed_alternating
from motfm.data.base import DataSpec
from motfm.interop.monai_keys import convert_state
from motfm.interop.original import suite_model_config
from motfm.loading import build_model
from motfm.objectives.base import SampleNoise
from motfm.runtime import autocast

log = logging.getLogger(__name__)

_CAMUS = {  # the original's configs/mask_class_conditioning.yaml, model_args
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 1,
    "num_res_blocks": [2, 2, 2, 2, 2],
    "num_channels": [32, 64, 128, 224, 256],
    "attention_levels": [False, False, False, True, True],
    "norm_num_groups": 32,
    "resblock_updown": True,
    "num_head_channels": [32, 64, 128, 224, 256],
    "transformer_num_layers": 4,
    "with_conditioning": True,
    "mask_conditioning": True,
    "cross_attention_dim": 4,
    "conditioning_embedding_num_channels": [16],
}
_MRI = {  # the original's configs/config_3D.yaml, model_args
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "num_res_blocks": [2, 2, 2, 2],
    "num_channels": [32, 64, 160, 480],
    "attention_levels": [False, False, False, True],
    "norm_num_groups": 32,
    "resblock_updown": True,
    "num_head_channels": [32, 64, 160, 480],
    "transformer_num_layers": 6,
    "with_conditioning": False,
    "mask_conditioning": False,
}
# family -> (model_args, image size, mask labels): the released checkpoints (the original README's table).
RELEASED: dict[str, tuple[dict[str, Any], tuple[int, ...], int]] = {
    "camus_mask_class": (_CAMUS, (384, 384), 4),
    "mri_3d": (_MRI, (96, 96, 96), 0),
}


def build_pair(family: str, device: torch.device) -> tuple[MotfmStyleModel, Any, DataSpec]:
    """The original network of a released family (random weights) and its import (same weights).

    Returns:
        ``(original, loaded suite model (net + objective), data spec)``, both networks in eval mode.
    """
    from generative.networks.nets import ControlNet, DiffusionModelUNet

    args, size, labels = RELEASED[family]
    mc = {
        k: v for k, v in args.items() if k not in ("mask_conditioning", "conditioning_embedding_num_channels")
    }
    unet = DiffusionModelUNet(**mc)
    controlnet = None
    if args["mask_conditioning"]:
        mc.pop("out_channels")
        controlnet = ControlNet(**mc, conditioning_embedding_num_channels=(16,))
    original = MotfmStyleModel(unet, controlnet)
    with torch.no_grad():  # move the zero-initialised layers too, so that every weight counts
        for p in original.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model = suite_model_config(args, family)
    with_class = bool(args["with_conditioning"])
    num_classes = int(args["cross_attention_dim"]) if with_class else 0
    spec = DataSpec(args["spatial_dims"], 1, size, num_classes, labels)
    config = {"model": model, "method": {"_target_": "motfm.objectives.flow_matching.FlowMatching"}}
    net, objective = build_model(config, spec, family)
    net.load_state_dict(
        convert_state({f"model.{k}": v for k, v in original.state_dict().items()}, net.state_dict())
    )
    return original.eval().to(device), (net.eval().to(device), objective), spec


def bench_imported(
    cfg: DictConfig, entry: DictConfig, precision: str, device: torch.device
) -> dict[str, Any]:
    """Time one released family at one precision: the import against its original, in turns.

    Args:
        cfg: the bench config (``imported.repeats``, ``imported.warmup``, ``imported.nfe``).
        entry: ``{name, family, batch_size}``.
        precision: ``fp32`` or ``bf16``.
        device: where to run.
    """
    from flow_matching.solver import ODESolver

    original, (net, objective), spec = build_pair(entry.family, device)
    b = entry.batch_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 1, *spec.image_size, generator=g).to(device)
    t = torch.rand(b, generator=g).to(device)
    k, m = spec.num_classes, spec.num_mask_labels
    labels = torch.randint(0, k, (b,), generator=g).to(device) if k else None
    masks = torch.randint(0, m, (b, 1, *spec.image_size), generator=g).to(device) if m else None
    cond = None if labels is None else F.one_hot(labels, k).float()
    scaled = None if masks is None else masks.float() / (m - 1)

    def forward_ours() -> torch.Tensor:
        with torch.inference_mode(), autocast(device, precision):
            return net(x, t, cond=labels, mask=masks)

    def forward_original() -> torch.Tensor:
        with torch.inference_mode(), autocast(device, precision):
            return original(x, t, cond, scaled)

    def sample_ours(nfe: int) -> None:
        noise = SampleNoise((1, *spec.image_size), list(range(b)), 0, device)
        with torch.inference_mode(), autocast(device, precision):
            objective.sample(net, noise, "euler", nfe, labels, masks)

    def sample_original(nfe: int) -> None:
        solver = ODESolver(velocity_model=original)
        grid = torch.tensor([0.0, 1.0], device=device)
        with torch.inference_mode(), autocast(device, precision):
            solver.sample(
                x_init=x, step_size=1.0 / nfe, method="euler", time_grid=grid, cond=cond, masks=scaled
            )

    ours, theirs = forward_ours().float(), forward_original().float()
    out: dict[str, Any] = {
        "case": entry.name,
        "family": entry.family,
        "precision": precision,
        "image_size": list(spec.image_size),
        "batch_size": b,
        "velocity_rel_diff": float((ours - theirs).norm() / theirs.norm()),
        "candidates": {
            "motfm": {"params": sum(p.numel() for p in net.parameters())},
            "reference": {"params": sum(p.numel() for p in original.parameters())},
        },
    }
    imp = cfg.imported
    log.info("imported %s (%s): one evaluation", entry.name, precision)
    fns = {"motfm": forward_ours, "reference": forward_original}
    for name, s in timed_alternating(fns, imp.repeats, imp.warmup, device).items():
        out["candidates"][name]["eval_s"] = s
    for nfe in imp.nfe:
        log.info("imported %s (%s): Euler sampling at NFE %d", entry.name, precision, nfe)
        fns = {
            "motfm": functools.partial(sample_ours, nfe),
            "reference": functools.partial(sample_original, nfe),
        }
        for name, s in timed_alternating(fns, imp.repeats, 0, device).items():
            out["candidates"][name].setdefault("sampling", []).append({"nfe": nfe, "seconds": s})
    return out
