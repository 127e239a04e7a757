"""Training and test items of the downstream tasks: images with their label maps and classes, and where each
image came from (a real scan or a generator)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor

from motfm.data.base import DataSpec, MotfmDataset
from motfm.data.pairs import source_data_config


@dataclass
class Items:
    """``N`` items of a segmentation + classification task.

    Attributes:
        images: float32 ``[N, C, *spatial]`` in [-1, 1].
        masks: int64 label maps ``[N, 1, *spatial]``.
        labels: int64 classes ``[N]``.
        synthetic: bool ``[N]``, True where the image was generated.
        source_index: int64 ``[N]``, the index in the data split of the real item (for a synthetic item: of
            the real item whose label map and class it was conditioned on).
    """

    images: Tensor
    masks: Tensor
    labels: Tensor
    synthetic: Tensor
    source_index: Tensor

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        sizes = {t.shape[0] for t in (self.masks, self.labels, self.synthetic, self.source_index)}
        if sizes != {n}:
            raise ValueError(f"items disagree in their count: images {n}, others {sorted(sizes)}")
        if self.masks.shape[2:] != self.images.shape[2:] or self.masks.shape[1] != 1:
            raise ValueError(
                f"masks {tuple(self.masks.shape)} do not match images {tuple(self.images.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_synthetic(self) -> int:
        """How many images were generated."""
        return int(self.synthetic.sum())

    @property
    def num_real(self) -> int:
        """How many images are real."""
        return len(self) - self.num_synthetic

    def subset(self, index: Tensor) -> Items:
        """The items at ``index`` (int64 ``[M]``)."""
        return Items(
            self.images[index],
            self.masks[index],
            self.labels[index],
            self.synthetic[index],
            self.source_index[index],
        )

    @staticmethod
    def cat(parts: Sequence[Items]) -> Items:
        """The items of ``parts`` one after the other."""
        return Items(*(torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("images", "masks", "labels", "synthetic", "source_index")


def data_splits(data_cfg: dict[str, Any]) -> Any:
    """The data module of a training data config (a reflow pairs config maps to its teacher's real data);
    ``.dataset(split)`` gives a split."""
    return instantiate(source_data_config(data_cfg))


def real_items(dataset: MotfmDataset, indices: Sequence[int]) -> Items:
    """The real items ``indices`` of a split.

    Raises:
        ValueError: when the data have no label maps or no classes (both tasks need them), or an index is out
            of range.
    """
    spec: DataSpec = dataset.spec
    if not (spec.has_mask and spec.has_label):
        raise ValueError(
            f"{type(dataset).__name__}: downstream tasks need label maps and classes, the data lack them"
        )
    bad = [int(i) for i in indices if not 0 <= int(i) < len(dataset)]
    if bad:
        raise ValueError(f"{type(dataset).__name__}: indices {bad[:5]} out of range for {len(dataset)} items")
    samples = [dataset[int(i)] for i in indices]
    return Items(
        images=torch.stack([s["image"] for s in samples]).float(),
        masks=torch.stack([s["mask"] for s in samples]).long(),
        labels=torch.stack([s["label"] for s in samples]).long(),
        synthetic=torch.zeros(len(samples), dtype=torch.bool),
        source_index=torch.as_tensor([int(i) for i in indices], dtype=torch.long),
    )
