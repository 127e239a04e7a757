"""What a dataset provides: the description that sizes a model, its checkpoints and its exports.

It sits below every layer (no torch, no data code), so that the networks, checkpoints and writers
(:mod:`motfm.io.export`) can take one without importing :mod:`motfm.data`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
