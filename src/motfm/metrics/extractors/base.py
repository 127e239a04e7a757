"""The extractor contract and registry: :class:`FeatureExtractor`, :func:`register_extractor`,
:func:`get_extractor`, :class:`ExtractorUnavailable`, weight hashing and the shared image preprocessing
(grey to RGB, the TF1 bilinear resize of the TF-FID code).

Every extractor maps images in [-1, 1] (``[B, C, H, W]``, or ``[B, C, D, H, W]`` for 3D extractors) to
features ``[B, F]`` and records ``name`` and ``weights_hash`` (a SHA-256 prefix of its weights file, or of its
state_dict bytes), so that results and cached reference statistics say exactly which network produced them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

HASH_CHARS = 16


class ExtractorUnavailable(RuntimeError):
    """A feature extractor cannot be built here: a package or a weights file is missing."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The first :data:`HASH_CHARS` hex digits of the SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:HASH_CHARS]


def state_dict_sha256(module: nn.Module) -> str:
    """The first :data:`HASH_CHARS` hex digits of a SHA-256 over a module's state_dict (names, dtypes,
    shapes and raw bytes, in sorted key order)."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:HASH_CHARS]


def to_rgb(images: Tensor) -> Tensor:
    """Replicate a grey channel to 3: ``[B, 1, *spatial] -> [B, 3, *spatial]``; RGB passes through."""
    if images.shape[1] == 3:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, 3, *images.shape[2:])
    raise ValueError(f"expected 1 (grey) or 3 (RGB) channels, got {images.shape[1]}")


def resize_bilinear_tf1(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize as TensorFlow 1.x ``resize_bilinear(align_corners=False)`` (the TF-FID resize).

    Output pixel ``j`` samples input coordinate ``j * in / out`` (no half-pixel offset), clamped at the
    border; this is also what StyleGAN's and torch-fidelity's FID code reproduce.

    Args:
        images: ``[B, C, H, W]`` float.
        size: output ``(H', W')``.

    Returns:
        ``[B, C, H', W']``.
    """
    out = images
    for axis, new in zip((2, 3), size):
        old = out.shape[axis]
        if old == new:
            continue
        src = torch.arange(new, dtype=images.dtype, device=images.device) * (old / new)
        lo = src.floor().long().clamp_(max=old - 1)
        hi = (lo + 1).clamp_(max=old - 1)
        shape = [1, 1, 1, 1]
        shape[axis] = new
        frac = (src - lo).reshape(shape)
        out = out.index_select(axis, lo) * (1 - frac) + out.index_select(axis, hi) * frac
    return out


def hub_checkpoint(filename: str) -> Path | None:
    """``filename`` in the torch hub cache (``torch.hub.get_dir()/checkpoints``), if there; no download."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return path if path.is_file() else None


class FeatureExtractor(nn.Module):
    """Base class: images in [-1, 1] -> features ``[B, feature_dim]``.

    Attributes:
        name: identifies the network and its preprocessing in results.
        weights_hash: SHA-256 prefix of the weights (file or state_dict bytes).
        feature_dim: ``F``.
        spatial_dims: 2 for ``[B, C, H, W]`` inputs, 3 for ``[B, C, D, H, W]``.
    """

    name: str
    weights_hash: str
    feature_dim: int
    spatial_dims: int = 2

    def check_input(self, images: Tensor) -> None:
        """Raise ``ValueError`` unless ``images`` has this extractor's rank."""
        if images.ndim != 2 + self.spatial_dims:
            layout = "[B, C, H, W]" if self.spatial_dims == 2 else "[B, C, D, H, W]"
            raise ValueError(f"{self.name} expects {layout}, got shape {tuple(images.shape)}")

    def logits(self, images: Tensor) -> Tensor:
        """Classifier logits ``[B, K]``; only classifier backbones have them."""
        raise NotImplementedError(
            f"extractor {self.name!r} has no classifier head (no logits, no Inception Score)"
        )

    def probs(self, images: Tensor) -> Tensor:
        """Class probabilities ``[B, K]`` (softmax of :meth:`logits`)."""
        return self.logits(images).softmax(-1)

    def describe(self) -> dict[str, Any]:
        """Provenance to store beside results or cached statistics."""
        return {"extractor": self.name, "weights_hash": self.weights_hash, "feature_dim": self.feature_dim}

    @torch.inference_mode()
    def extract(
        self, images: Tensor, batch_size: int = 32, kind: Literal["features", "probs"] = "features"
    ) -> Tensor:
        """Features (or class probabilities) for a whole set, in batches on the extractor's device.

        Args:
            images: ``[N, C, *spatial]`` in [-1, 1], on any device.
            batch_size: images per forward pass.
            kind: ``"features"`` for :meth:`forward`, ``"probs"`` for :meth:`probs`.

        Returns:
            ``[N, F]`` (or ``[N, K]``) float32 on the CPU.
        """
        if kind not in ("features", "probs"):
            raise ValueError(f"kind must be 'features' or 'probs', got {kind!r}")
        self.eval()
        fn = self.forward if kind == "features" else self.probs
        device = next(itertools.chain(self.parameters(), self.buffers()), torch.empty(0)).device
        out = [
            fn(images[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(out)


_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str) -> Callable[[type[FeatureExtractor]], type[FeatureExtractor]]:
    """Class decorator adding an extractor to the registry under ``name``."""

    def add(cls: type[FeatureExtractor]) -> type[FeatureExtractor]:
        if name in _REGISTRY:
            raise ValueError(f"extractor {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return add


def available_extractors() -> list[str]:
    """Registered extractor names (whether or not their packages/weights are present here)."""
    return sorted(_REGISTRY)


def get_extractor(name: str, **kwargs: Any) -> FeatureExtractor:
    """Build a registered extractor in eval mode with gradients disabled.

    Args:
        name: one of :func:`available_extractors`.
        **kwargs: passed to the extractor's constructor (e.g. ``weights_path=``, ``model_path=``).

    Returns:
        The extractor.

    Raises:
        KeyError: unknown name.
        ExtractorUnavailable: its package or weights are missing.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown feature extractor {name!r}; available: {', '.join(available_extractors())}")
    return _REGISTRY[name](**kwargs).eval().requires_grad_(False)
