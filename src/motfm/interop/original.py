"""Read a checkpoint of the original MOTFM code and describe its model in the suite's terms.

The original (github.com/milad1378yz/MOTFM, ``trainer.py``) saves a Lightning checkpoint of its
``FlowMatchingLightningModule``: ``state_dict`` holds ``model.unet.*`` (MONAI Generative's
``DiffusionModelUNet``) and, for mask conditioning, ``model.controlnet.*`` (its ``ControlNet``);
``hyper_parameters`` holds the training YAML (``model_args``, ``data_args``, ``train_args``, ``solver_args``),
at the top level or under ``config``. From ``model_args`` (``utils/utils_fm.py``'s ``build_model``) and the
data normalisation of ``data_args`` (``utils/general_utils.py``) this module derives the suite's model config,
flow-matching method config and data description; :mod:`motfm.interop.monai_keys` renames the weights.

How the original feeds its network, and the config switch that reproduces it:

- time ``t`` in [0, 1] as the integer step ``floor(t (max_timestep - 1))`` -> ``model.max_timestep``;
- a class as its one-hot vector, one context token of width ``num_classes`` -> ``class_context: one_hot``;
- the mask, min-max scaled to [0, 1] (a label map ``0 .. K-1`` becomes ``label / (K - 1)``), as one channel
  into the ControlNet -> ``mask_input: scaled``;
- MONAI's plain attention block at the attention levels of unconditional models -> ``attention_block: plain``;
- images min-max scaled to ``image_norm``'s range ([0, 1] by default) -> the method's ``data_range``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from motfm.checkpoint import CheckpointError
from motfm.data.base import DataSpec

# Every model_args key the original's build_model passes on (DiffusionModelUNet / ControlNet arguments and its
# own three); any other key is refused rather than silently ignored.
MODEL_ARGS = {
    "spatial_dims",
    "in_channels",
    "out_channels",
    "num_res_blocks",
    "num_channels",
    "attention_levels",
    "norm_num_groups",
    "norm_eps",
    "resblock_updown",
    "num_head_channels",
    "with_conditioning",
    "transformer_num_layers",
    "cross_attention_dim",
    "num_class_embeds",
    "upcast_attention",
    "use_flash_attention",
    "dropout_cattn",
    "mask_conditioning",
    "max_timestep",
    "conditioning_embedding_num_channels",
}
# MONAI's DiffusionModelUNet defaults, for keys a config leaves out.
MONAI_DEFAULTS = {
    "num_res_blocks": (2, 2, 2, 2),
    "num_channels": (32, 64, 64, 64),
    "attention_levels": (False, False, True, True),
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "resblock_updown": False,
    "num_head_channels": 8,
    "with_conditioning": False,
    "transformer_num_layers": 1,
}
# The original's image_norm modes with a fixed output range (apply_normalization in utils/general_utils.py):
# mode -> range, None meaning the configured ``range`` (default [0, 1]).
IMAGE_NORM_RANGES: dict[str, tuple[float, float] | None] = {
    "minmax_0_1": (0.0, 1.0),
    "0_1": (0.0, 1.0),
    "minmax_-1_1": (-1.0, 1.0),
    "-1_1": (-1.0, 1.0),
    "m1_1": (-1.0, 1.0),
    "minmax": None,
    "auto": None,
}
# The released checkpoints' image sizes (the original's README), used when none is given.
RELEASED_IMAGE_SIZE = {2: (384, 384), 3: (96, 96, 96)}
ORIGIN = "MOTFM (github.com/milad1378yz/MOTFM), MONAI Generative DiffusionModelUNet + ControlNet"


def read_original(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file of the original MOTFM code with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: naming the file when it is missing, cannot be read without unpickling arbitrary
            objects, or is not an original MOTFM checkpoint (no ``state_dict`` under ``model.*``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for foreign / truncated files
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True), which this importer never relaxes "
            f"({type(err).__name__}: {' '.join(str(err).split())[:300]})"
        ) from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith("model.unet.") for k in state):
        raise CheckpointError(
            f"{path}: not a checkpoint of the original MOTFM code "
            "(no 'state_dict' with 'model.unet.*' weights)"
        )
    if "motfm" in ckpt:
        raise CheckpointError(f"{path}: already a motfm checkpoint; use it directly")
    return ckpt


def original_config(
    ckpt: dict[str, Any], path: str | os.PathLike[str], config_path: str | None = None
) -> dict[str, Any]:
    """The training config of an original checkpoint: ``config_path`` (their YAML) when given, else the one
    stored in ``hyper_parameters`` (top level or under ``config``, as the original's inferer reads it).

    Raises:
        CheckpointError: naming the file when neither holds ``model_args``.
    """
    if config_path is not None:
        source = Path(config_path)
        if not source.is_file():
            raise CheckpointError(f"{source}: config file not found")
        config = OmegaConf.to_container(OmegaConf.load(source), resolve=True)
    else:
        source = Path(path)
        hp = ckpt.get("hyper_parameters")
        config = hp.get("config", hp) if isinstance(hp, dict) and "model_args" not in hp else hp
    if not isinstance(config, dict) or not isinstance(config.get("model_args"), dict):
        raise CheckpointError(
            f"{source}: no 'model_args' in the MOTFM config (pass config=<their training YAML>)"
        )
    return config


def suite_model_config(model_args: dict[str, Any], source: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``model`` section (for :func:`motfm.nn.velocity.build_velocity_net`) of an original ``model_args``.

    Raises:
        CheckpointError: naming ``source`` and the first ``model_args`` entry the suite cannot reproduce.
    """
    unknown = sorted(set(model_args) - MODEL_ARGS)
    if unknown:
        raise CheckpointError(f"{source}: model_args.{unknown[0]} is not an argument the original code knows")
    a = {**MONAI_DEFAULTS, **model_args}
    for key in ("spatial_dims", "in_channels"):
        if key not in a:
            raise CheckpointError(f"{source}: model_args.{key} is missing")
    refuse = {
        "out_channels": a.get("out_channels", a["in_channels"]) != a["in_channels"],
        "norm_eps": float(a["norm_eps"]) != 1e-6,
        "num_class_embeds": a.get("num_class_embeds") is not None,
    }
    for key, bad in refuse.items():
        if bad:
            raise CheckpointError(
                f"{source}: model_args.{key}={a.get(key)!r} is not supported by the importer"
            )
    with_class = bool(a["with_conditioning"])
    with_mask = bool(a.get("mask_conditioning", False))
    embed = list(a.get("conditioning_embedding_num_channels") or [16])
    if with_mask and len(embed) != 1:
        raise CheckpointError(
            f"{source}: model_args.conditioning_embedding_num_channels={embed}: the original ControlNet only "
            "runs with one width (more widths downsample the mask embedding below the image size)"
        )
    levels = len(a["num_channels"])
    blocks = a["num_res_blocks"]
    return {
        "_target_": "motfm.nn.velocity.build_velocity_net",
        "spatial_dims": int(a["spatial_dims"]),
        "channels": [int(c) for c in a["num_channels"]],
        "num_res_blocks": [int(blocks)] * levels if isinstance(blocks, int) else [int(n) for n in blocks],
        "attention_levels": [bool(x) for x in a["attention_levels"]],
        "head_dim": (
            int(a["num_head_channels"])
            if isinstance(a["num_head_channels"], int)
            else [int(d) for d in a["num_head_channels"]]
        ),
        "norm_groups": int(a["norm_num_groups"]),
        "dropout": 0.0,
        # MONAI: a spatial transformer (GEGLU x4 feed-forward) with conditioning, else plain attention.
        "transformer_num_layers": int(a["transformer_num_layers"]) if with_class else 1,
        "ff_mult": 4 if with_class else 0,
        "attention_block": "transformer" if with_class else "plain",
        "resblock_updown": bool(a["resblock_updown"]),
        "attention_backend": "sdpa",
        "conditioning": [c for c, on in (("class", with_class), ("mask", with_mask)) if on],
        "class_tokens": 1,
        "class_dim": int(a["cross_attention_dim"]) if with_class else 1,
        "class_context": "one_hot",
        "mask_embed_channels": embed,
        "mask_input": "scaled",
        "max_timestep": int(a.get("max_timestep", 1000)),
        "conditioning_scale": 1.0,
        # the suite's defaults (conf/model/unet2d.yaml, unet3d.yaml): channels-last 3D is slower on CPUs
        "channels_last": int(a["spatial_dims"]) == 2,
        "base_ckpt": None,
        "freeze_base": False,
        "activation_checkpointing": False,
    }


def image_range(data_args: dict[str, Any], source: str | os.PathLike[str]) -> tuple[float, float]:
    """The intensity range the original trained in, from ``data_args.image_norm`` (default ``minmax_0_1``).

    Raises:
        CheckpointError: for a normalisation without a fixed range (``zscore``, ``none``).
    """
    norm = data_args.get("image_norm", "minmax_0_1")
    mode = str(norm.get("mode", "minmax_0_1") if isinstance(norm, dict) else norm).lower()
    if mode not in IMAGE_NORM_RANGES:
        raise CheckpointError(
            f"{source}: data_args.image_norm mode {mode!r} has no fixed intensity range; "
            "pass data_range=[lo,hi] (the range its images were in)"
        )
    fixed = IMAGE_NORM_RANGES[mode]
    if fixed is not None:
        return fixed
    lo, hi = norm.get("range", (0.0, 1.0)) if isinstance(norm, dict) else (0.0, 1.0)
    return float(lo), float(hi)


def check_mask_norm(data_args: dict[str, Any], source: str | os.PathLike[str]) -> None:
    """Refuse a mask normalisation other than min-max to [0, 1] (what ``mask_input: scaled`` reproduces)."""
    norm = data_args.get("mask_norm", "minmax_0_1")
    mode = str(norm.get("mode", "minmax_0_1") if isinstance(norm, dict) else norm).lower()
    out = tuple(norm.get("range", (0.0, 1.0))) if isinstance(norm, dict) else (0.0, 1.0)
    if mode not in ("minmax_0_1", "0_1", "minmax", "auto") or tuple(float(v) for v in out) != (0.0, 1.0):
        raise CheckpointError(
            f"{source}: data_args.mask_norm {norm!r} is not supported (the importer feeds a label map "
            "0..K-1 as label / (K - 1), the original's default minmax_0_1)"
        )


def data_spec(
    config: dict[str, Any],
    model: dict[str, Any],
    image_size: list[int] | None,
    num_mask_labels: int,
    source: str | os.PathLike[str],
) -> DataSpec:
    """The data description of an original model (image size and mask labels are not in its checkpoint).

    Args:
        config: the original training config.
        model: the suite model section from :func:`suite_model_config`.
        image_size: the spatial size (``None``: the released checkpoints' 384x384 in 2D, 96^3 in 3D).
        num_mask_labels: labels of its masks including background (CAMUS: 4).
        source: named in errors.
    """
    dims = model["spatial_dims"]
    size = tuple(image_size) if image_size is not None else RELEASED_IMAGE_SIZE.get(dims)
    if size is None or len(size) != dims:
        raise CheckpointError(f"{source}: image_size={image_size} does not fit a {dims}D model")
    class_values = (config.get("data_args") or {}).get("class_values") or []
    with_class, with_mask = "class" in model["conditioning"], "mask" in model["conditioning"]
    num_classes = model["class_dim"] if with_class else 0
    if class_values and len(class_values) != num_classes:
        raise CheckpointError(
            f"{source}: data_args.class_values has {len(class_values)} entries, "
            f"cross_attention_dim {num_classes}"
        )
    return DataSpec(
        spatial_dims=dims,
        channels=int(config["model_args"]["in_channels"]),
        image_size=size,
        num_classes=num_classes,
        num_mask_labels=num_mask_labels if with_mask else 0,
        class_names=tuple(str(c) for c in class_values) if with_class else (),
    )


def sampling_steps(config: dict[str, Any]) -> int:
    """The original's sampling steps: ``1 / solver_args.step_size`` (0.1 in its configs: 10 Euler steps)."""
    step = float((config.get("solver_args") or {}).get("step_size") or 0.1)
    return max(1, round(1.0 / step))
