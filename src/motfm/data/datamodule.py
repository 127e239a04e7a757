"""One LightningDataModule for every dataset of the suite.

A dataset is given as a factory ``dataset(split=...) -> MotfmDataset`` (a Hydra ``_partial_``), so the
same module serves the phantoms, CAMUS, MSD and the rest. Splits are ``train``, ``val`` and ``test``.

Training batches come from :class:`ResumableSampler`: the order of epoch ``e`` is a permutation seeded by
``(seed, e)`` and sharded over the DDP ranks, and the module's state (saved in every checkpoint) records
how many batches of the current epoch were consumed, so a run resumed from a mid-epoch checkpoint sees
exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from motfm.data.base import DataError, DataSpec, MotfmDataset, check_sample
from motfm.data.splits import SPLITS
from motfm.flow.solvers import seed_for


class ResumableSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``(seed, epoch)``, sharded over ranks, that can
    start part-way through an epoch.

    Args:
        length: dataset size.
        seed: shuffling seed.
        num_replicas: number of DDP ranks.
        rank: this rank.
    """

    def __init__(self, length: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        self.length, self.seed, self.num_replicas, self.rank = length, seed, num_replicas, rank
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length // self.num_replicas

    def __iter__(self):  # noqa: ANN204
        g = torch.Generator().manual_seed(seed_for(self.seed, self.epoch))
        order = torch.randperm(self.length, generator=g)[: len(self) * self.num_replicas]
        mine = order[self.rank :: self.num_replicas].tolist()
        skip, self.skip = self.skip, 0
        return iter(mine[skip:])


class MotfmDataModule(L.LightningDataModule):
    """Build split datasets from a factory and serve them through DataLoaders.

    Args:
        dataset: callable ``dataset(split=name) -> MotfmDataset``.
        batch_size: samples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        val_batch_size: batch size of the val/test loaders (defaults to ``batch_size``).
        pin_memory: pin host memory (useful on GPUs).
        drop_last: drop the last incomplete training batch.
        seed: seed of the training order.
    """

    def __init__(
        self,
        dataset: Callable[..., MotfmDataset],
        batch_size: int = 32,
        num_workers: int = 0,
        val_batch_size: int | None = None,
        pin_memory: bool = False,
        drop_last: bool = True,
        seed: int = 0,
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
        self.seed = seed
        self._datasets: dict[str, MotfmDataset] = {}
        self._resume_batches = 0

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
        sampler = None
        if shuffle:
            trainer = self.trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            sampler = ResumableSampler(len(ds), self.seed, world, rank)
            sampler.skip, self._resume_batches = self._resume_batches * batch_size, 0
        return DataLoader(
            ds,
            batch_size=min(batch_size, len(ds)) if not drop_last else batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last and len(ds) >= batch_size,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def state_dict(self) -> dict[str, Any]:
        """Batches of the current epoch consumed so far (saved in checkpoints)."""
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0
        return {"batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """On resume, the next training loader starts after the consumed batches."""
        self._resume_batches = int(state_dict.get("batches_done", 0))

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
