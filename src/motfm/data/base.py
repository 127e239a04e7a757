"""The sample contract every dataset of the suite follows.

A sample is a plain ``dict`` (so that the default collate function batches it):

- ``image``: float32 tensor ``[C, H, W]`` or ``[C, D, H, W]`` with values in [-1, 1];
- ``mask`` (optional): int64 label map ``[1, *spatial]`` with values in ``0 .. num_mask_labels - 1``;
- ``label`` (optional): int64 scalar tensor, the class index in ``0 .. num_classes - 1``;
- ``meta``: a dict of collatable values (strings, numbers, small arrays such as ``affine``/``spacing``).

Every dataset also describes itself with a :class:`~motfm.data_spec.DataSpec`, from which the model is sized,
so that the number of classes or mask labels is never typed twice (it lives in :mod:`motfm.data_spec`, below
the data layer, and stays importable from here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from motfm.data_spec import DataSpec


class DataError(ValueError):
    """Bad input data: the message names the file (or dataset) and what is wrong with it."""


class MotfmDataset(Dataset):
    """Base class of the suite's datasets: a map-style dataset of sample dicts with a :class:`DataSpec`.

    Subclasses set ``self.spec`` and implement ``__len__`` and ``__getitem__``.
    """

    spec: DataSpec

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise NotImplementedError


def check_sample(sample: dict[str, Any], spec: DataSpec, source: str = "sample") -> None:
    """Validate one sample against the contract above.

    Args:
        sample: the sample dict.
        spec: the dataset's description.
        source: what to name in the error (a file path, a case id).

    Raises:
        DataError: naming ``source`` and the first problem found.
    """
    image = sample.get("image")
    if not isinstance(image, torch.Tensor):
        raise DataError(f"{source}: 'image' is missing or not a tensor")
    expected = (spec.channels, *spec.image_size)
    if tuple(image.shape) != expected:
        raise DataError(f"{source}: image has shape {tuple(image.shape)}, expected {expected}")
    if image.dtype != torch.float32:
        raise DataError(f"{source}: image dtype is {image.dtype}, expected torch.float32")
    if not torch.isfinite(image).all():
        raise DataError(f"{source}: image contains NaN or inf values")
    if image.numel() and (image.min() < -1.0001 or image.max() > 1.0001):
        raise DataError(
            f"{source}: image values span [{image.min():.3g}, {image.max():.3g}], expected [-1, 1]"
        )
    if spec.has_mask:
        mask = sample.get("mask")
        if not isinstance(mask, torch.Tensor):
            raise DataError(f"{source}: 'mask' is missing")
        if tuple(mask.shape) != (1, *spec.image_size):
            raise DataError(f"{source}: mask has shape {tuple(mask.shape)}, expected {(1, *spec.image_size)}")
        if mask.dtype != torch.int64:
            raise DataError(f"{source}: mask dtype is {mask.dtype}, expected torch.int64")
        if mask.numel() and (mask.min() < 0 or mask.max() >= spec.num_mask_labels):
            raise DataError(
                f"{source}: mask labels span [{int(mask.min())}, {int(mask.max())}], "
                f"expected 0..{spec.num_mask_labels - 1}"
            )
    if spec.has_label:
        label = sample.get("label")
        if not isinstance(label, torch.Tensor) or label.dtype != torch.int64 or label.ndim != 0:
            raise DataError(f"{source}: 'label' must be an int64 scalar tensor")
        if not 0 <= int(label) < spec.num_classes:
            raise DataError(f"{source}: label {int(label)} outside 0..{spec.num_classes - 1}")
