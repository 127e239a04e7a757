"""Where the flow runs: the :class:`Representation` stage between the data and the objective.

A representation is a fixed, invertible map of images to the tensors the network works on (see
``docs/wavelet.md``)::

    batch["image"] [B, C, *spatial] --encode--> objective / network / sampler --decode--> images

Objectives, samplers, guidance, EMA and the network code never see it: the Lightning module encodes the
training batch, and every sampling path draws its noise in the coefficient shape and decodes the result.
Masks stay integer label maps at the image resolution; the ControlNet brings them to the coefficient
resolution itself (:meth:`Representation.net_kwargs`). Metrics, exports and the audit see decoded images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

from torch import Tensor, nn

from motfm.data_spec import DataSpec


class Representation(nn.Module):
    """A fixed invertible transform of images ``[B, C, *spatial]`` into coefficients.

    Subclasses set ``kind`` (recorded in checkpoints and exported models) and implement :meth:`encode`,
    :meth:`decode` and :meth:`coeff_spec`. Data statistics (band scales) are buffers, so they follow the
    module's device and are part of the training checkpoint's state, and :meth:`to_dict` writes them as
    plain numbers for the loaders that rebuild a model without Lightning.

    Args:
        spec: the data the representation encodes.
    """

    kind: ClassVar[str]

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        self.spec = spec

    def encode(self, images: Tensor) -> Tensor:
        """Images ``[B, C, *spatial]`` -> coefficients ``[B, *coeff_shape]``."""
        raise NotImplementedError

    def decode(self, coeffs: Tensor) -> Tensor:
        """Coefficients ``[B, *coeff_shape]`` -> images ``[B, C, *spatial]`` (inverse of :meth:`encode`)."""
        raise NotImplementedError

    def coeff_spec(self, spec: DataSpec) -> DataSpec:
        """The data description the network is built on (channels and size of the coefficients)."""
        raise NotImplementedError

    @property
    def coeff_shape(self) -> tuple[int, ...]:
        """The shape of one encoded sample ``[C', *spatial']`` (where sampling noise is drawn)."""
        spec = self.coeff_spec(self.spec)
        return (spec.channels, *spec.image_size)

    def net_kwargs(self) -> dict[str, Any]:
        """Extra arguments of :func:`motfm.nn.velocity.build_velocity_net` (e.g. the mask's resolution)."""
        return {}

    @property
    def needs_fit(self) -> bool:
        """Whether :meth:`fit` estimates statistics from training data."""
        return False

    def fit(self, images: Iterable[Tensor]) -> None:
        """Estimate the representation's data statistics from training images (none by default)."""

    def encode_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A training batch with its ``image`` encoded (labels, masks and the rest unchanged).

        Reflow pairs carry the ``noise`` their teacher started from, drawn where the teacher's flow ran: it
        must have the shape of this representation's coefficients (checked on shapes, no host read).
        """
        coeffs = self.encode(batch["image"])
        noise = batch.get("noise")
        if noise is not None and noise.shape != coeffs.shape:
            raise ValueError(
                f"the pairs' noise has shape {tuple(noise.shape)}, this run's {self.kind} representation "
                f"gives {tuple(coeffs.shape)}: train the student with its teacher's representation"
            )
        return {**batch, "image": coeffs}

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python description (kind, options, statistics), stored in checkpoints and exports."""
        return {"kind": self.kind}

    def load_dict(self, d: dict[str, Any]) -> None:
        """Restore the statistics of :meth:`to_dict` (none by default)."""


class PixelRepresentation(Representation):
    """The identity: the flow runs on the pixels (voxels) themselves (the default)."""

    kind = "pixel"

    def encode(self, images: Tensor) -> Tensor:
        """Identity."""
        return images

    def decode(self, coeffs: Tensor) -> Tensor:
        """Identity."""
        return coeffs

    def coeff_spec(self, spec: DataSpec) -> DataSpec:
        """``spec`` itself."""
        return dataclasses.replace(spec)
