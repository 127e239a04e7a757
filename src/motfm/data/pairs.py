"""Reflow pairs (written by ``python -m motfm.reflow``) as a dataset: ``data=pairs data.dataset.root=PAIRS``.

A pair is a sample dict whose ``image`` is the teacher's sample x1 and whose ``noise`` is the x0 it came from
(plus ``label`` / ``mask``: the condition it was generated under). The ``train`` and ``val`` splits divide the
pairs (the last ``val_fraction`` of them validate); ``test`` is the teacher's real test data, so that
evaluation compares a student with real images, never with its teacher's samples.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from motfm.data.base import DataError, DataSpec, MotfmDataset

PAIRS_TARGET = "motfm.data.pairs.PairDataset"


def read_pairs_info(root: str | Path) -> dict[str, Any]:
    """``pairs.json`` of a pairs folder, checked."""
    path = Path(root) / "pairs.json"
    if not path.is_file():
        raise DataError(f"{path}: no pairs.json (generate the pairs with python -m motfm.reflow)")
    try:
        info = json.loads(path.read_text())
        DataSpec.from_dict(info["data_spec"])
        info["data"]["dataset"]  # noqa: B018 - the teacher's data config must be there
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a readable pairs description ({type(err).__name__}: {err})") from None
    return info


def source_data_config(data_cfg: DictConfig | dict[str, Any]) -> DictConfig:
    """The real data behind a data config: a pairs config maps to its teacher's data, any other to itself."""
    data_cfg = OmegaConf.create(data_cfg)
    if OmegaConf.select(data_cfg, "dataset._target_") == PAIRS_TARGET:
        return OmegaConf.create(read_pairs_info(data_cfg.dataset.root)["data"])
    return data_cfg


def _read_shard(path: Path) -> dict[str, Any]:
    """One pair shard, memory-mapped; a truncated or foreign file is a :class:`DataError` naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated or foreign file
        raise DataError(f"{path}: cannot be read as a pair shard ({type(err).__name__}: {err})") from err


def carried_spec(spec: DataSpec, shard: dict[str, Any]) -> DataSpec:
    """The teacher's data spec less the conditions its pairs do not carry.

    A teacher that is not mask (class) conditioned writes no masks (labels): its student, trained on the
    pairs, must not expect them, while the teacher's real data (the ``test`` split) still has them.
    """
    changes: dict[str, Any] = {}
    if shard.get("labels") is None:
        changes.update(num_classes=0, class_names=())
    if shard.get("masks") is None:
        changes.update(num_mask_labels=0, mask_label_names=())
    return dataclasses.replace(spec, **changes)


class PairDataset(MotfmDataset):
    """The pairs of a folder written by :mod:`motfm.reflow`.

    Its spec is the teacher's data spec less the conditions the pairs do not carry (:func:`carried_spec`),
    the same for every split.

    Args:
        root: the folder holding ``pairs.json`` and ``parts/``.
        split: ``train`` / ``val`` (pairs) or ``test`` (the teacher's real test split).
        val_fraction: share of the pairs held out for validation.
    """

    def __init__(self, root: str, split: str = "train", val_fraction: float = 0.02) -> None:
        self.root = Path(root)
        info = read_pairs_info(self.root)
        self.split = split
        files = sorted((self.root / "parts").glob("part_*.pt"))
        if not files:
            raise DataError(f"{self.root}/parts: no pair shards")
        first = _read_shard(files[0])
        self.spec = carried_spec(DataSpec.from_dict(info["data_spec"]), first)
        if split == "test":
            real = instantiate(OmegaConf.create(info["data"])).dataset("test")
            self.real, self.shards, self.starts, self.index = real, [], [], range(len(real))
            return
        self.real = None
        self.shards = [first, *(_read_shard(f) for f in files[1:])]
        self.starts = [0]
        for shard in self.shards:
            self.starts.append(self.starts[-1] + shard["images"].shape[0])
        total = self.starts[-1]
        n_val = max(1, round(total * val_fraction)) if total > 1 else 0
        self.index = range(0, total - n_val) if split == "train" else range(total - n_val, total)
        if len(self.index) == 0:
            raise DataError(f"{self.root}: the {split!r} split of {total} pairs is empty")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.real is not None:
            return self.real[i]
        j = self.index[i]
        s = bisect.bisect_right(self.starts, j) - 1
        shard, k = self.shards[s], j - self.starts[s]
        sample: dict[str, Any] = {
            "image": shard["images"][k].float().clone(),
            "noise": shard["noise"][k].float().clone(),
            "meta": {"source": str(self.root), "pair": int(shard["indices"][k])},
        }
        if shard.get("labels") is not None:
            sample["label"] = shard["labels"][k].long().clone()
        if shard.get("masks") is not None:
            sample["mask"] = shard["masks"][k].long().clone()
        return sample
