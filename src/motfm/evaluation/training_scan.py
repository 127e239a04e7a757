"""One pass over a training split for the memorisation audit (:mod:`motfm.audit`).

The split is read ``load_batch_size`` items at a time, so a training set of thousands of images (or of large
volumes) is never in memory at once. Each batch gives its features (skipped when the reference-feature cache
of :mod:`motfm.metrics.report` already holds those of this split, extractor and weights), its structure
vectors (:func:`motfm.metrics.memorisation.structure_vectors`, small enough to keep) and updates, for every
query set, the nearest training item in raw pixel space (:class:`motfm.metrics.neighbours.NearestNeighbours`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from motfm.data.base import MotfmDataset
from motfm.metrics.extractors import FeatureExtractor
from motfm.metrics.memorisation import structure_vectors
from motfm.metrics.neighbours import NearestNeighbours
from motfm.metrics.report import extract_features, load_reference_features, save_reference_features
from motfm.progress import progress


@dataclass
class TrainingScan:
    """What the pass over the training split found.

    Attributes:
        features: ``[N, F]`` features of the training items.
        features_from_cache: whether they came from the cache.
        structure: ``[N, S]`` structure vectors of the training items, or ``None``.
        pixel_nearest: per query set, ``(distances [M] float64, indices [M] int64)`` of the nearest training
            item in pixel space (Euclidean distance of the flattened images).
    """

    features: Tensor
    features_from_cache: bool
    structure: Tensor | None
    pixel_nearest: dict[str, tuple[Tensor, Tensor]]


def scan_training_split(
    dataset: MotfmDataset,
    num_items: int,
    extractor: FeatureExtractor,
    pixel_queries: Mapping[str, Tensor],
    cache: tuple[Path, Mapping[str, Any]] | None = None,
    structure_size: int | None = None,
    load_batch_size: int = 256,
    feature_batch_size: int = 32,
) -> TrainingScan:
    """Features (and structure vectors) of the first ``num_items`` training items, and the pixel-space nearest
    ones of each query set.

    Args:
        dataset: the training split.
        num_items: ``N``, items read from its start.
        extractor: the feature network.
        pixel_queries: named image sets ``[M, C, *spatial]`` (the same shape as the training images).
        cache: ``(stem, meta)`` of the reference-feature cache for this split (``None``: no cache).
        structure_size: thumbnail side of the structure vectors (``None``: none).
        load_batch_size: items read at a time.
        feature_batch_size: images per forward pass of the extractor.

    Returns:
        The :class:`TrainingScan`.
    """
    cached = load_reference_features(*cache) if cache is not None else None
    finders = {name: NearestNeighbours(queries, k=1) for name, queries in pixel_queries.items()}
    batches: list[Tensor] = []
    structure: list[Tensor] = []
    if cached is None or finders or structure_size is not None:
        starts = range(0, num_items, load_batch_size)
        for start in progress(starts, desc="training split", unit="batch", leave=False):
            stop = min(start + load_batch_size, num_items)
            images = torch.stack([dataset[i]["image"] for i in range(start, stop)]).float()
            if cached is None:
                batches.append(extract_features(extractor, images, feature_batch_size))
            if structure_size is not None:
                structure.append(structure_vectors(images, structure_size))
            for finder in finders.values():
                finder.update(images, start)
    if cached is not None:
        features = cached[0]
    else:
        features = torch.cat(batches)
        if cache is not None:
            save_reference_features(cache[0], features, cache[1])
    nearest = {}
    for name, finder in finders.items():
        distances, indices = finder.result()
        nearest[name] = (distances[:, 0], indices[:, 0])
    return TrainingScan(features, cached is not None, torch.cat(structure) if structure else None, nearest)
