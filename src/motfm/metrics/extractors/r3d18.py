"""``r3d18``: torchvision's Kinetics-400 video ResNet ``r3d_18`` (Tran et al. 2018) as a 3D feature extractor,
from a local weights file; needs torchvision."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motfm.metrics.extractors.base import (
    ExtractorUnavailable,
    FeatureExtractor,
    hub_checkpoint,
    register_extractor,
    sha256_file,
    to_rgb,
)

_KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
_KINETICS_STD = (0.22803, 0.22145, 0.216989)
_R3D18_FILE = "r3d_18-b3b3357e.pth"


@register_extractor("r3d18")
class R3D18Extractor(FeatureExtractor):
    """torchvision's Kinetics-400 ``r3d_18`` video ResNet as a 3D feature extractor (512-d).

    Volumes ``[B, C, D, H, W]`` are read as clips with ``D`` frames: grey replicated to RGB, mapped to [0, 1],
    resized in-plane to ``input_size`` (trilinear, depth kept) and normalised with the Kinetics mean/std the
    network was trained with (the original MOTFM 3D-FID fed unnormalised volumes).

    Args:
        weights_path: torchvision's ``r3d_18-b3b3357e.pth``; default: that file in the torch hub cache.
        input_size: in-plane size (112 as in Kinetics training).
    """

    spatial_dims = 3
    feature_dim = 512

    def __init__(self, weights_path: str | os.PathLike[str] | None = None, input_size: int = 112):
        super().__init__()
        try:
            from torchvision.models.video import r3d_18
        except ImportError as err:
            raise ExtractorUnavailable(
                "extractor 'r3d18' needs torchvision (the build matching the installed torch) and the r3d_18 "
                f"Kinetics-400 weights ({_R3D18_FILE}) via weights_path=<file>"
            ) from err
        path = Path(weights_path) if weights_path is not None else hub_checkpoint(_R3D18_FILE)
        if path is None or not path.is_file():
            raise ExtractorUnavailable(
                f"extractor 'r3d18' needs the torchvision weights {_R3D18_FILE}: pass weights_path=<file> or "
                f"place it in {Path(torch.hub.get_dir()) / 'checkpoints'}"
            )
        self.net = r3d_18(weights=None)
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net.fc = nn.Identity()
        self.input_size = input_size
        self.name = "r3d18"
        self.weights_hash = sha256_file(path)
        self.register_buffer("mean", torch.tensor(_KINETICS_MEAN).reshape(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_KINETICS_STD).reshape(1, 3, 1, 1, 1), persistent=False)

    def forward(self, volumes: Tensor) -> Tensor:
        """``[B, 1|3, D, H, W]`` in [-1, 1] -> ``[B, 512]``."""
        self.check_input(volumes)
        x = (to_rgb(volumes).float().clamp(-1, 1) + 1) / 2
        size = (x.shape[2], self.input_size, self.input_size)
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        return self.net((x - self.mean) / self.std)
