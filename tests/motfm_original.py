"""The original MOTFM stack at tiny sizes, for the import tests (tests/interop).

Builds MONAI Generative's ``DiffusionModelUNet`` (+ ``ControlNet``) as the original ``build_model``
(``utils/utils_fm.py``) does from a ``model_args`` dict, with every parameter perturbed (zero-initialised
layers included, so that each weight moves the output), wrapped as its ``MergedModel`` is called
(:class:`motfm.bench.reference.MotfmStyleModel`), and saves it as its ``trainer.py`` does: a Lightning
checkpoint of a module holding the network as ``model`` and the training config as its hyper-parameters.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from motfm.bench.reference import MotfmStyleModel

BASE_2D = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 1,
    "num_res_blocks": [1, 2],
    "num_channels": [8, 16],
    "attention_levels": [False, True],
    "norm_num_groups": 8,
    "resblock_updown": True,
    "num_head_channels": [8, 8],
    "transformer_num_layers": 2,
    "use_flash_attention": False,
}
# The configurations of the original's configs/*.yaml at tiny sizes.
CONFIGS: dict[str, dict[str, Any]] = {
    "unconditional": {
        **BASE_2D,
        "with_conditioning": False,
        "mask_conditioning": False,
        "dropout_cattn": 0.2,
    },
    "class": {
        **BASE_2D,
        "with_conditioning": True,
        "mask_conditioning": False,
        "cross_attention_dim": 3,
        "dropout_cattn": 0.2,
    },
    "mask": {
        **BASE_2D,
        "with_conditioning": False,
        "mask_conditioning": True,
        "cross_attention_dim": None,
        "conditioning_embedding_num_channels": [16],
    },
    "mask_class": {
        **BASE_2D,
        "with_conditioning": True,
        "mask_conditioning": True,
        "cross_attention_dim": 3,
        "conditioning_embedding_num_channels": [16],
        "resblock_updown": False,
    },
    "3d": {
        **BASE_2D,
        "spatial_dims": 3,
        "num_head_channels": [8, 16],
        "transformer_num_layers": 6,
        "with_conditioning": False,
        "mask_conditioning": False,
    },
}
IMAGE_SIZE = {2: [16, 16], 3: [8, 8, 8]}
NUM_MASK_LABELS = 4


def build_original(model_args: dict[str, Any], seed: int = 0) -> MotfmStyleModel:
    """The original network of ``model_args``, every parameter perturbed (seeded), in eval mode."""
    from generative.networks.nets import ControlNet, DiffusionModelUNet

    mc = dict(model_args)
    mask = mc.pop("mask_conditioning", False)
    max_timestep = mc.pop("max_timestep", 1000)
    embed = mc.pop("conditioning_embedding_num_channels", None)
    torch.manual_seed(seed)
    unet = DiffusionModelUNet(**mc)
    controlnet = None
    if mask:
        mc.pop("out_channels", None)
        controlnet = ControlNet(**mc, conditioning_embedding_num_channels=tuple(embed or (16,)))
        controlnet.load_state_dict(unet.state_dict(), strict=False)
    net = MotfmStyleModel(unet, controlnet, max_timestep)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


class OriginalModule(pl.LightningModule):
    """The original ``FlowMatchingLightningModule`` as far as its checkpoint shows it."""

    def __init__(self, config: dict[str, Any], model: nn.Module) -> None:
        super().__init__()
        self.save_hyperparameters(config)
        self.model = model


def original_config(name: str, **model_args: Any) -> dict[str, Any]:
    """A training config of the original for configuration ``name`` (its YAML's sections)."""
    return {
        "model_args": {**copy.deepcopy(CONFIGS[name]), **model_args},
        "data_args": {
            "pickle_path": "./data/camus/dataset.pkl",
            "split_train": "train",
            "split_val": "valid",
        },
        "train_args": {"num_epochs": 1, "batch_size": 1, "lr": 1e-4, "checkpoint_dir": "ckpts"},
        "solver_args": {"method": "euler", "step_size": 0.1, "time_points": 10},
    }


def write_original(path: Path, config: dict[str, Any], net: nn.Module) -> Path:
    """Save ``net`` with ``config`` as the original's Lightning trainer does."""
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.strategy.connect(OriginalModule(config, net))
    trainer.save_checkpoint(path)
    return path
