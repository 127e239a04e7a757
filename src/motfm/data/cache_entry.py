"""One entry of the preprocessing cache: a folder of memory-mapped arrays and its index.

The layout (see :mod:`motfm.data.cache` for when entries are built and reused)::

    <cache_dir>/<dataset>/<split>-<key>/
        images.npy   float32 [N, C, *spatial]   values in [-1, 1]
        masks.npy    uint8   [N, 1, *spatial]   (when the dataset has masks)
        labels.npy   int64   [N]                (when the dataset has class labels)
        index.json   {"format_version", "dataset", "split", "options", "spec", "meta": [per-sample dicts],
                      "skipped": [...]}

An entry is written into a temporary folder beside its final name and renamed into place when complete, so
a crash (or a second process writing the same entry) never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from motfm.data.base import DataError
from motfm.io.atomic import write_json

CACHE_FORMAT_VERSION = 1
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
