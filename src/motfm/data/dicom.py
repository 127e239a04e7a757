"""A folder of DICOM files (searched recursively) as 2D frames: ultrasound cines, single images, MR/CT slices.

Every frame of every file with pixel data becomes one sample ``[1, H, W]`` in [-1, 1]. Colour data become
grey: RGB (pydicom already converts YBR_* to RGB) by luma ``0.299 R + 0.587 G + 0.114 B``, PALETTE COLOR
through its lookup table first; MONOCHROME1 is inverted so that bright means high signal as in MONOCHROME2.
Intensities: 8-bit data (and palette/RGB data, scaled by their bit depth) map from their full range
``0..2^bits - 1``; deeper monochrome data (CT, MR) are scaled per file between the ``percentiles`` of all its
frames. Frames are resized bilinearly (antialiased) to ``image_size`` without keeping the aspect ratio.

Files are split by patient (``PatientID``), falling back to ``SeriesInstanceUID`` and then the file itself, so
the frames of one cine, or the cines of one patient, never fall into two splits. Files that are not DICOM (no
``DICM`` marker) or carry no pixel data (DICOMDIR, structured reports) are ignored.

pydicom is an optional dependency (``pip install motfm[data]``); compressed transfer syntaxes need its
decoders (pillow for JPEG baseline, pylibjpeg/gdcm for the others).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from motfm.data.base import DataError, DataSpec
from motfm.data.cache import DEFAULT_CACHE_DIR, CachedDataset
from motfm.data.cache_entry import Case, Record
from motfm.data.splits import DEFAULT_FRACTIONS, select_split
from motfm.data.transforms import as_size, minmax_to_unit, resize_image

GROUP_BY = ("patient", "series", "file")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise ImportError(
            "DicomDataset needs pydicom, an optional dependency: pip install 'motfm[data]' "
            "(or pip install pydicom)"
        ) from None
    return pydicom


def dicom_frames(
    path: Path, percentiles: Sequence[float] = (0.0, 100.0)
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read every frame of a DICOM file as grey values in [-1, 1].

    Args:
        path: the DICOM file.
        percentiles: the low/high percentiles mapped to -1/1 for monochrome data deeper than 8 bits.

    Returns:
        ``(frames [F, H, W] float32, info)`` with ``info``: ``photometric``, ``bits``, ``spacing``
        (row, column mm, or ``None``), ``patient_id``, ``series_uid``, ``modality``.

    Raises:
        DataError: naming the file when it cannot be read or decoded, or holds NaN/inf values.
    """
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises InvalidDicomError, ValueError, RuntimeError (no decoder), ...
        raise DataError(f"{path}: cannot decode DICOM pixel data ({type(e).__name__}: {e})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    pixels = np.asarray(pixels)
    if photometric == "PALETTE COLOR":
        pixels = pydicom.pixels.apply_color_lut(pixels, ds)
        samples, bits = 3, 16 if pixels.dtype == np.uint16 else 8
    if nframes == 1:
        pixels = pixels[None]
    expected = 4 if samples > 1 else 3
    if pixels.ndim != expected:
        raise DataError(
            f"{path}: pixel array shape {pixels.shape} does not match {nframes} frame(s) x {samples} samples"
        )
    if not np.isfinite(pixels).all():
        raise DataError(f"{path}: pixel data contain NaN or inf values")
    if samples > 1:
        grey = pixels.astype(np.float64) @ _LUMA[: pixels.shape[-1]] / _LUMA[: pixels.shape[-1]].sum()
        frames = minmax_to_unit(grey, 0.0, 2.0**bits - 1)
    elif bits <= 8 and pixels.min() >= 0:
        frames = minmax_to_unit(pixels, 0.0, 2.0**bits - 1)
    else:
        lo, hi = np.percentile(pixels, percentiles)
        frames = minmax_to_unit(pixels, float(lo), float(hi))
    if photometric == "MONOCHROME1":
        frames = -frames
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    info = {
        "photometric": photometric,
        "bits": bits,
        "spacing": [float(s) for s in spacing] if spacing else None,
        "patient_id": str(ds.get("PatientID", "") or ""),
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "modality": str(ds.get("Modality", "") or ""),
    }
    return frames, info


def scan_folder(root: Path) -> list[tuple[Path, dict[str, str]]]:
    """The DICOM files with pixel data under ``root`` (recursively, sorted), with their patient/series ids.

    A file with a ``DICM`` marker whose header cannot be parsed is listed with empty ids (its own group), so
    that building the dataset reports it, or skips it with ``skip_bad_cases``.

    Raises:
        DataError: when ``root`` is missing.
    """
    pydicom = _pydicom()
    if not root.is_dir():
        raise DataError(f"DICOM root {root} does not exist or is not a folder")
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if not pydicom.misc.is_dicom(str(path)):
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # kept: reading its pixels reports the problem (or skips it) while building
            found.append((path, {"patient": "", "series": ""}))
            continue
        if "Rows" not in ds or "Columns" not in ds:  # no image (DICOMDIR, SR, ...)
            continue
        ids = {
            "patient": str(ds.get("PatientID", "") or ""),
            "series": str(ds.get("SeriesInstanceUID", "") or ""),
        }
        found.append((path, ids))
    return found


class DicomDataset(CachedDataset):
    """2D frames of the DICOM files under ``root``.

    Each sample: ``image`` float32 ``[1, H, W]`` in [-1, 1] and ``meta`` (``id``, ``source``, ``frame``,
    ``patient_id``, ``series_uid``, ``modality``, ``photometric``, ``spacing`` of the output pixels or
    ``None``, ``source_shape``). No masks, no labels.

    Args:
        split: ``train``, ``val`` or ``test``.
        root: the folder to search.
        image_size: output ``H, W`` (one int for square frames).
        group_by: ``patient`` (``PatientID``, falling back to the series and the file), ``series`` or
            ``file``: the unit kept whole when splitting.
        frame_stride: keep every ``frame_stride``-th frame of a multi-frame file.
        percentiles: intensity window of deep monochrome data (see the module docstring).
        split_fractions: fraction of groups per split (default 0.8/0.1/0.1).
        split_seed: seed of the split.
        cache, cache_dir, skip_bad_cases, augment: see :class:`motfm.data.cache.CachedDataset`.
    """

    dataset_name = "dicom"

    def __init__(
        self,
        split: str,
        *,
        root: str | os.PathLike[str],
        image_size: int | Sequence[int] = 256,
        group_by: str = "patient",
        frame_stride: int = 1,
        percentiles: Sequence[float] = (0.5, 99.5),
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
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.root = Path(root).expanduser()
        self.image_size = as_size(image_size, 2)
        self.frame_stride = int(frame_stride)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.spec = DataSpec(spatial_dims=2, channels=1, image_size=self.image_size)
        files = scan_folder(self.root)
        if not files:
            raise DataError(f"{self.root}: no DICOM files with pixel data found")
        groups = {}
        for path, ids in files:
            rel = str(path.relative_to(self.root))
            chain = (
                ("patient", "series")
                if group_by == "patient"
                else ("series",)
                if group_by == "series"
                else ()
            )
            groups[rel] = next((f"{kind}:{ids[kind]}" for kind in chain if ids[kind]), f"file:{rel}")
        fractions = dict(split_fractions or DEFAULT_FRACTIONS)
        selected = select_split(list(groups), groups, split, fractions, split_seed)
        cases = [Case(rel, (self.root / rel,), {"group": groups[rel]}) for rel in selected]
        options = {
            "image_size": list(self.image_size),
            "group_by": group_by,
            "frame_stride": self.frame_stride,
            "percentiles": list(self.percentiles),
            "split": {"fractions": fractions, "seed": split_seed},
        }
        self.prepare(cases, self.root, options)

    def load_case(self, case: Case) -> list[Record]:
        """Decode one file and turn its frames into resized records."""
        path = case.files[0]
        frames, info = dicom_frames(path, self.percentiles)
        h, w = frames.shape[1:]
        spacing = info["spacing"]
        out_spacing = (
            [spacing[0] * h / self.image_size[0], spacing[1] * w / self.image_size[1]] if spacing else None
        )
        records = []
        for f in range(0, frames.shape[0], self.frame_stride):
            meta = {
                "id": f"{case.id}#{f}",
                "source": str(path),
                "frame": f,
                "group": case.info["group"],
                "patient_id": info["patient_id"],
                "series_uid": info["series_uid"],
                "modality": info["modality"],
                "photometric": info["photometric"],
                "spacing": out_spacing,
                "source_shape": [h, w],
            }
            image = np.clip(resize_image(frames[f][None], self.image_size), -1.0, 1.0)
            records.append(Record(image=image, meta=meta))
        return records
