"""Memorisation audit: does a model reproduce its training images?
``python -m motfm.audit ckpt_path=... [num_samples=256]`` or ``python -m motfm.audit samples=<samples.npz or
folder>``.

Synthetic data is shared instead of patient data only if it does not give the patients back. The audit finds,
for every generated sample, its nearest *training* item in three spaces: the features of the evaluation
extractor (``inception_bundled`` by default), the structure space (``structure_size`` thumbnails: anatomy
without texture, :func:`motfm.metrics.memorisation.structure_vectors`) and raw pixels. It compares those
distances with the nearest-training distances of held-out real items (the ``heldout_split``, by default
``test``, which the model never saw): a model that generalises produces samples no closer to its training
images than new real images are. The statistics (copied share, distance ratio, Mann-Whitney z and C_T of
Meehan et al. 2020, authenticity after Alaa et al. 2022) are defined in :mod:`motfm.metrics.memorisation`.

Verdict (:func:`motfm.metrics.memorisation.copying_verdict`): ``copying_suspected`` when, in the feature space
or in the structure space, ``C_T < -3`` or the copied share has a beta-binomial p-value below 1e-3. These
limits were fixed before any result was seen. The structure space joined the rule after the feature space
alone missed a deliberately memorising model (its 8 training images redrawn with new speckle: to InceptionV3
those samples were no closer to their originals than new real images are). Raw pixel distances are reported
but stay out of the verdict: they add each image's own acquisition noise to its anatomy, so whether a smooth
or a noisy sample looks nearer to the training set than real data depends on the data (a denoised sample
saves one noise term, its softened edges cost more; on the echo phantom, 3x3-blurred real images read
farther), and every extra space adds false alarms.

Samples come from the checkpoint (generated on the fly through
:func:`motfm.evaluation.generation.generate_set`, conditioned like ``motfm.evaluate`` on the held-out items)
or from the files of ``motfm.sample`` (``samples=``; their ``sampling.json`` names the checkpoint, whose
stored data config gives the training and held-out data). Training features are extracted in batches and
cached with the reference features of ``motfm.evaluate``.

Writes ``audit.json`` (every number behind the verdict, per-sample distances), ``audit.md`` and
``closest_pairs.png`` into ``out_dir``, each atomically and only after everything succeeded; a missing file
or a contradictory option stops the run with one line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from motfm.cli import readable_errors
from motfm.data.base import MotfmDataset
from motfm.evaluation.audit_report import audit_markdown, closest_pairs_picture
from motfm.evaluation.errors import InputError
from motfm.evaluation.generation import generate_for, reference_conditions, sampler_settings
from motfm.evaluation.inputs import (
    GeneratedSet,
    Reference,
    Source,
    data_config,
    load_reference,
    open_split,
    read_samples,
    resolve_source,
)
from motfm.evaluation.training_scan import TrainingScan, scan_training_split
from motfm.io.atomic import atomic_open, write_json
from motfm.io.images import save_png
from motfm.metrics.extractors import FeatureExtractor
from motfm.metrics.memorisation import (
    MIN_CELL_SAMPLES,
    RULE,
    authenticity,
    cell_statistic,
    copying_statistics,
    copying_verdict,
    structure_vectors,
)
from motfm.metrics.neighbours import knn
from motfm.metrics.report import (
    build_extractor,
    extract_features,
    reference_cache_meta,
    reference_cache_stem,
    reference_features,
)
from motfm.runtime import pick_device

log = logging.getLogger(__name__)


def audited_samples(cfg: DictConfig, source: Source, heldout: Reference) -> GeneratedSet:
    """The samples of ``samples=`` (the first ``num_samples``), else ``num_samples`` generated on the fly."""
    if cfg.num_samples < 1:
        raise InputError(f"num_samples must be >= 1, got {cfg.num_samples}")
    if source.samples is not None:
        found = read_samples(source.samples)
        keep = slice(0, cfg.num_samples)
        return GeneratedSet(
            found.images[keep],
            found.indices[keep],
            None if found.labels is None else found.labels[keep],
            None if found.masks is None else found.masks[keep],
            found.info,
        )
    model = source.model
    sampler = cfg.sampler or model.objective.default_samplers[0]
    settings = sampler_settings(model.objective, [sampler], [cfg.steps])
    conditions = reference_conditions(model, heldout, cfg.heldout_split)
    (generated,) = generate_for(cfg, model, conditions, settings)
    return generated


def space_statistics(
    cfg: DictConfig, train: Tensor, heldout: Tensor, samples: Tensor
) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Every statistic of one space held in memory (features or structure vectors ``[*, F]``), and each
    sample's nearest training item ``(distances [M], indices [M])``."""
    sample_d, sample_i = (t[:, 0] for t in knn(samples, train, 1))
    heldout_d, heldout_i = (t[:, 0] for t in knn(heldout, train, 1))
    train_radii = knn(train, None, 1)[0][:, 0]
    space = copying_statistics(sample_d, heldout_d)
    space["c_t"] = cell_statistic(train, heldout, samples, cfg.num_cells, MIN_CELL_SAMPLES, cfg.seed)
    space["authenticity"] = {
        "samples": authenticity(sample_d, sample_i, train_radii),
        "heldout": authenticity(heldout_d, heldout_i, train_radii),
    }
    return space, sample_d, sample_i


def _ratios(distances: Tensor, denominator: float) -> Tensor:
    return distances / denominator if denominator > 0 else torch.full_like(distances, float("inf"))


def closest_pairs(
    count: int,
    train_split: MotfmDataset,
    samples: GeneratedSet,
    spaces: dict[str, tuple[dict[str, Any], Tensor, Tensor]],
) -> tuple[list[dict[str, Any]], Tensor, Tensor]:
    """The ``count`` samples that look most like a copy: smallest distance ratio in any verdict space, each
    beside its nearest training item in that space.

    Returns:
        Records (sample index, training index, space, ratio, the pair's pixel distance), the sample images and
        the training images ``[K, C, *spatial]``.
    """
    names = list(spaces)
    ratios = torch.stack([_ratios(spaces[n][1], spaces[n][0]["ratio"]["denominator"]) for n in names])
    best_ratio, best_space = ratios.min(0)
    order = best_ratio.argsort(stable=True)[:count].tolist()
    nearest = [int(spaces[names[int(best_space[j])]][2][j]) for j in order]
    train_images = torch.stack([train_split[i]["image"] for i in nearest]).float()
    sample_images = samples.images[order].float()
    pixel = (sample_images - train_images).flatten(1).double().norm(dim=1)
    records = [
        {
            "sample": int(samples.indices[j]),
            "train_index": i,
            "space": names[int(best_space[j])],
            "ratio": float(best_ratio[j]),
            **{f"{n}_ratio": float(ratios[k, j]) for k, n in enumerate(names)},
            "pixel_distance": float(pixel[rank]),
        }
        for rank, (j, i) in enumerate(zip(order, nearest))
    ]
    return records, sample_images, train_images


def _captions(pairs: list[dict[str, Any]]) -> list[str]:
    return [
        f"#{rank + 1}: sample {p['sample']} / training item {p['train_index']}\n"
        f"nearest in {p['space']}: ratio {p['ratio']:.3g}\n"
        f"pixel distance of the pair {p['pixel_distance']:.4g}"
        for rank, p in enumerate(pairs)
    ]


def _scan(
    cfg: DictConfig,
    train_split: MotfmDataset,
    num_train: int,
    extractor: FeatureExtractor,
    dataset_cfg: dict[str, Any],
    samples: GeneratedSet,
    heldout: Reference,
) -> TrainingScan:
    cache = None
    if cfg.cache_features:
        stem = reference_cache_stem(cfg.paths.cache_dir, dataset_cfg, cfg.train_split, extractor)
        cache = (stem, reference_cache_meta(extractor, dataset_cfg, cfg.train_split, num_train))
    queries = {"samples": samples.images, "heldout": heldout.images} if cfg.pixel_space else {}
    return scan_training_split(
        train_split,
        num_train,
        extractor,
        queries,
        cache,
        cfg.structure_size,
        cfg.load_batch_size,
        cfg.feature_batch_size,
    )


def audit(cfg: DictConfig) -> dict[str, Any]:
    """Run the audit as configured; returns the content of ``audit.json``.

    Raises:
        InputError, CheckpointError, DataError, ExtractorUnavailable: bad or missing inputs (nothing is
            written then).
    """
    if cfg.train_split == cfg.heldout_split:
        raise InputError(f"train_split and heldout_split must differ, both are {cfg.train_split!r}")
    if cfg.closest_pairs < 1:
        raise InputError(f"closest_pairs must be >= 1, got {cfg.closest_pairs}")
    device = pick_device(cfg.device)
    source = resolve_source(cfg, device)
    extractor = build_extractor(
        cfg.extractor, source.spec.spatial_dims, cfg.extractor_kwargs, cfg.slices_2p5d, device
    )
    data_cfg = data_config(cfg, source)
    dataset_cfg = OmegaConf.to_container(data_cfg.dataset, resolve=True)
    heldout = load_reference(data_cfg, cfg.heldout_split, cfg.num_heldout)
    samples = audited_samples(cfg, source, heldout)
    train_split = open_split(data_cfg, cfg.train_split)
    num_train = len(train_split) if cfg.num_train is None else min(int(cfg.num_train), len(train_split))
    if num_train < 2:
        raise InputError(f"the {cfg.train_split!r} split needs at least 2 items, it has {len(train_split)}")
    train_shape = tuple(train_split[0]["image"].shape)
    if tuple(samples.images.shape[1:]) != train_shape or tuple(heldout.images.shape[1:]) != train_shape:
        raise InputError(
            f"{source.samples or source.ckpt_path}: samples of shape {tuple(samples.images.shape[1:])} and "
            f"held-out items of shape {tuple(heldout.images.shape[1:])}, but training items are {train_shape}"
        )

    cache_dir = cfg.paths.cache_dir if cfg.cache_features else None
    batch, num_heldout = cfg.feature_batch_size, len(heldout.images)
    heldout_features, _, heldout_cached = reference_features(
        extractor, lambda: heldout.images, cache_dir, dataset_cfg, cfg.heldout_split, num_heldout, batch
    )
    sample_features = extract_features(extractor, samples.images, batch, desc="features: samples")
    scan = _scan(cfg, train_split, num_train, extractor, dataset_cfg, samples, heldout)

    spaces = {"features": space_statistics(cfg, scan.features, heldout_features, sample_features)}
    if scan.structure is not None:
        spaces["structure"] = space_statistics(
            cfg,
            scan.structure,
            structure_vectors(heldout.images, cfg.structure_size),
            structure_vectors(samples.images, cfg.structure_size),
        )
    stats = {name: space[0] for name, space in spaces.items()}
    suspected, reasons = copying_verdict(stats)
    pixels = None
    if cfg.pixel_space:
        pixels = copying_statistics(scan.pixel_nearest["samples"][0], scan.pixel_nearest["heldout"][0])
    notes = [
        f"C_T undefined in {name} space: no k-means cell holds both held-out items and enough samples"
        for name, space in stats.items()
        if space["c_t"]["c_t"] is None
    ]
    if scan.structure is None:
        notes.append("structure space off (structure_size=null): the verdict reads the features only")
    if num_train < len(train_split):
        notes.append(f"only the first {num_train} of {len(train_split)} training items were searched")

    pairs, pair_samples, pair_train = closest_pairs(cfg.closest_pairs, train_split, samples, spaces)
    per_sample: dict[str, list] = {"index": samples.indices.tolist()}
    for name, (_, distances, nearest) in spaces.items():
        per_sample[f"{name}_distance"], per_sample[f"{name}_nearest_train"] = (
            distances.tolist(),
            nearest.tolist(),
        )
    if pixels is not None:
        per_sample["pixel_distance"] = scan.pixel_nearest["samples"][0].tolist()
        per_sample["pixel_nearest_train"] = scan.pixel_nearest["samples"][1].tolist()
    result = {
        "ckpt_path": source.ckpt_path,
        "samples": None if source.samples is None else str(source.samples),
        "generation": samples.info,
        "dataset": dataset_cfg.get("_target_"),
        "train_split": cfg.train_split,
        "heldout_split": cfg.heldout_split,
        "num_samples": len(samples.images),
        "num_train": num_train,
        "num_heldout": num_heldout,
        **extractor.describe(),
        "structure_size": None if scan.structure is None else cfg.structure_size,
        "features_from_cache": {"train": scan.features_from_cache, "heldout": heldout_cached},
        "seed": cfg.seed,
        "verdict": {"copying_suspected": suspected, "reasons": reasons, "rule": RULE},
        **stats,
        "pixels": pixels,
        "closest_pairs": pairs,
        "per_sample": per_sample,
        "notes": notes,
    }
    picture = closest_pairs_picture(pair_samples, pair_train, _captions(pairs))
    markdown = audit_markdown(result)
    out = Path(cfg.out_dir)
    save_png(picture, out / "closest_pairs.png")
    with atomic_open(out / "audit.md", "w", encoding="utf-8") as f:
        f.write(markdown)
    write_json(out / "audit.json", result)
    log.info("copying suspected: %s %s; wrote %s", suspected, reasons, out / "audit.json")
    return result


@hydra.main(version_base="1.3", config_path="../../conf", config_name="audit")
@readable_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point; missing or bad inputs exit non-zero with one line."""
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    audit(cfg)


if __name__ == "__main__":
    main()
