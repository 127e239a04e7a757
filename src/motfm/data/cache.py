"""The preprocessing cache, and the dataset base class that reads every real dataset from it.

Reading and resampling medical images (3D volumes especially) is slow, so each split is preprocessed once
into a cache entry, a folder of memory-mapped arrays::

    <cache_dir>/<dataset>/<split>-<key>/
        images.npy   float32 [N, C, *spatial]   values in [-1, 1]
        masks.npy    uint8   [N, 1, *spatial]   (when the dataset has masks)
        labels.npy   int64   [N]                (when the dataset has class labels)
        index.json   {"format_version", "dataset", "split", "options", "spec", "meta": [per-sample dicts],
                      "skipped": [...]}

``key`` hashes the dataset name, the root, the split, every input file with its size and modification time,
and every preprocessing option, so that a changed file or option builds a new entry and an unchanged one is
reused without opening a single source file. An entry is built in a temporary folder beside its final name
and renamed into place when complete, so a crash (or a second process building the same entry) never leaves
a half-written entry behind. All reading and checking of the source files happens while the dataset is
constructed, in the main process, never inside a DataLoader worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from motfm.data.base import DataError, DataSpec, MotfmDataset
from motfm.data.splits import SPLITS
from motfm.data.transforms import Augment
from motfm.io.atomic import write_json

CACHE_FORMAT_VERSION = 1
DEFAULT_CACHE_DIR = ".cache/motfm"
_ARRAYS = {"images": np.float32, "masks": np.uint8, "labels": np.int64}


@dataclass
class Record:
    """One preprocessed sample before it is stored.

    Attributes:
        image: float32 ``[C, *spatial]`` in [-1, 1].
        mask: integer label map ``[1, *spatial]`` (values < 256) or ``None``.
        label: class index or ``None``.
        meta: JSON-serialisable per-sample information (ids, source path, spacing, affine as nested lists).
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One unit of source data (a patient view, a volume, a DICOM file) that yields one or more records.

    Attributes:
        id: the case id used in messages and meta.
        files: the source files the case reads (they enter the cache key).
        info: whatever else the reader needs (parsed once while listing).
    """

    id: str
    files: tuple[Path, ...]
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class ArrayStore:
    """The arrays of one split (memory-mapped from a cache entry, or in memory).

    Attributes:
        images: float32 ``[N, C, *spatial]``.
        masks: uint8 ``[N, 1, *spatial]`` or ``None``.
        labels: int64 ``[N]`` or ``None``.
        index: the parsed ``index.json`` (``meta`` holds one dict per sample).
    """

    images: np.ndarray
    masks: np.ndarray | None
    labels: np.ndarray | None
    index: dict[str, Any]

    @classmethod
    def open(cls, directory: Path) -> ArrayStore:
        """Memory-map a complete cache entry (read-only)."""
        index = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        arrays = {
            name: np.load(directory / f"{name}.npy", mmap_mode="r")
            if (directory / f"{name}.npy").exists()
            else None
            for name in _ARRAYS
        }
        return cls(arrays["images"], arrays["masks"], arrays["labels"], index)

    @classmethod
    def from_records(cls, records: Sequence[Record], index: dict[str, Any]) -> ArrayStore:
        """Stack records in memory (used when the cache is disabled)."""
        masks = [r.mask for r in records]
        labels = [r.label for r in records]
        return cls(
            np.stack([r.image for r in records]).astype(np.float32, copy=False),
            np.stack(masks).astype(np.uint8) if masks[0] is not None else None,
            np.asarray(labels, dtype=np.int64) if labels[0] is not None else None,
            {**index, "meta": [r.meta for r in records]},
        )


def file_fingerprint(files: Iterable[Path], root: Path) -> list[list[Any]]:
    """``[path relative to root, size, mtime_ns]`` per file (``-1`` for the size and time when missing)."""
    out = []
    for f in files:
        try:
            rel = str(f.resolve().relative_to(root.resolve()))
        except ValueError:
            rel = str(f.resolve())
        try:
            st = f.stat()
            out.append([rel, st.st_size, st.st_mtime_ns])
        except OSError:  # a missing file: the reader reports it while building
            out.append([rel, -1, -1])
    return out


def cache_key(payload: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable ``payload``."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


class _Writer:
    """Append records to raw files in a temporary folder, then turn them into ``.npy`` arrays."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.count = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.handles: dict[str, Any] = {}
        self.meta: list[dict[str, Any]] = []

    def add(self, record: Record) -> None:
        parts = {"images": record.image, "masks": record.mask, "labels": record.label}
        for name, value in parts.items():
            if value is None:
                if name in self.handles:
                    raise DataError(
                        f"record {record.meta.get('id', self.count)} has no {name} entry, earlier ones do"
                    )
                continue
            arr = np.asarray(value, dtype=_ARRAYS[name])
            if name not in self.handles:
                if self.count:
                    raise DataError(
                        f"record {record.meta.get('id', self.count)} has a {name} entry, earlier ones none"
                    )
                self.shapes[name] = arr.shape
                self.handles[name] = open(self.dir / f"{name}.bin", "wb")  # noqa: SIM115 (closed in finish)
            if arr.shape != self.shapes[name]:
                raise DataError(
                    f"record {record.meta.get('id', self.count)}: {name} shape {arr.shape} differs from "
                    f"the first record's {self.shapes[name]}"
                )
            self.handles[name].write(np.ascontiguousarray(arr).tobytes())
        self.meta.append(record.meta)
        self.count += 1

    def finish(self, index: dict[str, Any]) -> None:
        if self.count == 0:
            raise DataError("no records to write")
        for name, handle in self.handles.items():
            handle.close()
            raw = self.dir / f"{name}.bin"
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(_ARRAYS[name])),
                "fortran_order": False,
                "shape": (self.count, *self.shapes[name]),
            }
            with open(self.dir / f"{name}.npy", "wb") as out, open(raw, "rb") as src:
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(src, out, 1 << 24)
            raw.unlink()
        write_json(self.dir / "index.json", {**index, "meta": self.meta})

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def write_entry(directory: Path, records: Iterable[Record], index: Callable[[], dict[str, Any]]) -> int:
    """Write a cache entry atomically (build in a temporary folder, then rename to ``directory``).

    If another process completed the same entry meanwhile, its entry is kept and this one discarded.

    Args:
        directory: the final entry folder.
        records: the samples, consumed once.
        index: returns the JSON index (without ``meta``, which is collected from the records), called once
            every record has been produced.

    Returns:
        The number of records written.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".part", dir=directory.parent))
    writer = _Writer(tmp)
    try:
        for record in records:
            writer.add(record)
        writer.finish(index())
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / "index.json").exists():
                raise
    finally:
        writer.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return writer.count


def entry_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a complete cache entry of the current format."""
    try:
        index = json.loads((directory / "index.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(index, dict) and index.get("format_version") == CACHE_FORMAT_VERSION


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
    # Show a tqdm progress bar over the cases while building a cache entry (set by scripts/prepare_data.py).
    progress: ClassVar[bool] = False

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
        # progress only on a terminal (disable=None): a log or a pipe gets no bar lines
        for case in tqdm(cases, desc=desc, unit="case", disable=None if self.progress else True):
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
