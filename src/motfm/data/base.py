"""The sample contract every dataset of the suite follows.

A sample is a plain ``dict`` (so that the default collate function batches it):

- ``image``: float32 tensor ``[C, H, W]`` or ``[C, D, H, W]`` with values in [-1, 1];
- ``mask`` (optional): int64 label map ``[1, *spatial]`` with values in ``0 .. num_mask_labels - 1``;
- ``label`` (optional): int64 scalar tensor, the class index in ``0 .. num_classes - 1``;
- ``meta``: a dict of collatable values (strings, numbers, small arrays such as ``affine``/``spacing``).

Every dataset also describes itself with a :class:`DataSpec`, from which the model is sized, so that
the number of classes or mask labels is never typed twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """Bad input data: the message names the file (or dataset) and what is wrong with it."""


@dataclass(frozen=True)
class DataSpec:
    """What a dataset provides, used to size and validate the model.

    Attributes:
        spatial_dims: 2 for images ``[C, H, W]``, 3 for volumes ``[C, D, H, W]``.
        channels: number of image channels ``C``.
        image_size: spatial size, ``(H, W)`` or ``(D, H, W)``.
        num_classes: number of class labels (0 when the data has no ``label``).
        num_mask_labels: number of values of the mask label map including background (0 when no ``mask``).
        class_names: optional human-readable names of the classes, in index order.
        mask_label_names: optional names of the mask labels, in value order.
    """

    spatial_dims: int
    channels: int
    image_size: tuple[int, ...]
    num_classes: int = 0
    num_mask_labels: int = 0
    class_names: tuple[str, ...] = field(default_factory=tuple)
    mask_label_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if len(self.image_size) != self.spatial_dims:
            raise ValueError(f"image_size {self.image_size} does not have {self.spatial_dims} entries")
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "mask_label_names", tuple(self.mask_label_names))

    @property
    def has_label(self) -> bool:
        """Whether samples carry a class ``label``."""
        return self.num_classes > 0

    @property
    def has_mask(self) -> bool:
        """Whether samples carry a ``mask`` label map."""
        return self.num_mask_labels > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, safe to store in a checkpoint loaded with ``weights_only=True``."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["class_names"] = list(self.class_names)
        d["mask_label_names"] = list(self.mask_label_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "image_size": tuple(d["image_size"])})


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
