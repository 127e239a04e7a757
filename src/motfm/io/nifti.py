"""NIfTI output of generated volumes and label maps, with the geometry of the data they imitate."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from torch import Tensor

from motfm.io.atomic import atomic_path


def label_dtype(arr: np.ndarray) -> np.dtype:
    """The smallest integer NIfTI type that holds the label values of ``arr``: uint8, int16 or int32."""
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    for dtype in (np.uint8, np.int16):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def write_nifti(arr: np.ndarray, path: str | os.PathLike[str], affine: np.ndarray | None = None) -> None:
    """Write an array in NIfTI voxel order as NIfTI-1, atomically.

    Integer arrays (label maps) are stored with an integer type (:func:`label_dtype`), everything else as
    float32.

    Args:
        arr: ``[i, j, k]`` or ``[i, j, k, c]``.
        path: destination (``.nii`` or ``.nii.gz``).
        affine: 4x4 voxel-to-world matrix (default identity, 1 mm isotropic).
    """
    arr = np.asarray(arr)
    arr = arr.astype(label_dtype(arr) if arr.dtype.kind in "biu" else np.float32)
    img = nib.Nifti1Image(arr, np.eye(4) if affine is None else np.asarray(affine, np.float64))
    img.header.set_data_dtype(arr.dtype)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def save_nifti(
    volume: Tensor | np.ndarray, path: str | os.PathLike[str], affine: np.ndarray | None = None
) -> None:
    """Write one volume (or label map) as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically.

    The suite's tensors are ``[C, D, H, W]``; NIfTI stores voxel axes ``(i, j, k)`` = ``(D, H, W)``
    followed by channels, so the array is written as ``[D, H, W]`` (C=1) or ``[D, H, W, C]``.

    Args:
        volume: ``[C, D, H, W]``: float values (stored as float32), or integer labels (stored as uint8 /
            int16, see :func:`label_dtype`).
        path: destination file.
        affine: 4x4 voxel-to-world matrix (default identity, 1 mm isotropic).
    """
    arr = volume.detach().cpu().numpy() if isinstance(volume, Tensor) else np.asarray(volume)
    if arr.ndim != 4:
        raise ValueError(f"expected a volume [C, D, H, W], got shape {arr.shape}")
    write_nifti(arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1), path, affine)
