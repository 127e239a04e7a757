"""What an evaluation reads: the checkpoint or sample files it scores (:class:`Source`), the real items of a
data split (:class:`Reference`) and sets of generated images (:class:`GeneratedSet`).

``samples=`` accepts what ``python -m motfm.sample`` writes: a ``samples.npz`` (2D), its folder, or a folder
of ``volumes/sample_XXXXX.nii.gz`` (3D, with ``..._mask.nii.gz`` beside mask-conditioned ones). The
checkpoint defaults to the ``ckpt_path`` recorded in the samples' ``sampling.json``; its stored data config
defines the real data (``data_overrides`` may change e.g. the root folder).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from motfm.checkpoint import read_checkpoint
from motfm.data.base import DataSpec, MotfmDataset
from motfm.data.pairs import source_data_config
from motfm.evaluation.errors import InputError
from motfm.loading import LoadedModel, load_model
from motfm.progress import progress

_SAMPLE_NAME = re.compile(r"sample_(\d+)\.nii(\.gz)?$")


@dataclass
class Source:
    """What is evaluated and the training run it comes from.

    Attributes:
        config: the training configuration stored in the checkpoint.
        spec: the data description of the model.
        ckpt_path: the checkpoint.
        model: the loaded network (on-the-fly sampling), else ``None``.
        samples: the path of the sample files (``samples=`` input), else ``None``.
    """

    config: dict[str, Any]
    spec: DataSpec
    ckpt_path: str
    model: LoadedModel | None = None
    samples: Path | None = None

    @property
    def conditioning(self) -> list[str]:
        """The model's conditioning: any of ``class`` and ``mask``."""
        return list(self.config["model"].get("conditioning") or [])


@dataclass
class Reference:
    """Real items: images ``[N, C, *spatial]``, labels ``[N]`` and masks ``[N, 1, *spatial]``, and the spec
    of the dataset they come from (which may describe more than the evaluated model uses: a reflow student of
    an unconditional teacher has no mask labels, its real data has)."""

    images: Tensor
    labels: Tensor | None
    masks: Tensor | None
    affine: np.ndarray | None
    spec: DataSpec


@dataclass
class GeneratedSet:
    """One set of generated images ``[M, C, *spatial]`` with their sample indices ``[M]``, conditions and how
    they were made (``info``: sampler, steps, nfe, seconds, images_per_s)."""

    images: Tensor
    indices: Tensor
    labels: Tensor | None
    masks: Tensor | None
    info: dict[str, Any] = field(default_factory=dict)


def sample_files(path: Path) -> tuple[Path | None, list[Path], Path]:
    """``(samples.npz or None, NIfTI volumes, folder holding sampling.json)`` of a ``samples=`` path.

    Raises:
        InputError: no sample files at ``path``.
    """
    if path.is_file() and path.suffix == ".npz":
        return path, [], path.parent
    if (path / "samples.npz").is_file():
        return path / "samples.npz", [], path
    folder = path / "volumes" if (path / "volumes").is_dir() else path
    volumes = sorted(p for p in folder.glob("sample_*.nii*") if _SAMPLE_NAME.search(p.name))
    if not volumes:
        raise InputError(
            f"samples={path}: expected a samples.npz, a folder holding one, or a folder of "
            "volumes/sample_*.nii.gz"
        )
    return None, volumes, folder.parent if folder.name == "volumes" else folder


def resolve_source(cfg: DictConfig, device: torch.device) -> Source:
    """Load the checkpoint (and the model, for on-the-fly sampling) named by ``cfg.ckpt_path`` /
    ``cfg.samples``.

    Raises:
        InputError: neither is given, or the samples name no checkpoint.
        motfm.checkpoint.CheckpointError: the checkpoint is missing or unreadable.
    """
    if cfg.samples is None:
        if cfg.ckpt_path is None:
            raise InputError(
                "pass ckpt_path=<checkpoint> (sampling on the fly) or samples=<samples.npz or folder>"
            )
        model = load_model(cfg.ckpt_path, cfg.use_ema, cfg.get("model_overrides"), device)
        return Source(model.config, model.spec, str(cfg.ckpt_path), model=model)
    samples = Path(cfg.samples)
    ckpt_path = cfg.ckpt_path
    if ckpt_path is None:
        info_file = sample_files(samples)[2] / "sampling.json"
        if info_file.is_file():
            ckpt_path = json.loads(info_file.read_text()).get("ckpt_path")
    if ckpt_path is None:
        raise InputError(
            f"samples={samples}: no sampling.json naming their checkpoint; pass ckpt_path=<checkpoint> "
            "(its data config defines the real data)"
        )
    meta = read_checkpoint(ckpt_path)["motfm"]
    return Source(meta["config"], DataSpec.from_dict(meta["data_spec"]), str(ckpt_path), samples=samples)


def data_config(cfg: DictConfig, source: Source) -> DictConfig:
    """The training data config of the checkpoint with ``cfg.data_overrides`` applied."""
    data_cfg = source_data_config(source.config["data"])
    if cfg.get("data_overrides"):
        data_cfg = OmegaConf.merge(data_cfg, cfg.data_overrides)
    return data_cfg


def open_split(data_cfg: DictConfig, split: str) -> MotfmDataset:
    """The dataset of ``split`` built from a data config."""
    return instantiate(data_cfg).dataset(split)


def load_reference(data_cfg: DictConfig, split: str, num_ref: int | None, min_items: int = 2) -> Reference:
    """The first ``num_ref`` (default: all) items of ``split``, in memory.

    Raises:
        InputError: the split has fewer than ``min_items`` items.
    """
    ds = open_split(data_cfg, split)
    n = len(ds) if num_ref is None else min(int(num_ref), len(ds))
    if n < min_items:
        raise InputError(f"the {split!r} split needs at least {min_items} items, it has {len(ds)}")
    items = [ds[i] for i in progress(range(n), desc=f"real {split}", unit="item", leave=False)]
    labels = torch.stack([s["label"] for s in items]) if "label" in items[0] else None
    masks = torch.stack([s["mask"] for s in items]) if "mask" in items[0] else None
    affine = items[0].get("meta", {}).get("affine")
    return Reference(
        torch.stack([s["image"] for s in items]).float(),
        labels,
        masks,
        None if affine is None else np.asarray(affine, np.float64),
        ds.spec,
    )


def read_samples(samples: Path) -> GeneratedSet:
    """The samples of a ``samples=`` input, with their conditions and the record of ``sampling.json``."""
    npz, volumes, folder = sample_files(samples)
    info: dict[str, Any] = {"sampler": "samples", "steps": None}
    if (folder / "sampling.json").is_file():
        record = json.loads((folder / "sampling.json").read_text())
        info = {k: record.get(k) for k in ("sampler", "steps", "nfe", "seconds")}
        info["images_per_s"] = record.get("samples_per_s")
    if npz is not None:
        with np.load(npz, allow_pickle=False) as data:
            if "images" not in data:
                raise InputError(f"{npz}: no 'images' array (not written by motfm.sample)")
            images = torch.from_numpy(data["images"].astype(np.float32))
            indices = (
                torch.from_numpy(data["indices"]) if "indices" in data else torch.arange(images.shape[0])
            )
            labels = torch.from_numpy(data["labels"]).long() if "labels" in data else None
            masks = torch.from_numpy(data["masks"]).long() if "masks" in data else None
        return GeneratedSet(images, indices.long(), labels, masks, info)

    def read(path: Path) -> Tensor:
        return torch.from_numpy(np.asarray(nib.load(path).get_fdata(dtype=np.float32)))[None]

    indices = [int(_SAMPLE_NAME.search(p.name).group(1)) for p in volumes]
    images = torch.stack([read(p) for p in progress(volumes, desc="read volumes", leave=False)])
    mask_files = [
        p.with_name(p.name.replace(f"sample_{i:05d}", f"sample_{i:05d}_mask"))
        for p, i in zip(volumes, indices)
    ]
    masks = (
        torch.stack([read(p).round().long() for p in mask_files])
        if all(p.is_file() for p in mask_files)
        else None
    )
    return GeneratedSet(images, torch.tensor(indices), None, masks, info)
