"""The dataset base class that preprocesses every real dataset once and reads it from the cache.

Reading and resampling medical images (3D volumes especially) is slow, so each split is preprocessed once
into a cache entry, a folder of memory-mapped arrays and an index (:mod:`motfm.data.cache_entry`) at
``<cache_dir>/<dataset>/<split>-<key>/``.

``key`` hashes the dataset name, the root, the split, every input file with its size and modification time,
and every preprocessing option, so that a changed file or option builds a new entry and an unchanged one is
reused without opening a single source file. Entries are written atomically, so a crash (or a second process
building the same entry) never leaves a half-written entry behind. All reading and checking of the source
files happens while the dataset is constructed, in the main process, never inside a DataLoader worker.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from motfm.data.base import DataError, DataSpec, MotfmDataset
from motfm.data.cache_entry import (
    CACHE_FORMAT_VERSION,
    ArrayStore,
    Case,
    Record,
    cache_key,
    entry_complete,
    file_fingerprint,
    write_entry,
)
from motfm.data.splits import SPLITS
from motfm.data.transforms import Augment
from motfm.progress import progress

DEFAULT_CACHE_DIR = ".cache/motfm"


class CachedDataset(MotfmDataset):
    """Base class of the real datasets: lists source cases, preprocesses them once, serves the cached arrays.

    A subclass sets :attr:`dataset_name` and ``self.spec``, lists its cases in the constructor, implements
    :meth:`load_case` (source files -> records, raising :class:`DataError` on bad input) and calls
    :meth:`prepare`.

    Args:
        split: ``train``, ``val`` or ``test``.
        cache: store the preprocessed split under ``cache_dir`` (memory-mapped) and reuse it on later runs;
            ``False`` keeps it in memory for this run only.
        cache_dir: root folder of the cache; entries go to ``<cache_dir>/<dataset_name>/``.
        skip_bad_cases: skip cases that fail to load (one warning with the count and the first file names)
            instead of raising.
        augment: keyword arguments of :class:`motfm.data.transforms.Augment`, applied to training samples
            after the cache (``None``: no augmentation).
    """

    dataset_name: ClassVar[str] = "dataset"

    def __init__(
        self,
        split: str,
        *,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
        skip_bad_cases: bool = False,
        augment: dict[str, Any] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.split = split
        self.cache = bool(cache) and cache_dir is not None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.skip_bad_cases = skip_bad_cases
        self.augment = Augment(**augment) if augment else None
        self.cache_path: Path | None = None
        self.cache_hit = False
        self._store: ArrayStore | None = None
        self._generator: torch.Generator | None = None
        self._skipped: list[str] = []

    def load_case(self, case: Case) -> list[Record]:
        """Read and preprocess one case; raise :class:`DataError` naming the file on bad input."""
        raise NotImplementedError

    def prepare(self, cases: Sequence[Case], root: Path, options: dict[str, Any]) -> None:
        """Load this split from the cache, or build it from ``cases``.

        On a cache hit no source file is opened and ``self.spec`` is restored from the index; otherwise the
        cases are read (``load_case`` may set ``self.spec`` while reading) and stored.

        Args:
            cases: the cases of this split.
            root: the dataset root (its path enters the cache key).
            options: every preprocessing option (JSON-serialisable), part of the key and stored in the index.

        Raises:
            DataError: when the split has no cases or every case is bad, or on the first bad case unless
                ``skip_bad_cases``.
        """
        if not cases:
            raise DataError(f"{self.dataset_name}: the {self.split!r} split under {root} is empty")
        files = sorted({f for c in cases for f in c.files})
        payload = {
            "format_version": CACHE_FORMAT_VERSION,
            "dataset": self.dataset_name,
            "root": str(Path(root).resolve()),
            "split": self.split,
            "files": file_fingerprint(files, Path(root)),
            "options": options,
            "skip_bad_cases": self.skip_bad_cases,
        }
        self._skipped = []

        def index() -> dict[str, Any]:
            return {
                "format_version": CACHE_FORMAT_VERSION,
                "dataset": self.dataset_name,
                "split": self.split,
                "root": payload["root"],
                "options": options,
                "spec": self.spec.to_dict(),
                "skipped": self._skipped,
            }

        if self.cache:
            self.cache_path = self.cache_dir / self.dataset_name / f"{self.split}-{cache_key(payload)}"
            self.cache_hit = entry_complete(self.cache_path)
            if not self.cache_hit:
                write_entry(self.cache_path, self._records(cases), index)
            self._store = ArrayStore.open(self.cache_path)
        else:
            self._store = ArrayStore.from_records(list(self._records(cases)), index())
        self.spec = DataSpec.from_dict(self._store.index["spec"])
        self._warn_skipped(self._store.index.get("skipped", []))

    def report_bad(self, message: str) -> None:
        """Raise :class:`DataError` with ``message``, or record it when ``skip_bad_cases`` (for readers that
        skip parts of a case themselves)."""
        if not self.skip_bad_cases:
            raise DataError(message)
        self._skipped.append(message)

    def _records(self, cases: Sequence[Case]) -> Iterable[Record]:
        """Yield the records of every case; collect (or raise on) bad cases."""
        produced = 0
        desc = f"{self.dataset_name} [{self.split}]"
        for case in progress(cases, desc=desc, unit="case"):
            try:
                records = self.load_case(case)
            except DataError as e:
                self.report_bad(str(e))
                continue
            for record in records:
                produced += 1
                yield record
        if produced == 0:
            skipped = self._skipped
            detail = f"; all {len(skipped)} case(s) were bad, first: {skipped[0]}" if skipped else ""
            raise DataError(f"{self.dataset_name}: the {self.split!r} split has no usable samples{detail}")

    def _warn_skipped(self, skipped: list[str]) -> None:
        if skipped:
            first = "; ".join(skipped[:3])
            warnings.warn(
                f"{self.dataset_name} [{self.split}]: skipped {len(skipped)} bad case(s) "
                f"(skip_bad_cases=true): "
                f"{first}{' ...' if len(skipped) > 3 else ''}",
                stacklevel=3,
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.cache:  # workers re-open the memory maps instead of receiving copies of the arrays
            state["_store"] = None
        state["_generator"] = None
        return state

    @property
    def store(self) -> ArrayStore:
        """The split's arrays (opened on first use in each process)."""
        if self._store is None:
            self._store = ArrayStore.open(self.cache_path)
        return self._store

    @property
    def options(self) -> dict[str, Any]:
        """The preprocessing options the split was built with."""
        return self.store.index["options"]

    def __len__(self) -> int:
        return int(self.store.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.dataset_name}[{self.split}]: index {index} out of range for {n} samples")
        index = int(index) % n
        store = self.store
        sample: dict[str, Any] = {"image": torch.from_numpy(np.array(store.images[index], dtype=np.float32))}
        if self.spec.has_mask and store.masks is not None:
            sample["mask"] = torch.from_numpy(np.array(store.masks[index], dtype=np.int64))
        if self.spec.has_label and store.labels is not None:
            sample["label"] = torch.tensor(int(store.labels[index]), dtype=torch.int64)
        meta = dict(store.index["meta"][index])
        if "affine" in meta:
            meta["affine"] = np.asarray(meta["affine"], dtype=np.float64)
        sample["meta"] = meta
        if self.augment is not None and self.split == "train":
            sample = self.augment(sample, self._rng())
        return sample

    def _rng(self) -> torch.Generator:
        """This process's augmentation generator, seeded from the augment seed and the worker seed."""
        if self._generator is None:
            info = torch.utils.data.get_worker_info()
            base = info.seed if info is not None else torch.initial_seed()
            self._generator = torch.Generator().manual_seed((base + self.augment.seed) % (2**63))
        return self._generator
