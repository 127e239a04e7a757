"""A dataset target for the entry-point tests (``data.dataset._target_=entry_helpers.NanInTestSplit``)."""

from __future__ import annotations

from typing import Any

import torch

from motfm.data.base import DataSpec, MotfmDataset


class NanInTestSplit(MotfmDataset):
    """Three 8x8 images per split; item 1 of the ``test`` split is NaN, the kind of item only a check of every
    sample finds (its reader does not look)."""

    def __init__(self, split: str, **options: Any) -> None:  # options of the echo phantom config: unused
        self.split = split
        self.spec = DataSpec(spatial_dims=2, channels=1, image_size=(8, 8))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = torch.zeros(1, 8, 8)
        if self.split == "test" and index == 1:
            image[0, 3, 3] = float("nan")
        return {"image": image, "meta": {"id": f"{self.split}-{index}"}}
