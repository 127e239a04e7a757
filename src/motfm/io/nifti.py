"""NIfTI output of generated volumes, with the geometry of the data they imitate."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from torch import Tensor

from motfm.io.atomic import atomic_path


def save_nifti(
    volume: Tensor | np.ndarray, path: str | os.PathLike[str], affine: np.ndarray | None = None
) -> None:
    """Write one volume as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically.

    The suite's tensors are ``[C, D, H, W]``; NIfTI stores voxel axes ``(i, j, k)`` = ``(D, H, W)``
    followed by channels, so the array is written as ``[D, H, W]`` (C=1) or ``[D, H, W, C]``.

    Args:
        volume: ``[C, D, H, W]`` float values.
        path: destination file.
        affine: 4x4 voxel-to-world matrix (default identity, 1 mm isotropic).
    """
    arr = (
        volume.detach().cpu().float().numpy()
        if isinstance(volume, Tensor)
        else np.asarray(volume, np.float32)
    )
    if arr.ndim != 4:
        raise ValueError(f"expected a volume [C, D, H, W], got shape {arr.shape}")
    arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    img = nib.Nifti1Image(
        arr.astype(np.float32), np.eye(4) if affine is None else np.asarray(affine, np.float64)
    )
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
