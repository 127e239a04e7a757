"""Medical Segmentation Decathlon, Task01_BrainTumour (BraTS 2016/2017 multi-modal MRI), as 3D volumes.

Layout (as distributed)::

    root/dataset.json        {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                              "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                                         "3": "enhancing tumour"},
                              "training": [{"image": "./imagesTr/BRATS_001.nii.gz",
                                            "label": "./labelsTr/BRATS_001.nii.gz"}, ...], ...}
    root/imagesTr/BRATS_001.nii.gz   4D [240, 240, 155, 4] (x, y, z, modality)
    root/labelsTr/BRATS_001.nii.gz   3D [240, 240, 155]

Only the cases listed in ``dataset.json["training"]`` are read (so the ``._BRATS_*`` resource-fork files of
the archive are ignored); the test cases have no labels and are not used.

Preprocessing of each volume, once (see :mod:`motfm.data.cache`): the brain bounding box (voxels that are
non-zero in any selected modality, the volumes being skull-stripped with a zero background) is cropped with a
``margin``; each modality is normalised by the ``percentiles`` of its brain voxels to [-1, 1] (background -1);
the crop is resized to ``image_size``, by default keeping its aspect ratio (``keep_aspect``) and padding the
rest with background, trilinearly for images and by nearest neighbour for label maps. With ``resize=False``
the volume keeps its native spacing (full resolution, e.g. for flow matching in wavelet space): the crop is
padded with background to ``image_size`` around its centre (an axis longer than ``image_size`` is cropped
around the bounding box's centre), so every output voxel is a source voxel, no interpolation.

Axes: the output tensor is ``[C, D, H, W]`` with ``(D, H, W)`` = the NIfTI voxel axes ``(i, j, k)`` in
stored order (no transposition; for BraTS ``i`` runs left-right, ``j`` anterior-posterior, ``k`` inferior-
superior), the convention of :func:`motfm.io.nifti.save_nifti`. ``meta["affine"]`` maps voxel indices
``(d, h, w)`` of the *output* grid to world millimetres (crop translation and resampling included), so a
generated volume ``[C, D, H, W]`` is written back in the source's world space by
``save_nifti(volume, path, meta["affine"])``. ``meta["spacing"]`` is ``(D, H, W)`` in mm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from motfm.data.base import DataError, DataSpec
from motfm.data.cache import DEFAULT_CACHE_DIR, CachedDataset
from motfm.data.cache_entry import Case, Record
from motfm.data.splits import DEFAULT_FRACTIONS, select_split
from motfm.data.transforms import as_size
from motfm.data.volume_geometry import crop_resize_matrix, fit_box, pad_centred, resample

CLASS_BY = ("none", "tumour_size")


def read_nifti(path: Path) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """Load a NIfTI-1/2 file and its data array (scaling applied).

    Returns:
        ``(image, data)``; ``data`` indexed ``[i, j, k, ...]`` as stored.

    Raises:
        DataError: naming the file when it is missing, not NIfTI, truncated or corrupt.
    """
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"{path}: not a NIfTI image ({type(img).__name__})")
        data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib.error, OSError, ValueError ...
        raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if data.dtype.kind not in "biuf":  # RGB (structured) or complex voxels
        raise DataError(
            f"{path}: unsupported NIfTI voxel type {data.dtype} (expected integer or real values)"
        )
    return img, data


def read_decathlon_json(root: Path) -> dict[str, Any]:
    """Read and check ``root/dataset.json`` of a Decathlon task.

    Returns:
        The parsed JSON with ``modality`` and ``labels`` as ``{int: name}`` (labels contiguous from 0).

    Raises:
        DataError: naming the file for missing/invalid JSON, or a missing or malformed ``modality``,
            ``labels`` or ``training`` entry.
    """
    path = root / "dataset.json"
    if not root.is_dir():
        raise DataError(f"MSD root {root} does not exist or is not a folder")
    if not path.is_file():
        raise DataError(f"{path}: dataset.json is missing (is {root} a Decathlon task folder?)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError, ...
        raise DataError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object at the top level")
    out = dict(meta)
    for key in ("modality", "labels"):
        entry = meta.get(key)
        if not isinstance(entry, dict) or not entry:
            raise DataError(f"{path}: {key!r} must be a non-empty object of index -> name")
        try:
            out[key] = {int(k): str(v) for k, v in entry.items()}
        except ValueError:
            raise DataError(f"{path}: {key!r} keys must be integers, got {list(entry)}") from None
    if sorted(out["labels"]) != list(range(len(out["labels"]))):
        raise DataError(f"{path}: 'labels' keys must be 0..n-1, got {sorted(out['labels'])}")
    training = meta.get("training")
    if not isinstance(training, list) or not all(
        isinstance(t, dict) and _is_path(t.get("image")) and (not t.get("label") or _is_path(t["label"]))
        for t in training
    ):
        raise DataError(f"{path}: 'training' must be a list of {{'image': path, 'label': path}} entries")
    return out


def _is_path(value: Any) -> bool:
    """Whether ``value`` can name a file: a non-empty string without NUL bytes."""
    return isinstance(value, str) and bool(value) and "\x00" not in value


class MsdBrainDataset(CachedDataset):
    """MSD Task01_BrainTumour volumes: ``image`` float32 ``[C, D, H, W]`` in [-1, 1], optional ``mask`` int64
    ``[1, D, H, W]`` (0 background, 1 edema, 2 non-enhancing tumour, 3 enhancing tumour), optional ``label``.

    ``meta``: ``id``, ``source``, ``affine`` (float64 ``[4, 4]``, see the module docstring), ``spacing``
    ``(D, H, W)`` mm, ``source_shape``, ``crop`` (``[[lo, hi), ...]`` per axis of the source),
    ``tumour_ml`` (when labels are read).

    Args:
        split: ``train``, ``val`` or ``test``.
        root: the ``Task01_BrainTumour`` folder (with ``dataset.json``).
        modalities: names (as in ``dataset.json``, any case) or indices of the channels, in order.
        image_size: output ``(D, H, W)`` (one int for a cube).
        margin: voxels added around the brain bounding box before resizing.
        percentiles: lower/upper percentile of the brain voxels mapped to -1/1 (per modality and volume).
        keep_aspect: resize the crop by one factor for all axes and pad; ``False`` stretches every axis.
        resize: ``False``: no resampling, native spacing: the crop is padded (or centre-cropped) to
            ``image_size`` (``keep_aspect`` does not apply).
        with_mask: load the label maps (``labelsTr``).
        class_by: ``none`` or ``tumour_size`` (classes by tumour volume in mL, all labels > 0, cut at
            ``tumour_size_bins``).
        tumour_size_bins: increasing thresholds in mL (``n`` thresholds give ``n + 1`` classes).
        split_fractions: fraction of cases per split (default 0.8/0.1/0.1).
        split_seed: seed of the case split.
        cache, cache_dir, skip_bad_cases, augment: see :class:`motfm.data.cache.CachedDataset`.
    """

    dataset_name = "msd_brain"

    def __init__(
        self,
        split: str,
        *,
        root: str | os.PathLike[str],
        modalities: Sequence[str | int] = ("FLAIR",),
        image_size: int | Sequence[int] = (96, 96, 96),
        margin: int = 4,
        percentiles: Sequence[float] = (0.5, 99.5),
        keep_aspect: bool = True,
        resize: bool = True,
        with_mask: bool = True,
        class_by: str = "none",
        tumour_size_bins: Sequence[float] = (20.0, 60.0),
        split_fractions: dict[str, float] | None = None,
        split_seed: int = 0,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
        skip_bad_cases: bool = False,
        augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            split, cache=cache, cache_dir=cache_dir, skip_bad_cases=skip_bad_cases, augment=augment
        )
        if class_by not in CLASS_BY:
            raise ValueError(f"class_by must be one of {CLASS_BY}, got {class_by!r}")
        if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise ValueError(
                f"percentiles must be (low, high) with 0 <= low < high <= 100, got {percentiles}"
            )
        bins = [float(b) for b in tumour_size_bins]
        if class_by == "tumour_size" and (not bins or bins != sorted(set(bins))):
            raise ValueError(f"tumour_size_bins must be strictly increasing, got {tumour_size_bins}")
        self.root = Path(root).expanduser()
        self.info = read_decathlon_json(self.root)
        self.channels = self._channel_indices(modalities)
        self.image_size = as_size(image_size, 3)
        self.margin = int(margin)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.keep_aspect = keep_aspect
        self.resize = resize
        self.with_mask = with_mask
        self.class_by = class_by
        self.bins = bins
        labels = self.info["labels"]
        class_names = _bin_names(bins) if class_by == "tumour_size" else ()
        self.spec = DataSpec(
            spatial_dims=3,
            channels=len(self.channels),
            image_size=self.image_size,
            num_classes=len(class_names),
            num_mask_labels=len(labels) if with_mask else 0,
            class_names=class_names,
            mask_label_names=tuple(labels[i] for i in range(len(labels))) if with_mask else (),
        )
        cases = {}
        for entry in self.info["training"]:
            image = self.root / entry["image"]
            label = self.root / entry["label"] if entry.get("label") else None
            cid = image.name.removesuffix(".gz").removesuffix(".nii")
            files = (image, label) if label is not None and (with_mask or class_by != "none") else (image,)
            cases[cid] = Case(cid, files, {"image": image, "label": label})
        fractions = dict(split_fractions or DEFAULT_FRACTIONS)
        selected = select_split(list(cases), {c: c for c in cases}, split, fractions, split_seed)
        options = {
            "modalities": self.channels,
            "image_size": list(self.image_size),
            "margin": self.margin,
            "percentiles": list(self.percentiles),
            "keep_aspect": keep_aspect,
            "resize": resize,
            "with_mask": with_mask,
            "class_by": class_by,
            "tumour_size_bins": bins,
            "split": {"fractions": fractions, "seed": split_seed},
        }
        self.prepare([cases[c] for c in selected], self.root, options)

    def _channel_indices(self, modalities: Sequence[str | int]) -> list[int]:
        names = {v.lower(): k for k, v in self.info["modality"].items()}
        out = []
        for m in modalities:
            key = str(m).lower()
            if key in names:
                out.append(names[key])
            elif key.isdigit() and int(key) in self.info["modality"]:
                out.append(int(key))
            else:
                raise ValueError(f"modality {m!r} not in dataset.json modalities {self.info['modality']}")
        if not out or len(set(out)) != len(out):
            raise ValueError(f"modalities must be non-empty without repeats, got {list(modalities)}")
        return out

    def load_case(self, case: Case) -> list[Record]:
        """Read, check, crop, normalise and resize one volume (and its label map)."""
        path: Path = case.info["image"]
        img, data = read_nifti(path)
        if data.ndim not in (3, 4):
            raise DataError(f"{path}: expected a 3D or 4D volume, got shape {data.shape}")
        if data.ndim == 3:
            data = data[..., None]
        if max(self.channels) >= data.shape[3]:
            raise DataError(
                f"{path}: has {data.shape[3]} modalities, modality index {max(self.channels)} requested"
            )
        vol = np.stack([np.asarray(data[..., c], dtype=np.float32) for c in self.channels])  # [C, D, H, W]
        if not np.isfinite(vol).all():
            raise DataError(f"{path}: volume contains NaN or inf voxels")
        labels, tumour_ml = None, None
        if len(case.files) > 1:
            labels = self._read_labels(case.info["label"], vol.shape[1:])
            tumour_ml = float((labels > 0).sum() * np.prod(img.header.get_zooms()[:3]) / 1000.0)
        brain = (vol != 0).any(axis=0)
        if not brain.any():
            raise DataError(f"{path}: volume is empty (every selected modality is zero)")
        box = [
            (max(0, int(idx.min()) - self.margin), min(n, int(idx.max()) + 1 + self.margin))
            for idx, n in zip(np.nonzero(brain), brain.shape)
        ]
        if not self.resize:
            box = fit_box(box, self.image_size)
        crop = tuple(slice(lo, hi) for lo, hi in box)
        vol, brain = vol[(slice(None), *crop)], brain[crop]
        vol = np.stack([self._normalise(v, brain) for v in vol])
        vol, geometry = self._to_grid(vol, -1.0, "trilinear")
        affine = img.affine @ crop_resize_matrix([lo for lo, _ in box], *geometry)
        meta: dict[str, Any] = {
            "id": case.id,
            "source": str(path),
            "affine": affine.tolist(),
            "spacing": [float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)],
            "source_shape": list(data.shape[:3]),
            "crop": [list(b) for b in box],
        }
        mask = None
        if labels is not None:
            meta["tumour_ml"] = tumour_ml
            if self.with_mask:
                mask, _ = self._to_grid(labels[None][(slice(None), *crop)], 0.0, "nearest")
                mask = mask.astype(np.uint8)
        label = None
        if self.class_by == "tumour_size":
            if tumour_ml is None:
                raise DataError(
                    f"{path}: no label map listed in dataset.json (needed by class_by=tumour_size)"
                )
            label = int(np.searchsorted(self.bins, tumour_ml, side="right"))
        return [Record(image=vol, mask=mask, label=label, meta=meta)]

    def _to_grid(
        self, vol: np.ndarray, pad_value: float, mode: str
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """The crop on the output grid: resampled (:func:`resample`) or, with ``resize=False``, padded."""
        if self.resize:
            return resample(vol, self.image_size, self.keep_aspect, pad_value, mode)
        return pad_centred(vol, self.image_size, pad_value)

    def _read_labels(self, path: Path | None, shape: tuple[int, ...]) -> np.ndarray:
        if path is None:
            raise DataError(f"{self.root / 'dataset.json'}: a training entry has no 'label'")
        _, labels = read_nifti(path)
        if labels.ndim == 4 and labels.shape[3] == 1:
            labels = labels[..., 0]
        if labels.shape != shape:
            raise DataError(f"{path}: label map has shape {labels.shape}, its image has {shape}")
        if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
            raise DataError(f"{path}: label map has non-integer values")
        n = len(self.info["labels"])
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi >= n:
            raise DataError(f"{path}: label values span [{lo:g}, {hi:g}], dataset.json declares 0..{n - 1}")
        return labels.astype(np.uint8)

    def _normalise(self, channel: np.ndarray, brain: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(channel[brain], self.percentiles)
        scale = 2.0 / (hi - lo) if hi > lo else 0.0
        out = np.clip((channel - lo) * scale - 1.0, -1.0, 1.0)
        return np.where(brain, out, -1.0).astype(np.float32)


def _bin_names(bins: list[float]) -> tuple[str, ...]:
    edges = [f"{b:g}" for b in bins]
    return (f"<{edges[0]}mL", *(f"{a}-{b}mL" for a, b in zip(edges, edges[1:])), f">={edges[-1]}mL")
