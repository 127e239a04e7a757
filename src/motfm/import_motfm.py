"""Import a model of the original MOTFM code:
``python -m motfm.import_motfm ckpt_path=ORIGINAL.ckpt out=DIR [config=THEIR.yaml] [image_size=[H,W]]``.

Reads the Lightning checkpoint of the original ``FlowMatchingLightningModule`` (``weights_only=True``), builds
the suite network that computes the same velocity (:mod:`motfm.interop.original`: integer time steps, one-hot
class context, scaled mask, MONAI's attention blocks, the training intensity range), renames the weights
into it (:mod:`motfm.interop.monai_keys`) and writes into ``out``:

- ``model.ckpt``: a suite checkpoint (``checkpoint["motfm"] = {config, data_spec, method, format}``, the
  weights under ``net.`` and, the same tensors, ``ema.module.``) that ``motfm.sample``, ``motfm.evaluate``,
  ``motfm.audit`` and ``motfm.export_model`` take; its config records the data as the suite reads the
  original's pickle (``data_overrides.dataset.root=...`` points it at the file) and an ``origin`` section,
  which ``sampling.json`` repeats;
- ``model.safetensors``, ``config.json``, ``README.md``: the same model as a :func:`motfm.load_pretrained`
  folder (written by :func:`motfm.export_model.export_model`).

A checkpoint that is not an original MOTFM one, or whose weights do not fit its config, stops with one line
naming the file and the first mismatching parameter (exit status 2).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from motfm import __version__
from motfm.checkpoint import CheckpointError, load_state
from motfm.cli import readable_errors
from motfm.export_model import export_model
from motfm.interop.monai_keys import KeyMismatch, convert_state
from motfm.interop.original import (
    ORIGIN,
    check_mask_norm,
    data_spec,
    image_range,
    original_config,
    read_original,
    sampling_steps,
    suite_model_config,
)
from motfm.io.atomic import atomic_path
from motfm.loading import build_model
from motfm.objectives.flow_matching import FlowMatching

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.ckpt"
PICKLE_READER = "motfm.data.legacy_pickle.LegacyPickleDataset"


def data_config(cfg: DictConfig, config: dict[str, Any], num_mask_labels: int) -> dict[str, Any]:
    """The suite data config of the original's training data: ``cfg.data`` (the pickle reader) pointed at
    ``data_args.pickle_path``, resolved to plain values."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data_args = config.get("data_args") or {}
    dataset = data.get("dataset") or {}
    if dataset.get("_target_") == PICKLE_READER and config["model_args"].get("spatial_dims") == 3:
        log.warning(
            "the suite's reader of the original pickle is 2D only: for evaluate / audit on this 3D model's "
            "data, import it with data=msd_brain data.dataset.root=... (or another 3D data config)"
        )
    if dataset.get("_target_") == PICKLE_READER:
        with_mask = bool(config["model_args"].get("mask_conditioning", False))
        dataset.update(with_mask=with_mask, num_mask_labels=num_mask_labels)
        if data_args.get("pickle_path") and dataset.get("root") == "???":
            dataset["root"] = str(data_args["pickle_path"])
        if data_args.get("class_values"):
            dataset["class_names"] = [str(c) for c in data_args["class_values"]]
    return data


def import_motfm(cfg: DictConfig) -> Path:
    """Import the original checkpoint ``cfg.ckpt_path`` into ``cfg.out`` (see the module docstring).

    Returns:
        The output folder.

    Raises:
        CheckpointError: naming the file, for a checkpoint that is not an original MOTFM one or whose weights
            do not fit its config.
    """
    path = Path(cfg.ckpt_path)
    ckpt = read_original(path)
    config = original_config(ckpt, path, cfg.get("config"))
    source = cfg.get("config") or path
    model = suite_model_config(config["model_args"], source)
    data_args = config.get("data_args") or {}
    if "mask" in model["conditioning"]:
        check_mask_norm(data_args, source)
    lo, hi = (float(v) for v in cfg.data_range) if cfg.get("data_range") else image_range(data_args, source)
    method = {"_target_": "motfm.objectives.flow_matching.FlowMatching", "data_range": [lo, hi]}
    image_size = list(cfg.image_size) if cfg.get("image_size") else None
    spec = data_spec(config, model, image_size, int(cfg.num_mask_labels), source)
    solver = str((config.get("solver_args") or {}).get("method") or "euler")
    sampler = solver if solver in FlowMatching.samplers else "euler"
    suite_config = {
        "model": model,
        "method": method,
        "sampling": {"sampler": sampler, "steps": sampling_steps(config)},
        "data": data_config(cfg, config, int(cfg.num_mask_labels)),
        "seed": (config.get("train_args") or {}).get("seed"),
        "origin": {
            "source": ORIGIN,
            "checkpoint": path.name,
            "epoch": int(ckpt.get("epoch", 0)),
            "global_step": int(ckpt.get("global_step", 0)),
            "time_input": f"floor(t * {model['max_timestep'] - 1}) into MONAI's sinusoidal embedding",
            "data_range": [lo, hi],
            "imported_by": f"motfm {__version__}",
        },
    }
    if spec.has_label:
        suite_config["origin"]["class_context"] = "one-hot class vector as one cross-attention token"
    if spec.has_mask:
        suite_config["origin"]["mask_input"] = f"label / {spec.num_mask_labels - 1}, one ControlNet channel"
    try:
        net, _ = build_model(suite_config, spec, source)
    except CheckpointError:
        raise
    except ValueError as err:  # the builder's own checks, e.g. an image size the UNet cannot halve
        raise CheckpointError(f"{source}: the model of its config cannot be built ({err})") from err
    try:
        state = convert_state(ckpt["state_dict"], net.state_dict())
    except KeyMismatch as err:
        raise CheckpointError(f"{path}: {err}") from None
    load_state(net, state, path)
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    out = Path(cfg.out)
    checkpoint = {
        "state_dict": {
            **{f"net.{k}": v for k, v in state.items()},
            **{f"ema.module.{k}": v for k, v in state.items()},
        },
        "motfm": {"config": suite_config, "data_spec": spec.to_dict(), "method": "fm", "format": 2},
        "epoch": suite_config["origin"]["epoch"],
        "global_step": suite_config["origin"]["global_step"],
    }
    with atomic_path(out / CHECKPOINT_FILE) as tmp:
        torch.save(checkpoint, tmp)
    export_cfg = {"ckpt_path": str(out / CHECKPOINT_FILE), "out": str(out), "metrics": None, "use_ema": True}
    export_model(OmegaConf.create({**export_cfg, "name": cfg.get("name")}))
    log.info("imported %s (%d tensors) into %s", path, len(state), out)
    return out


@hydra.main(version_base="1.3", config_path="../../conf", config_name="import_motfm")
@readable_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    print(import_motfm(cfg))


if __name__ == "__main__":
    main()
