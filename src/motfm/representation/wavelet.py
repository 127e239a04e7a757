"""Flow matching in Haar wavelet space: :class:`HaarRepresentation` (``representation=haar``).

The network works on the coefficients of an ``L``-level orthonormal Haar transform (:mod:`.haar`):
``2^(dL)`` channels per image channel at ``1 / 2^L`` the side, i.e. ``2^(dL)`` times fewer positions
(WFM, MIDL 2026; FlowLet, MedIA 2026). High-frequency sub-bands are far smaller and heavier-tailed than the
low-pass band (WaveDiT, MICCAI 2026, models each band's scale), so each sub-band of each channel is divided
by its standard deviation on the training data (``band_scale=std``): the flow then transports unit-variance
coefficients, as it transports unit-variance noise. Decoding multiplies the scales back and inverts the
transform, so samples are images in the data's range.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from motfm.data_spec import DataSpec
from motfm.representation.base import Representation
from motfm.representation.haar import check_divisible, haar_forward, haar_inverse

log = logging.getLogger(__name__)

BAND_SCALES = ("std", "none")
MIN_SCALE = 1e-6  # a band that is constant on the training data keeps a finite scale


class HaarRepresentation(Representation):
    """An ``L``-level orthonormal Haar transform (wavelet packet) with a scale per sub-band and channel.

    Args:
        spec: the data (every image side divisible by ``2^levels``).
        levels: transform levels (1: 4 / 8 bands at half the side in 2D / 3D; 2: 16 / 64 at a quarter).
        band_scale: ``std`` (divide each band by its training-data standard deviation, estimated by
            :meth:`fit`) or ``none`` (the orthonormal coefficients as they are).
        scale_batches: training batches :meth:`fit` reads (the first ones of the training split, in order).
    """

    kind = "haar"

    def __init__(
        self, spec: DataSpec, levels: int = 1, band_scale: str = "std", scale_batches: int = 16
    ) -> None:
        super().__init__(spec)
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"representation.levels must be an integer >= 1, got {levels!r}")
        if band_scale not in BAND_SCALES:
            raise ValueError(f"representation.band_scale must be one of {BAND_SCALES}, got {band_scale!r}")
        if scale_batches < 1:
            raise ValueError(f"representation.scale_batches must be >= 1, got {scale_batches}")
        check_divisible(spec.image_size, levels)
        self.levels, self.band_scale, self.scale_batches = levels, band_scale, scale_batches
        self.bands = 2 ** (spec.spatial_dims * levels)
        self.register_buffer("scale", torch.ones(spec.channels * self.bands))

    def _scale(self, x: Tensor) -> Tensor:
        return self.scale.to(x.device).view(1, -1, *([1] * self.spec.spatial_dims))

    def encode(self, images: Tensor) -> Tensor:
        """Images ``[B, C, *spatial]`` -> scaled coefficients ``[B, C * 2^(dL), *spatial / 2^L]`` (fp32)."""
        return haar_forward(images.float(), self.levels) / self._scale(images)

    def decode(self, coeffs: Tensor) -> Tensor:
        """Scaled coefficients -> images ``[B, C, *spatial]`` (fp32; the exact inverse of :meth:`encode`)."""
        return haar_inverse(coeffs.float() * self._scale(coeffs), self.levels)

    def coeff_spec(self, spec: DataSpec) -> DataSpec:
        """``spec`` with ``2^(dL)`` times the channels at ``1 / 2^L`` the side (classes and labels kept)."""
        check_divisible(spec.image_size, self.levels)
        size = tuple(s // 2**self.levels for s in spec.image_size)
        return dataclasses.replace(spec, channels=spec.channels * self.bands, image_size=size)

    def net_kwargs(self) -> dict[str, Any]:
        """The ControlNet reads each mask at the coefficient resolution (see ``ControlNet``)."""
        return {"mask_downsample": 2**self.levels}

    @property
    def needs_fit(self) -> bool:
        """``band_scale=std`` estimates the scales from training data."""
        return self.band_scale == "std"

    @torch.no_grad()
    def fit(self, images: Iterable[Tensor]) -> None:
        """Set every band's scale to its standard deviation over ``images`` (float64 sums; deterministic).

        Args:
            images: batches ``[B, C, *spatial]`` of training images.
        """
        if not self.needs_fit:
            return
        total = first = second = None
        for batch in images:
            c = haar_forward(batch.to(torch.float64), self.levels)
            dims = [0, *range(2, c.ndim)]
            count = c.numel() // c.shape[1]
            s1, s2 = c.sum(dims), (c * c).sum(dims)
            if total is None:
                total, first, second = count, s1, s2
            else:
                total, first, second = total + count, first + s1, second + s2
        if total is None:
            raise ValueError("representation=haar: no training images to estimate the band scales from")
        mean = first / total
        std = (second / total - mean * mean).clamp_min(0).sqrt()
        self.scale.copy_(std.clamp_min(MIN_SCALE).to(self.scale))
        log.info("Haar band scales (std per channel x band): %s", [round(float(s), 4) for s in self.scale])

    def to_dict(self) -> dict[str, Any]:
        """Kind, options and the band scales as plain numbers."""
        return {
            "kind": self.kind,
            "levels": self.levels,
            "band_scale": self.band_scale,
            "scale_batches": self.scale_batches,
            "scale": [float(s) for s in self.scale],
        }

    def load_dict(self, d: dict[str, Any]) -> None:
        """Restore the band scales of :meth:`to_dict`.

        Raises:
            ValueError: when their number does not fit this data and level count.
        """
        scale = torch.as_tensor(d.get("scale", []), dtype=torch.float64)
        if scale.shape != self.scale.shape or not bool(torch.isfinite(scale).all() & (scale > 0).all()):
            raise ValueError(
                f"representation.scale must hold {self.scale.numel()} positive numbers "
                f"({self.spec.channels} channel(s) x {self.bands} bands), got {tuple(scale.shape)}"
            )
        self.scale.copy_(scale.to(self.scale))
