"""The single-pickle data format of the original MOTFM code, and its conversion to the suite's safe format.

The original file is ``{"train" | "valid" | "test": [entry, ...]}`` (our split ``val`` is their ``valid``),
each entry a dict with ``image`` (``[H, W]`` or ``[C, H, W]`` array), optional ``mask`` (``[H, W]`` label
map), optional ``class`` (int or str) and optional ``metadata`` (dict) / ``name``.

Unpickling runs arbitrary code, so a pickle is only opened with ``trust_pickle=True``
(``data.dataset.trust_pickle=true``). :func:`convert_pickle` (``scripts/convert_pickle.py``) writes the file
once into the suite's own format (``.npy`` arrays + JSON, see :mod:`motfm.data.cache_entry`); ``root`` may
then name the converted folder and no pickle is opened again.

Decisions taken over the whole file (never per split):

- intensities: values within [0, 1] map to ``2x - 1``; within [-1, 1] are kept; within [0, 255] map as 8-bit;
  anything else by the global minimum and maximum of all images of all splits;
- masks: the original code stored label maps scaled to [0, 1] (``{0, 1/3, 2/3, 1}`` for four labels). If any
  mask value is not an integer, every mask is taken as scaled and mapped back by ``round(m * (K - 1))`` with
  ``K = num_mask_labels`` (values further than 1e-3 from that grid are an error); otherwise masks are labels;
- classes: strings are numbered in sorted order (or in the order of ``class_names``); integers are kept.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from motfm.data.base import DataError, DataSpec
from motfm.data.cache import DEFAULT_CACHE_DIR, CachedDataset
from motfm.data.cache_entry import ArrayStore, Case, Record, entry_complete, write_entry
from motfm.data.splits import SPLITS
from motfm.data.transforms import as_size, resize_image, resize_mask
from motfm.progress import progress

SPLIT_KEYS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}
MAX_INT_CLASSES = 10_000  # integer classes without class_names beyond this are taken as corrupt


def load_trusted_pickle(path: Path, trust_pickle: bool) -> dict[str, Any]:
    """Unpickle the original MOTFM file, only when the user said it is trusted.

    Raises:
        DataError: when ``trust_pickle`` is false, the file is missing or unreadable, or it is not a dict of
            splits.
    """
    if not trust_pickle:
        raise DataError(
            f"{path}: refusing to unpickle: loading a pickle runs arbitrary code. If you trust this file, "
            "opt in with data.dataset.trust_pickle=true, or convert it once with scripts/convert_pickle.py "
            "and point data.dataset.root at the converted folder"
        )
    if not path.is_file():
        raise DataError(f"{path}: pickle file is missing")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 (explicitly trusted by the user)
    except Exception as e:  # truncated or foreign files raise many exception types
        raise DataError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not any(k in data for keys in SPLIT_KEYS.values() for k in keys):
        raise DataError(
            f"{path}: expected a dict with 'train'/'valid'/'test' lists, got {type(data).__name__}"
        )
    return data


def _split_entries(data: dict[str, Any], split: str, path: Path) -> list[Any]:
    for key in SPLIT_KEYS[split]:
        if key in data:
            entries = data[key]
            if not isinstance(entries, list | tuple):
                raise DataError(f"{path}: split {key!r} is a {type(entries).__name__}, expected a list")
            return list(entries)
    return []


def _numeric_array(value: Any, name: str, where: str, dtype: type) -> np.ndarray:
    """``value`` as a ``dtype`` array; a DataError when it holds no real numbers (strings, ragged lists)."""
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise DataError(f"{where}: {name} is not an array ({e})") from None
    if raw.dtype.kind not in "biuf":
        raise DataError(f"{where}: {name} holds {raw.dtype} values, expected real numbers")
    return raw.astype(dtype)


def _image_array(entry: Any, where: str) -> np.ndarray:
    if not isinstance(entry, dict) or "image" not in entry:
        raise DataError(f"{where}: entry is not a dict with an 'image'")
    image = _numeric_array(entry["image"], "image", where, np.float32)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[0] > 4 or image.size == 0:
        raise DataError(
            f"{where}: image has shape {image.shape}, expected a non-empty [H, W] or [C, H, W] with C <= 4"
        )
    if not np.isfinite(image).all():
        raise DataError(f"{where}: image contains NaN or inf values")
    return image


def _intensity_map(lo: float, hi: float) -> tuple[str, float, float]:
    """The global intensity mapping ``(name, a, b)``: ``x -> a * x + b``."""
    if lo >= 0 and hi <= 1:
        return "unit", 2.0, -1.0
    if lo >= -1 and hi <= 1:
        return "identity", 1.0, 0.0
    if lo >= 0 and hi <= 255:
        return "uint8", 1 / 127.5, -1.0
    scale = 2.0 / (hi - lo) if hi > lo else 0.0
    return "minmax", scale, -1.0 - lo * scale


class LegacyPickleDataset(CachedDataset):
    """The original MOTFM pickle (or its converted folder) as 2D samples.

    Each sample: ``image`` float32 ``[C, H, W]`` in [-1, 1], ``mask`` int64 ``[1, H, W]`` (when the file has
    masks and ``with_mask``), ``label`` (when it has classes) and ``meta`` (``id``, ``source``, ``index``,
    ``name``, ``metadata`` when JSON-serialisable).

    Args:
        split: ``train``, ``val`` (their ``valid``) or ``test``.
        root: the ``.pkl`` file, or a folder written by :func:`convert_pickle`.
        trust_pickle: allow unpickling (it runs arbitrary code); not needed for a converted folder.
        image_size: output ``H, W``; ``None`` keeps the stored size (which must then be uniform).
        num_mask_labels: ``K``, the number of mask labels with background (and the scale of scaled masks).
        class_names: names of the classes in index order (string classes are numbered in this order).
        with_mask: keep the masks.
        cache, cache_dir, skip_bad_cases, augment: see :class:`motfm.data.cache.CachedDataset`.
    """

    dataset_name = "pickle"

    def __init__(
        self,
        split: str,
        *,
        root: str | os.PathLike[str],
        trust_pickle: bool = False,
        image_size: int | Sequence[int] | None = None,
        num_mask_labels: int = 4,
        class_names: Sequence[str] | None = None,
        with_mask: bool = True,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
        skip_bad_cases: bool = False,
        augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            split, cache=cache, cache_dir=cache_dir, skip_bad_cases=skip_bad_cases, augment=augment
        )
        if num_mask_labels < 2:
            raise ValueError(f"num_mask_labels must be >= 2, got {num_mask_labels}")
        self.root = Path(root).expanduser()
        if self.root.is_dir():
            self._open_converted()
            return
        if not trust_pickle or not self.root.is_file():
            load_trusted_pickle(self.root, trust_pickle)  # raises the explanatory DataError
        self.trust_pickle = trust_pickle
        self.image_size = as_size(image_size, 2) if image_size is not None else None
        self.num_mask_labels = int(num_mask_labels)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.with_mask = with_mask
        self.spec = DataSpec(spatial_dims=2, channels=1, image_size=(1, 1))  # replaced while reading
        options = {
            "image_size": list(self.image_size) if self.image_size else None,
            "num_mask_labels": self.num_mask_labels,
            "class_names": list(self.class_names) if self.class_names else None,
            "with_mask": with_mask,
        }
        self.prepare([Case(f"{self.root.name}:{split}", (self.root,))], self.root.parent, options)

    def _open_converted(self) -> None:
        entry = self.root / self.split
        if not entry_complete(entry):
            raise DataError(
                f"{entry}: no converted {self.split!r} split here (see scripts/convert_pickle.py)"
            )
        self.cache, self.cache_path, self.cache_hit = True, entry, True
        self._store = ArrayStore.open(entry)
        self.spec = DataSpec.from_dict(self._store.index["spec"])
        self._warn_skipped(self._store.index.get("skipped", []))

    def load_case(self, case: Case) -> list[Record]:
        """Unpickle the file and turn this split's entries into records (decisions taken over all splits)."""
        path = self.root
        data = load_trusted_pickle(path, self.trust_pickle)
        every = {s: _split_entries(data, s, path) for s in SPLITS}
        entries = every[self.split]
        if not entries:
            raise DataError(
                f"{path}: the {self.split!r} split (key {SPLIT_KEYS[self.split]}) is empty or absent"
            )
        images, lo, hi, sizes = {}, np.inf, -np.inf, set()
        for s, items in every.items():
            for i, entry in enumerate(items):
                try:
                    image = _image_array(entry, f"{path} [{s}][{i}]")
                except DataError as e:
                    if s == self.split:
                        self.report_bad(str(e))
                    continue
                lo, hi = min(lo, float(image.min())), max(hi, float(image.max()))
                sizes.add(image.shape)
                if s == self.split:
                    images[i] = image
        if not images:
            raise DataError(f"{path}: no usable image in the {self.split!r} split")
        if len({shape[0] for shape in sizes}) > 1:
            raise DataError(f"{path}: images have different channel counts {sorted(sizes)}")
        if self.image_size is None and len(sizes) > 1:
            raise DataError(
                f"{path}: images have different sizes {sorted(sizes)}; set data.dataset.image_size"
            )
        intensity, a, b = _intensity_map(lo, hi)
        size = self.image_size or next(iter(sizes))[1:]
        classes = self._class_table(every, path)
        has_mask = self.with_mask and all(isinstance(e, dict) and e.get("mask") is not None for e in entries)
        scaled = has_mask and any(
            isinstance(e, dict) and e.get("mask") is not None and not _is_integral(e["mask"])
            for items in every.values()
            for e in items
        )
        class_list = self.class_names if classes else ()
        self.spec = DataSpec(
            spatial_dims=2,
            channels=next(iter(sizes))[0],
            image_size=tuple(size),
            num_classes=len(class_list),
            num_mask_labels=self.num_mask_labels if has_mask else 0,
            class_names=class_list,
        )
        records = []
        for i, image in images.items():
            entry, where = entries[i], f"{path} [{self.split}][{i}]"
            try:
                mask = self._mask(entry, image.shape[1:], scaled, where) if has_mask else None
                label = classes[entry["class"]] if classes else None
            except DataError as e:
                self.report_bad(str(e))
                continue
            meta = {"id": f"{self.split}/{i}", "source": str(path), "index": i, "intensity": intensity}
            meta.update(_json_safe({k: entry[k] for k in ("name", "metadata") if k in entry}))
            records.append(
                Record(
                    image=np.clip(resize_image(image * a + b, size), -1.0, 1.0),
                    mask=resize_mask(mask[None], size) if mask is not None else None,
                    label=label,
                    meta=meta,
                )
            )
        return records

    def _class_table(self, every: dict[str, list[Any]], path: Path) -> dict[Any, int]:
        values = [e.get("class") for items in every.values() for e in items if isinstance(e, dict)]
        if not values or any(v is None for v in values):
            return {}
        bad = [v for v in values if not isinstance(v, int | np.integer | str)]
        if bad:
            raise DataError(
                f"{path}: classes must be integers or strings, got {type(bad[0]).__name__} {bad[0]!r}"
            )
        if all(isinstance(v, int | np.integer) for v in values):
            n = int(max(values)) + 1
            if min(values) < 0 or (self.class_names is None and n > MAX_INT_CLASSES):
                raise DataError(
                    f"{path}: integer classes span {min(values)}..{max(values)}; expected 0..n-1 "
                    f"(at most {MAX_INT_CLASSES} classes without class_names)"
                )
            names = self.class_names or tuple(str(i) for i in range(n))
            if len(names) < n:
                raise DataError(f"{path}: integer classes span {min(values)}..{max(values)}, names {names}")
            self.class_names = tuple(names)
            return {i: i for i in range(len(names))}
        names = self.class_names or tuple(sorted({str(v) for v in values}))
        unknown = {str(v) for v in values} - set(names)
        if unknown:
            raise DataError(f"{path}: classes {sorted(unknown)} are not in class_names {list(names)}")
        self.class_names = tuple(names)
        return {v: names.index(str(v)) for v in set(values)}

    def _mask(self, entry: dict[str, Any], shape: tuple[int, ...], scaled: bool, where: str) -> np.ndarray:
        mask = _numeric_array(entry["mask"], "mask", where, np.float64)
        while mask.ndim > 2 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.shape != tuple(shape):
            raise DataError(f"{where}: mask has shape {mask.shape}, its image has {tuple(shape)}")
        if not np.isfinite(mask).all():
            raise DataError(f"{where}: mask contains NaN or inf values")
        k = self.num_mask_labels
        if scaled:
            grid = mask * (k - 1)
            if np.abs(grid - np.round(grid)).max() > 1e-3:
                raise DataError(
                    f"{where}: scaled mask values are not multiples of 1/{k - 1} (num_mask_labels={k})"
                )
            mask = np.round(grid)
        if mask.min() < 0 or mask.max() >= k:
            raise DataError(
                f"{where}: mask labels span [{mask.min():g}, {mask.max():g}], expected 0..{k - 1}"
            )
        return mask.astype(np.uint8)


def _is_integral(value: Any) -> bool:
    """Whether ``value`` holds only integers (non-numeric values pass: ``_mask`` reports them)."""
    try:
        a = np.asarray(value)
    except (ValueError, TypeError):
        return True
    if a.dtype.kind not in "biuf":
        return True
    return bool(np.all(np.isfinite(a)) and np.array_equal(a, np.round(a)))


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with values that JSON cannot hold turned into strings."""
    try:
        return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    except (TypeError, ValueError, RecursionError):  # non-string keys, circular or too deep structures
        return {k: str(v) for k, v in d.items()}


def convert_pickle(
    path: str | os.PathLike[str], out_dir: str | os.PathLike[str], **options: Any
) -> dict[str, int]:
    """Convert an original MOTFM pickle into the suite's format (one cache entry per split under ``out_dir``).

    Args:
        path: the trusted ``.pkl`` file.
        out_dir: the output folder (``out_dir/{train,val,test}/``); use it as ``data.dataset.root``.
        **options: options of :class:`LegacyPickleDataset` (``image_size``, ``num_mask_labels``, ...).

    Returns:
        The number of samples written per split (splits absent from the pickle are left out).
    """
    out_dir = Path(out_dir)
    for split in SPLITS:
        if (out_dir / split).exists():
            raise DataError(f"{out_dir / split}: already exists; remove it or choose another output folder")
    data = load_trusted_pickle(Path(path), True)
    counts = {}
    for split in (s for s in SPLITS if _split_entries(data, s, Path(path))):
        ds = LegacyPickleDataset(split, root=path, trust_pickle=True, cache=False, **options)
        store = ds.store
        records = (
            Record(
                image=np.asarray(store.images[i]),
                mask=np.asarray(store.masks[i]) if store.masks is not None else None,
                label=int(store.labels[i]) if store.labels is not None else None,
                meta=store.index["meta"][i],
            )
            for i in progress(range(len(ds)), desc=f"export {split}", unit="sample")
        )
        index = {k: v for k, v in store.index.items() if k != "meta"}
        counts[split] = write_entry(out_dir / split, records, lambda index=index: index)
    return counts
