"""Representations: where the flow runs (pixels, or the coefficients of a fixed invertible transform).

``representation_from_dict`` rebuilds the one a checkpoint or exported model recorded (a missing record
means pixels: models written before representations existed).
"""

from __future__ import annotations

from typing import Any

from motfm.data_spec import DataSpec
from motfm.representation.base import PixelRepresentation, Representation
from motfm.representation.wavelet import HaarRepresentation

KINDS: dict[str, type[Representation]] = {"pixel": PixelRepresentation, "haar": HaarRepresentation}

__all__ = ["KINDS", "HaarRepresentation", "PixelRepresentation", "Representation", "representation_from_dict"]


def representation_from_dict(d: dict[str, Any] | None, spec: DataSpec) -> Representation:
    """The representation described by ``Representation.to_dict`` (``None``: pixels).

    Args:
        d: the stored description.
        spec: the data it encodes.

    Raises:
        ValueError: an unknown kind, bad options or band scales that do not fit ``spec`` (one line).
    """
    if d is None:
        return PixelRepresentation(spec)
    if not isinstance(d, dict) or d.get("kind") not in KINDS:
        kind = d.get("kind") if isinstance(d, dict) else d
        raise ValueError(f"unknown representation {kind!r}; expected one of {sorted(KINDS)}")
    if d["kind"] == "pixel":
        return PixelRepresentation(spec)
    rep = HaarRepresentation(
        spec,
        levels=d.get("levels", 1),
        band_scale=d.get("band_scale", "std"),
        scale_batches=d.get("scale_batches", 16),
    )
    rep.load_dict(d)
    return rep
