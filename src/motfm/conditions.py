"""Conditions for sampling: class labels and masks from a dataset split, explicit labels, or mask files.

Conditions are cycled over the sample indices: sample i gets condition ``i mod n``.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from motfm.data.base import DataError, DataSpec
from motfm.data.pairs import source_data_config


@dataclass
class Conditions:
    """Labels ``[n]`` and/or masks ``[n, 1, *spatial]`` that samples cycle through.

    Attributes:
        labels: int64 class labels, or ``None``.
        masks: int64 label maps, or ``None``.
        source: where they came from (for records).
        affine: 4x4 voxel-to-world matrix for writing 3D samples (from the data when known).
        spacing: pixel / voxel spacing in mm per spatial axis (from the data when known).
    """

    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    source: str = "none"
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None

    def for_indices(
        self, indices: list[int], device: torch.device | str
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The labels ``[B]`` and masks ``[B, 1, *spatial]`` of samples ``indices``."""

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[[i % x.shape[0] for i in indices]].to(device)

        return pick(self.labels), pick(self.masks)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (used to recognise a restarted run)."""
        return {
            "source": self.source,
            "labels": None if self.labels is None else self.labels.tolist(),
            "masks_sum": None if self.masks is None else int(self.masks.sum()),
        }


def read_mask_file(path: str | os.PathLike[str], spec: DataSpec) -> torch.Tensor:
    """Read one label map from PNG (2D), ``.npy`` or NIfTI, and check it against the model.

    Args:
        path: the file; its values must be the integer labels ``0 .. num_mask_labels - 1``.
        spec: the model's data description.

    Returns:
        int64 ``[1, *spatial]``.

    Raises:
        DataError: naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask file not found")
    name = path.name.lower()
    try:
        if name.endswith(".png"):
            arr = np.asarray(Image.open(path))
        elif name.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        elif name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            arr = np.asanyarray(nib.load(path).dataobj)
        else:
            raise DataError(f"{path}: unsupported mask format (use .png, .npy, .nii or .nii.gz)")
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: cannot be read as a mask ({type(err).__name__}: {err})") from err
    arr = np.squeeze(arr)
    if arr.dtype.kind not in "biuf":  # strings, structured (RGB), complex, dates
        raise DataError(f"{path}: mask values must be integer labels, the file holds {arr.dtype} values")
    if tuple(arr.shape) != spec.image_size:
        raise DataError(f"{path}: mask has shape {tuple(arr.shape)}, the model needs {spec.image_size}")
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise DataError(f"{path}: mask values must be integer labels")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= spec.num_mask_labels:
        raise DataError(
            f"{path}: mask labels span [{lo}, {hi}], the model needs 0..{spec.num_mask_labels - 1}"
        )
    return torch.as_tensor(arr.astype(np.int64))[None]


def expand_paths(patterns: list[str]) -> list[str]:
    """Expand glob patterns in order; a pattern matching nothing is kept (and then reported missing)."""
    out: list[str] = []
    for p in patterns:
        matches = sorted(glob.glob(p))
        out.extend(matches or [p])
    return out


def resolve_conditions(cfg: DictConfig, model: Any) -> Conditions:
    """Build the sampling conditions the model needs from the sampling config.

    Sources, in order of precedence: ``labels=[...]`` and ``mask_files=[...]`` given explicitly;
    otherwise the ``cond_split`` split of the model's training data (``data_overrides`` may change
    e.g. its root folder).
    """
    spec: DataSpec = model.spec
    need_label, need_mask = model.net.num_classes > 0, model.net.num_mask_labels > 0
    if not (need_label or need_mask) and (cfg.get("labels") or cfg.get("mask_files")):
        raise ValueError("this model is unconditional: labels / mask_files cannot be used")
    labels = masks = None
    sources = []
    if cfg.get("labels") is not None:
        if not need_label:
            raise ValueError("this model is not class-conditional: remove labels=...")
        labels = torch.as_tensor(list(cfg.labels), dtype=torch.long)
        bad = [int(v) for v in labels if not 0 <= v < spec.num_classes]
        if bad or labels.numel() == 0:
            raise ValueError(
                f"labels must be non-empty values in 0..{spec.num_classes - 1}, got {list(cfg.labels)}"
            )
        sources.append("labels")
    if cfg.get("mask_files"):
        if not need_mask:
            raise ValueError("this model is not mask-conditional: remove mask_files=...")
        masks = torch.stack([read_mask_file(p, spec) for p in expand_paths(list(cfg.mask_files))])
        sources.append("mask_files")
    affine = spacing = None
    if (need_label and labels is None) or (need_mask and masks is None) or spec.spatial_dims == 3:
        ds_labels, ds_masks, affine, spacing = dataset_conditions(
            cfg, model, need_label and labels is None, need_mask and masks is None
        )
        if ds_labels is not None:
            labels = ds_labels
        if ds_masks is not None:
            masks = ds_masks
        if ds_labels is not None or ds_masks is not None:
            sources.append(f"data:{cfg.cond_split}")
    model.net.check_conditions(labels, masks)
    return Conditions(labels, masks, "+".join(sources) or "none", affine, spacing)


def dataset_conditions(
    cfg: DictConfig, model: Any, want_label: bool, want_mask: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None, np.ndarray | None, tuple[float, ...] | None]:
    """Labels and masks of the first ``num_samples`` items of the ``cond_split`` split, and the affine and
    spacing of its first item."""
    data_cfg = source_data_config(model.config["data"])
    if cfg.get("data_overrides"):
        data_cfg = OmegaConf.merge(data_cfg, cfg.data_overrides)
    try:
        ds = instantiate(data_cfg).dataset(cfg.cond_split)
    except (DataError, OSError) as err:
        if not (want_label or want_mask):
            return None, None, None, None
        raise ValueError(
            f"this model needs conditions and they come from the {cfg.cond_split!r} split of its training "
            f"data, which cannot be loaded ({err}); pass labels=[...] / mask_files=[...] or "
            "data_overrides.dataset.root=..."
        ) from err
    n = min(len(ds), cfg.num_samples)
    items = [ds[i] for i in range(n)] if (want_label or want_mask) else [ds[0]]
    labels = torch.stack([s["label"] for s in items]) if want_label else None
    masks = torch.stack([s["mask"] for s in items]) if want_mask else None
    meta = items[0].get("meta", {})
    affine, spacing = meta.get("affine"), meta.get("spacing")
    return (
        labels,
        masks,
        None if affine is None else np.asarray(affine, np.float64),
        None if spacing is None else tuple(float(s) for s in spacing),
    )
