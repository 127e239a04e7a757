"""One LightningDataModule for every dataset of the suite.

A dataset is given as a factory ``dataset(split=...) -> MotfmDataset`` (a Hydra ``_partial_``), so the
same module serves the phantoms, CAMUS, MSD and the rest. Splits are ``train``, ``val`` and ``test``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from motfm.data.base import DataError, DataSpec, MotfmDataset, check_sample

SPLITS = ("train", "val", "test")


class MotfmDataModule(L.LightningDataModule):
    """Build split datasets from a factory and serve them through DataLoaders.

    Args:
        dataset: callable ``dataset(split=name) -> MotfmDataset``.
        batch_size: samples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        val_batch_size: batch size of the val/test loaders (defaults to ``batch_size``).
        pin_memory: pin host memory (useful on GPUs).
        drop_last: drop the last incomplete training batch.
    """

    def __init__(
        self,
        dataset: Callable[..., MotfmDataset],
        batch_size: int = 32,
        num_workers: int = 0,
        val_batch_size: int | None = None,
        pin_memory: bool = False,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.dataset_factory = dataset
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self._datasets: dict[str, MotfmDataset] = {}

    def dataset(self, split: str) -> MotfmDataset:
        """The dataset of ``split`` (built on first use, then cached), validated on its first sample."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._datasets:
            ds = self.dataset_factory(split=split)
            if len(ds) == 0:
                raise DataError(f"the {split!r} split of {type(ds).__name__} is empty")
            check_sample(ds[0], ds.spec, source=f"{type(ds).__name__}[{split}][0]")
            self._datasets[split] = ds
        return self._datasets[split]

    @property
    def spec(self) -> DataSpec:
        """The :class:`DataSpec` of the training split."""
        return self.dataset("train").spec

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs."""
        if stage in (None, "fit"):
            self.dataset("train")
            self.dataset("val")
        if stage in (None, "test"):
            self.dataset("test")

    def _loader(self, split: str, shuffle: bool, batch_size: int, drop_last: bool) -> DataLoader:
        ds = self.dataset(split)
        return DataLoader(
            ds,
            batch_size=min(batch_size, len(ds)) if not drop_last else batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last and len(ds) >= batch_size,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", True, self.batch_size, self.drop_last)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader("val", False, self.val_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self._loader("test", False, self.val_batch_size, False)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch sample dicts: tensors are stacked, ``meta`` becomes a list of dicts (one per sample)."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "meta":
            batch[key] = values
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
