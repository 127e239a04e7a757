"""Shared evaluation pieces: metrics of a generated set against a reference set, the reference-feature cache,
and the markdown table, used by ``python -m motfm.evaluate`` and the training-time metrics callback.

* :func:`build_extractor`: a registered extractor for 2D or 3D data; a 2D extractor is applied to volumes
  through the 2.5D ``slices_2p5d`` wrapper, a 3D one (``medicalnet``, ``r3d18``) directly.
* :func:`distribution_metrics`: FID (Heusel et al. 2017), KID (Bińkowski et al. 2018) and optionally the
  Gaussian-RBF MMD (Gretton et al. 2012) from two feature sets.
* :func:`reference_features`: the features of the reference images (or of any data split), cached in
  ``<cache_dir>/ref_stats/<name>.npz`` (mean and covariance, :func:`motfm.metrics.frechet.save_statistics`)
  plus ``<name>.features.npz`` (the features themselves, which KID and MMD need), keyed by dataset config,
  split, number of images, extractor name and weights hash.
* :func:`phantom_segmenter` / :func:`dice_metrics`: conditional fidelity on the embedded phantoms.
* :func:`markdown_table` / :func:`write_report`: ``metrics.md`` and ``metrics.json``, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class
from torch import Tensor

from motfm.data.phantom import BrainPhantom, EchoPhantom
from motfm.io.atomic import atomic_open, atomic_path, write_json
from motfm.metrics.extractors import FeatureExtractor, Slices2p5D, get_extractor
from motfm.metrics.fidelity import dice_per_label, segment_brain_phantom, segment_echo_phantom
from motfm.metrics.frechet import feature_statistics, frechet_distance, load_statistics, save_statistics
from motfm.metrics.kernels import kid, mmd_rbf
from motfm.progress import progress

PHANTOM_SEGMENTERS: dict[type, Callable[[Tensor], Tensor]] = {
    EchoPhantom: segment_echo_phantom,
    BrainPhantom: segment_brain_phantom,
}

_CACHE_VERSION = 1


def config_hash(cfg: Mapping[str, Any], chars: int = 12) -> str:
    """A SHA-256 prefix of a JSON-able mapping (keys sorted), e.g. a dataset configuration."""
    text = json.dumps(dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:chars]


def build_extractor(
    name: str,
    spatial_dims: int,
    kwargs: Mapping[str, Any] | None = None,
    slices: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> FeatureExtractor:
    """A registered feature extractor for ``spatial_dims``-D images.

    Args:
        name: registered name (:func:`motfm.metrics.extractors.available_extractors`).
        spatial_dims: 2 or 3, the dimensionality of the images to score.
        kwargs: constructor arguments of the extractor (e.g. ``weights_path``, ``model_path``).
        slices: ``num_slices`` / ``extent`` of the 2.5D wrapper used when a 2D extractor meets volumes.
        device: where the network runs.

    Returns:
        The extractor in eval mode; for volumes a 2D one is wrapped in ``slices_2p5d``.

    Raises:
        ExtractorUnavailable: its package or weights are missing.
        ValueError: a 3D extractor for 2D images.
    """
    extractor = get_extractor(name, **dict(kwargs or {}))
    if spatial_dims == 3 and extractor.spatial_dims == 2:
        extractor = Slices2p5D(extractor, **dict(slices or {})).eval()
    if extractor.spatial_dims != spatial_dims:
        raise ValueError(
            f"extractor {extractor.name} is {extractor.spatial_dims}D, the images are {spatial_dims}D"
        )
    return extractor.to(device)


def has_logits(extractor: FeatureExtractor) -> bool:
    """Whether the extractor has a classifier head (needed for the Inception Score)."""
    return type(extractor).logits is not FeatureExtractor.logits


def extract_features(
    extractor: FeatureExtractor,
    images: Tensor,
    batch_size: int = 32,
    kind: str = "features",
    desc: str | None = None,
) -> Tensor:
    """:meth:`FeatureExtractor.extract` in batches with a progress bar.

    Args:
        extractor: the network.
        images: ``[N, C, *spatial]`` in [-1, 1].
        batch_size: images per forward pass.
        kind: ``"features"`` or ``"probs"``.
        desc: progress-bar label (no bar when ``None``).

    Returns:
        ``[N, F]`` (or ``[N, K]``) float32 on the CPU.
    """
    starts = range(0, images.shape[0], batch_size)
    if desc is not None:
        starts = progress(starts, desc=desc, unit="batch", leave=False)
    return torch.cat([extractor.extract(images[i : i + batch_size], batch_size, kind) for i in starts])


def distribution_metrics(
    real: Tensor,
    fake: Tensor,
    real_stats: tuple[np.ndarray, np.ndarray] | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    rbf_mmd: bool = False,
) -> dict[str, float]:
    """FID, KID (and the RBF MMD) between reference and generated features.

    Args:
        real: ``[N, F]`` reference features.
        fake: ``[M, F]`` generated features.
        real_stats: precomputed ``(mu, sigma)`` of ``real`` (e.g. from the cache); computed when ``None``.
        kid_subsets: KID subsets.
        kid_subset_size: rows per KID subset (clipped to the smaller set).
        seed: seed of the KID subset draw.
        rbf_mmd: also the unbiased Gaussian-RBF MMD^2 with the median-heuristic bandwidth (the "3D MMD").

    Returns:
        ``{"fid", "kid", "kid_std"[, "mmd_rbf"]}``.
    """
    mu_r, sigma_r = real_stats if real_stats is not None else feature_statistics(real)
    out = {"fid": frechet_distance(mu_r, sigma_r, *feature_statistics(fake))}
    generator = torch.Generator().manual_seed(seed)
    out["kid"], out["kid_std"] = kid(real, fake, kid_subsets, kid_subset_size, generator=generator)
    if rbf_mmd:
        out["mmd_rbf"] = mmd_rbf(real, fake)
    return out


def phantom_segmenter(dataset: str | type | None) -> Callable[[Tensor], Tensor] | None:
    """The deterministic label-map segmenter of a phantom dataset class, else ``None``.

    Args:
        dataset: the class, or its import path as a config's ``_target_`` names it (any path that resolves
            to the class, e.g. ``motfm.data.phantom.EchoPhantom`` or ``motfm.data.phantom.echo.EchoPhantom``).
    """
    if isinstance(dataset, str):
        try:
            dataset = get_class(dataset)
        except Exception:  # not importable: not one of ours
            return None
    return PHANTOM_SEGMENTERS.get(dataset) if isinstance(dataset, type) else None


def dice_metrics(
    segmenter: Callable[[Tensor], Tensor],
    images: Tensor,
    masks: Tensor,
    label_names: Sequence[str],
    prefix: str = "dice",
    batch_size: int = 64,
) -> dict[str, float]:
    """Dice of the segmentation of ``images`` against ``masks``: mean and per foreground label.

    Args:
        segmenter: ``[B, 1, *spatial]`` images -> int64 label maps of the same shape.
        images: ``[N, 1, *spatial]`` in [-1, 1].
        masks: ``[N, 1, *spatial]`` int64 reference label maps.
        label_names: names of all labels, background first.
        prefix: key prefix.

    Returns:
        ``{prefix: mean over samples and labels, f"{prefix}/{name}": mean over samples, ...}``.
    """
    scores = torch.cat(
        [
            dice_per_label(
                segmenter(images[i : i + batch_size]).cpu(), masks[i : i + batch_size].cpu(), len(label_names)
            )
            for i in range(0, images.shape[0], batch_size)
        ]
    )
    out = {prefix: float(scores.mean())}
    for k, name in enumerate(label_names[1:]):
        out[f"{prefix}/{name}"] = float(scores[:, k].mean())
    return out


# ------------------------------------------------------------------------------------------- reference cache


def reference_cache_stem(
    cache_dir: str | os.PathLike[str], dataset_cfg: Mapping[str, Any], split: str, extractor: FeatureExtractor
) -> Path:
    """``<cache_dir>/ref_stats/<Dataset>-<split>-<extractor>-<weights hash>-<config hash>`` (no suffix)."""
    dataset = str(dataset_cfg.get("_target_", "dataset")).rsplit(".", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9_.=,-]+", "_", extractor.name)
    return (
        Path(cache_dir)
        / "ref_stats"
        / f"{dataset}-{split}-{name}-{extractor.weights_hash}-{config_hash(dataset_cfg)}"
    )


def reference_cache_meta(
    extractor: FeatureExtractor, dataset_cfg: Mapping[str, Any], split: str, num_images: int
) -> dict[str, Any]:
    """What cached reference features must match: the extractor, the dataset config, split and item count."""
    return {
        **extractor.describe(),
        "dataset": config_hash(dataset_cfg),
        "split": split,
        "num_samples": num_images,
    }


def _meta_json(meta: Mapping[str, Any]) -> str:
    return json.dumps({"cache_version": _CACHE_VERSION, **dict(meta)}, sort_keys=True, default=str)


def load_reference_features(
    stem: Path, meta: Mapping[str, Any]
) -> tuple[Tensor, tuple[np.ndarray, np.ndarray]] | None:
    """Cached reference features and their ``(mu, sigma)`` if both files exist and match ``meta``."""
    features_file = stem.with_name(stem.name + ".features.npz")
    stats = load_statistics(stem.with_name(stem.name + ".npz"), meta)
    if stats is None or not features_file.is_file():
        return None
    with np.load(features_file, allow_pickle=False) as data:
        if str(data["meta_json"]) != _meta_json(meta):
            return None
        features = torch.from_numpy(data["features"].copy())
    return features, stats


def save_reference_features(
    stem: Path, features: Tensor, meta: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Write reference features and their statistics (atomically); returns ``(mu, sigma)``."""
    mu, sigma = feature_statistics(features)
    save_statistics(stem.with_name(stem.name + ".npz"), mu, sigma, meta)
    with atomic_path(stem.with_name(stem.name + ".features.npz")) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=features.numpy().astype(np.float32), meta_json=np.array(_meta_json(meta)))
    return mu, sigma


def reference_features(
    extractor: FeatureExtractor,
    images: Callable[[], Tensor],
    cache_dir: str | os.PathLike[str] | None,
    dataset_cfg: Mapping[str, Any],
    split: str,
    num_images: int,
    batch_size: int = 32,
) -> tuple[Tensor, tuple[np.ndarray, np.ndarray], bool]:
    """Features of the reference images, from the cache when it holds them.

    Args:
        extractor: the feature network.
        images: returns the ``[N, C, *spatial]`` reference images (called only on a cache miss).
        cache_dir: the cache root (``None`` disables caching).
        dataset_cfg: the dataset configuration (part of the key).
        split: the reference split (part of the key).
        num_images: ``N`` (part of the key).
        batch_size: images per forward pass.

    Returns:
        ``(features [N, F], (mu, sigma), from_cache)``.
    """
    meta = reference_cache_meta(extractor, dataset_cfg, split, num_images)
    stem = reference_cache_stem(cache_dir, dataset_cfg, split, extractor) if cache_dir is not None else None
    if stem is not None:
        cached = load_reference_features(stem, meta)
        if cached is not None:
            return cached[0], cached[1], True
    features = extract_features(extractor, images(), batch_size, desc=f"features: real {split}")
    if stem is None:
        return features, feature_statistics(features), False
    return features, save_reference_features(stem, features, meta), False


# -------------------------------------------------------------------------------------------------- report


def _format(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 4) -> str:
    """A GitHub-markdown table: one line per row, one column per key (``-`` where a row lacks it).

    Args:
        rows: the rows, as mappings.
        columns: keys to show, in order (the headers).
        digits: significant digits of floats.

    Returns:
        The table text, ending with a newline.
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | os.PathLike[str], result: Mapping[str, Any], markdown: str) -> None:
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir``, each atomically."""
    out = Path(out_dir)
    write_json(out / "metrics.json", dict(result))
    with atomic_open(out / "metrics.md", "w", encoding="utf-8") as f:
        f.write(markdown)
