"""``slices_2p5d``: the 2.5D option for volumes, a 2D extractor applied to slices of the three orthogonal
planes, features averaged per volume."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from motfm.metrics.extractors.base import FeatureExtractor, get_extractor, register_extractor


@register_extractor("slices_2p5d")
class Slices2p5D(FeatureExtractor):
    """2.5D features for volumes: a 2D extractor on slices of the three orthogonal planes.

    For each spatial axis of ``[B, C, D, H, W]``, ``num_slices`` slices evenly spaced over the central
    ``extent`` fraction of that axis are taken (duplicates removed for thin axes); the 2D features are
    averaged over the slices of a plane, then over the three planes, giving one ``[F]`` vector per volume.

    Args:
        extractor: the 2D extractor, or its registered name.
        num_slices: slices per plane.
        extent: central fraction of each axis the slices are spread over (``0 < extent <= 1``).
        **extractor_kwargs: constructor arguments when ``extractor`` is a name.
    """

    spatial_dims = 3

    def __init__(
        self,
        extractor: FeatureExtractor | str,
        num_slices: int = 5,
        extent: float = 0.5,
        **extractor_kwargs: Any,
    ):
        super().__init__()
        inner = get_extractor(extractor, **extractor_kwargs) if isinstance(extractor, str) else extractor
        if inner.spatial_dims != 2:
            raise ValueError(f"slices_2p5d needs a 2D extractor, got {inner.name} ({inner.spatial_dims}D)")
        if num_slices < 1 or not 0.0 < extent <= 1.0:
            raise ValueError(f"need num_slices >= 1 and 0 < extent <= 1, got {num_slices}, {extent}")
        self.inner = inner
        self.num_slices = num_slices
        self.extent = extent
        self.feature_dim = inner.feature_dim
        self.name = f"slices_2p5d[{inner.name},n={num_slices},extent={extent:g}]"
        self.weights_hash = inner.weights_hash

    def slice_indices(self, size: int) -> Tensor:
        """Indices of the slices taken along an axis of length ``size``."""
        half = self.extent * (size - 1) / 2
        centre = (size - 1) / 2
        return torch.linspace(centre - half, centre + half, self.num_slices).round().long().unique()

    def forward(self, volumes: Tensor) -> Tensor:
        """``[B, C, D, H, W]`` in [-1, 1] -> ``[B, F]``."""
        self.check_input(volumes)
        batch = volumes.shape[0]
        per_plane = []
        for axis in (2, 3, 4):
            index = self.slice_indices(volumes.shape[axis]).to(volumes.device)
            slices = volumes.index_select(axis, index).movedim(axis, 1)
            flat = slices.reshape(batch * index.numel(), *slices.shape[2:])
            per_plane.append(self.inner(flat).reshape(batch, index.numel(), -1).mean(1))
        return torch.stack(per_plane).mean(0)
