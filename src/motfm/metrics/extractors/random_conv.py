"""``random_conv``: a seeded random-weights conv net, 2D or 3D. **For tests and smoke checks only**: its
numbers mean nothing outside this code base and are not comparable with published values."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from motfm.metrics.extractors.base import FeatureExtractor, register_extractor, state_dict_sha256, to_rgb


@register_extractor("random_conv")
class RandomConvExtractor(FeatureExtractor):
    """A seeded random-weights conv net for 2D or 3D inputs. FOR TESTS AND SMOKE CHECKS ONLY.

    Three stride-2 convolutions with GELU, global average pooling to ``feature_dim`` features and a random
    linear head with ``num_classes`` outputs (so the IS code path can run). Weights are drawn from a private
    ``torch.Generator(seed)``: equal arguments give bit-identical networks whatever the global RNG state.
    Its values are meaningful only relative to each other and never comparable with published numbers.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        feature_dim: ``F``.
        width: channels of the first convolution (doubled in the second).
        num_classes: outputs of the random classifier head.
        seed: weight seed.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        feature_dim: int = 64,
        width: int = 16,
        num_classes: int = 10,
        seed: int = 0,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_dims = spatial_dims
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            conv(3, width, 3, stride=2, padding=1),
            nn.GELU(),
            conv(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            conv(2 * width, feature_dim, 3, stride=2, padding=1),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.parameters():
                if param.ndim > 1:
                    fan_in = param[0].numel()
                    param.copy_(torch.randn(param.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                else:
                    param.zero_()
        self.name = f"random_conv{spatial_dims}d"
        self.weights_hash = state_dict_sha256(self)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 1|3, *spatial]`` in [-1, 1] -> ``[B, feature_dim]``."""
        self.check_input(images)
        return self.body(to_rgb(images).to(self.head.weight.dtype)).flatten(2).mean(2)

    def logits(self, images: Tensor) -> Tensor:
        """Random-head logits ``[B, num_classes]``."""
        return self.head(self.forward(images))
