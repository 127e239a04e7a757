"""Evaluate a model or a set of samples against real data:
``python -m motfm.evaluate ckpt_path=... steps=[1,2,5,10] solvers=[euler,midpoint] num_samples=256`` or
``python -m motfm.evaluate samples=.../samples.npz``.

With ``ckpt_path`` alone, samples are generated on the fly (:func:`motfm.sample.generate_batch`) for every
solver x steps pair, all from the same seeded noise; with ``samples`` the samples written by
``motfm.sample`` are scored (a ``samples.npz`` or its folder, or a folder of ``volumes/*.nii.gz``). The
reference set is the ``ref_split`` split of the checkpoint's training data (its data config is stored in the
checkpoint; ``data_overrides`` may change e.g. the root folder); conditional models are conditioned on the
labels / masks of the reference items, sample ``i`` on item ``i mod num_ref``.

Metrics of each generated set (one table row per solver / steps):

- ``fid``, ``kid`` (``kid_std``): Fréchet (Heusel et al. 2017) and kernel (Bińkowski et al. 2018) distances on
  the features of ``extractor`` (TF-FID InceptionV3 by default; volumes through 2.5D slices), plus
  ``mmd_rbf`` for volumes (Gaussian-RBF MMD^2, Gretton et al. 2012, the "3D MMD"); ``cmmd`` (Jayasumana et al.
  2024) when the CLIP extractor is available, else a note; ``is`` (Salimans et al. 2016) when the extractor
  has a classifier head;
- ``ms_ssim``: mean MS-SSIM of random pairs of generated images (diversity, Odena et al. 2017; the reference
  row gives the value of the real set); ``ssim_paired``: SSIM of mask-conditioned samples against the real
  image whose mask conditioned them;
- on the embedded phantoms: ``dice`` (mean and per label) of the deterministic segmentation of
  mask-conditioned samples against their masks (``dice_vs_random_real`` for models without masks:
  against the masks of random real items, a chance baseline), and ``label_acc`` of class-conditioned samples
  by :mod:`motfm.metrics.phantom_classifier`;
- ``nfe``, ``seconds`` and ``images_per_s`` of the generation.

Writes ``metrics.json`` (every value with the extractor name, weights hash and the numbers of real and
generated images) and ``metrics.md`` (the table) into ``out_dir``, atomically, and only when everything
succeeded. A missing feature extractor stops the run with its message before any work.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import nibabel as nib
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

from motfm.checkpoint import read_checkpoint
from motfm.cli import readable_errors
from motfm.conditions import Conditions
from motfm.data.base import DataSpec
from motfm.loading import LoadedModel, load_model
from motfm.metrics.features import ExtractorUnavailable, FeatureExtractor
from motfm.metrics.inception_score import inception_score
from motfm.metrics.kernels import cmmd
from motfm.metrics.phantom_classifier import PhantomClassifier, load_or_train
from motfm.metrics.report import (
    build_extractor,
    dice_metrics,
    distribution_metrics,
    extract_features,
    has_logits,
    markdown_table,
    phantom_segmenter,
    reference_features,
    write_report,
)
from motfm.metrics.ssim import intra_set_ms_ssim, paired_ssim
from motfm.runtime import pick_device, resolve_precision
from motfm.sample import generate_batch, sampler_options

log = logging.getLogger(__name__)

_SAMPLE_NAME = re.compile(r"sample_(\d+)\.nii(\.gz)?$")


@dataclass
class Source:
    """What is evaluated and the training run it comes from.

    Attributes:
        config: the training configuration stored in the checkpoint.
        spec: the data description of the model.
        ckpt_path: the checkpoint.
        model: the loaded network (on-the-fly sampling), else ``None``.
        samples: the path of the sample files (``samples=`` input), else ``None``.
    """

    config: dict[str, Any]
    spec: DataSpec
    ckpt_path: str
    model: LoadedModel | None = None
    samples: Path | None = None

    @property
    def conditioning(self) -> list[str]:
        """The model's conditioning: any of ``class`` and ``mask``."""
        return list(self.config["model"].get("conditioning") or [])


@dataclass
class Reference:
    """The reference items: images ``[N, C, *spatial]``, labels ``[N]`` and masks ``[N, 1, *spatial]``."""

    images: Tensor
    labels: Tensor | None
    masks: Tensor | None
    affine: np.ndarray | None


@dataclass
class GeneratedSet:
    """One set of generated images with its conditions and how it was made."""

    images: Tensor
    indices: Tensor
    labels: Tensor | None
    masks: Tensor | None
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- inputs


def _sample_files(path: Path) -> tuple[Path | None, list[Path], Path]:
    """``(samples.npz or None, NIfTI volumes, folder holding sampling.json)`` of a ``samples=`` path."""
    if path.is_file() and path.suffix == ".npz":
        return path, [], path.parent
    if (path / "samples.npz").is_file():
        return path / "samples.npz", [], path
    folder = path / "volumes" if (path / "volumes").is_dir() else path
    volumes = sorted(p for p in folder.glob("sample_*.nii*") if _SAMPLE_NAME.search(p.name))
    if not volumes:
        raise FileNotFoundError(
            f"samples={path}: expected a samples.npz, a folder holding one, or a folder of "
            "volumes/sample_*.nii.gz"
        )
    return None, volumes, folder.parent if folder.name == "volumes" else folder


def resolve_source(cfg: DictConfig, device: torch.device) -> Source:
    """Load the checkpoint (and the model, for on-the-fly sampling) named by the config."""
    if cfg.samples is None:
        if cfg.ckpt_path is None:
            raise ValueError(
                "pass ckpt_path=<checkpoint> (sampling on the fly) or samples=<samples.npz or folder>"
            )
        model = load_model(cfg.ckpt_path, cfg.use_ema, cfg.get("model_overrides"), device)
        return Source(model.config, model.spec, str(cfg.ckpt_path), model=model)
    samples = Path(cfg.samples)
    ckpt_path = cfg.ckpt_path
    if ckpt_path is None:
        info_file = _sample_files(samples)[2] / "sampling.json"
        if info_file.is_file():
            ckpt_path = json.loads(info_file.read_text()).get("ckpt_path")
    if ckpt_path is None:
        raise ValueError(
            f"samples={samples}: no sampling.json naming their checkpoint; pass ckpt_path=<checkpoint> "
            "(its data config defines the reference set)"
        )
    meta = read_checkpoint(ckpt_path)["motfm"]
    return Source(meta["config"], DataSpec.from_dict(meta["data_spec"]), str(ckpt_path), samples=samples)


def data_config(cfg: DictConfig, source: Source) -> DictConfig:
    """The training data config of the checkpoint with ``data_overrides`` applied."""
    data_cfg = OmegaConf.create(source.config["data"])
    if cfg.get("data_overrides"):
        data_cfg = OmegaConf.merge(data_cfg, cfg.data_overrides)
    return data_cfg


def load_reference(data_cfg: DictConfig, split: str, num_ref: int | None) -> Reference:
    """The first ``num_ref`` (default: all) items of ``split``."""
    ds = instantiate(data_cfg).dataset(split)
    n = len(ds) if num_ref is None else min(int(num_ref), len(ds))
    if n < 2:
        raise ValueError(f"the {split!r} reference split needs at least 2 items, it has {len(ds)}")
    items = [ds[i] for i in tqdm(range(n), desc=f"real {split}", unit="item", leave=False)]
    labels = torch.stack([s["label"] for s in items]) if "label" in items[0] else None
    masks = torch.stack([s["mask"] for s in items]) if "mask" in items[0] else None
    affine = items[0].get("meta", {}).get("affine")
    return Reference(
        torch.stack([s["image"] for s in items]).float(),
        labels,
        masks,
        None if affine is None else np.asarray(affine, np.float64),
    )


def read_samples(source: Source) -> GeneratedSet:
    """The samples of a ``samples=`` input, with their conditions and the record of ``sampling.json``."""
    npz, volumes, folder = _sample_files(source.samples)
    info: dict[str, Any] = {"solver": "samples", "steps": None}
    if (folder / "sampling.json").is_file():
        record = json.loads((folder / "sampling.json").read_text())
        info = {k: record.get(k) for k in ("steps", "nfe", "seconds")}
        info["solver"] = record.get("sampler")
        info["images_per_s"] = record.get("samples_per_s")
    if npz is not None:
        with np.load(npz, allow_pickle=False) as data:
            images = torch.from_numpy(data["images"].astype(np.float32))
            indices = (
                torch.from_numpy(data["indices"]) if "indices" in data else torch.arange(images.shape[0])
            )
            labels = torch.from_numpy(data["labels"]).long() if "labels" in data else None
            masks = torch.from_numpy(data["masks"]).long() if "masks" in data else None
        return GeneratedSet(images, indices.long(), labels, masks, info)

    def read(path: Path) -> Tensor:
        return torch.from_numpy(np.asarray(nib.load(path).get_fdata(dtype=np.float32)))[None]

    indices = [int(_SAMPLE_NAME.search(p.name).group(1)) for p in volumes]
    images = torch.stack([read(p) for p in tqdm(volumes, desc="read volumes", leave=False)])
    mask_files = [
        p.with_name(p.name.replace(f"sample_{i:05d}", f"sample_{i:05d}_mask"))
        for p, i in zip(volumes, indices)
    ]
    masks = (
        torch.stack([read(p).round().long() for p in mask_files])
        if all(p.is_file() for p in mask_files)
        else None
    )
    return GeneratedSet(images, torch.tensor(indices), None, masks, info)


def generate_sets(cfg: DictConfig, source: Source, reference: Reference) -> Iterator[GeneratedSet]:
    """Yield a :class:`GeneratedSet` per solver x steps pair, generated on the fly."""
    model = source.model
    need_label, need_mask = model.net.num_classes > 0, model.net.num_mask_labels > 0
    conditions = Conditions(
        reference.labels if need_label else None,
        reference.masks if need_mask else None,
        f"data:{cfg.ref_split}",
        reference.affine,
    )
    objective = model.objective
    solvers = list(cfg.solvers or objective.default_samplers)
    for solver in solvers:
        objective.check_sampler(solver, int(cfg.steps[0]) if cfg.steps else None)
    options = sampler_options(cfg)
    precision = resolve_precision(cfg.precision, next(model.net.parameters()).device, model.spec.spatial_dims)
    for solver in solvers:
        for steps in list(cfg.steps) if objective.needs_steps(solver) else [None]:
            batches, seconds, nfe = [], 0.0, 0
            starts = range(0, cfg.num_samples, cfg.batch_size)
            for start in tqdm(starts, desc=f"sample {solver} steps={steps}", unit="batch", leave=False):
                indices = list(range(start, min(start + cfg.batch_size, cfg.num_samples)))
                images, nfe, batch_seconds = generate_batch(
                    model,
                    indices,
                    cfg.seed,
                    solver,
                    steps,
                    conditions,
                    cfg.guidance_scale,
                    precision.name,
                    options,
                )
                seconds += batch_seconds
                batches.append(images)
            indices_t = torch.arange(cfg.num_samples)
            labels, masks = conditions.for_indices(indices_t.tolist(), "cpu")
            info = {
                "solver": solver,
                "steps": steps,
                "nfe": nfe,
                "seconds": seconds,
                "images_per_s": cfg.num_samples / seconds if seconds > 0 else None,
            }
            yield GeneratedSet(torch.cat(batches), indices_t, labels, masks, info)


# ------------------------------------------------------------------------------------------------ metrics


class Scorer:
    """Everything that scores a generated set against the reference, built once per run.

    Args:
        cfg: the evaluation config.
        source: what is evaluated.
        data_cfg: the reference data config.
        reference: the reference items.
        extractor: the feature network.
        device: where networks run.
    """

    def __init__(
        self,
        cfg: DictConfig,
        source: Source,
        data_cfg: DictConfig,
        reference: Reference,
        extractor: FeatureExtractor,
        device: torch.device,
    ) -> None:
        self.cfg, self.source, self.reference, self.extractor = cfg, source, reference, extractor
        self.notes: list[str] = []
        self.spatial_dims = source.spec.spatial_dims
        dataset_cfg = OmegaConf.to_container(data_cfg.dataset, resolve=True)
        cache_dir = cfg.paths.cache_dir if cfg.cache_ref_stats else None
        self.real_features, self.real_stats, self.ref_from_cache = reference_features(
            extractor,
            lambda: reference.images,
            cache_dir,
            dataset_cfg,
            cfg.ref_split,
            reference.images.shape[0],
            cfg.feature_batch_size,
        )
        self.clip: FeatureExtractor | None = None
        self.real_clip: Tensor | None = None
        if cfg.cmmd:
            try:
                self.clip = build_extractor(
                    "clip", self.spatial_dims, cfg.clip_kwargs, cfg.slices_2p5d, device
                )
            except ExtractorUnavailable as err:
                self.note(f"CMMD omitted: the CLIP extractor is unavailable ({err})")
            else:
                self.real_clip = extract_features(
                    self.clip, reference.images, cfg.feature_batch_size, desc="clip: real"
                )
        if not has_logits(extractor):
            self.note(f"IS omitted: extractor {extractor.name} has no classifier head")
        target = dataset_cfg.get("_target_")
        self.segmenter = phantom_segmenter(target)
        self.classifier: PhantomClassifier | None = None
        if self.segmenter is None:
            self.note(f"Dice and label accuracy omitted: {target} is not an embedded phantom")
        elif "class" in source.conditioning:
            self.classifier = load_or_train(
                dataset_cfg, cfg.paths.cache_dir, device, **OmegaConf.to_container(cfg.phantom_classifier)
            )
        self.label_names = list(source.spec.mask_label_names) or [
            str(k) for k in range(source.spec.num_mask_labels)
        ]

    def note(self, text: str) -> None:
        """Record why a metric is missing (once)."""
        if text not in self.notes:
            self.notes.append(text)

    def reference_row(self) -> dict[str, Any]:
        """Metrics of the real reference set itself (the values a perfect model would reach)."""
        ref = self.reference
        g = torch.Generator().manual_seed(self.cfg.seed)
        row: dict[str, Any] = {"solver": f"real ({self.cfg.ref_split})", "num_real": ref.images.shape[0]}
        row["ms_ssim"] = intra_set_ms_ssim(ref.images, self.cfg.ms_ssim_pairs, generator=g)
        if self.segmenter is not None and ref.masks is not None:
            row.update(dice_metrics(self.segmenter, ref.images, ref.masks, self.label_names))
            n = ref.masks.shape[0]  # every item against another item's mask: a cyclic shift by 1..n-1
            shuffled = ref.masks.roll(int(torch.randint(1, n, (), generator=g)), 0)
            row["dice_vs_random_real"] = dice_metrics(
                self.segmenter, ref.images, shuffled, self.label_names, prefix="dice_vs_random_real"
            )["dice_vs_random_real"]
        if self.classifier is not None and ref.labels is not None:
            row["label_acc"] = self.classifier.label_accuracy(ref.images, ref.labels)
        return row

    def score(self, generated: GeneratedSet) -> dict[str, Any]:
        """The metrics of one generated set (see the module docstring)."""
        cfg, ref, fake = self.cfg, self.reference, generated.images
        n_ref = ref.images.shape[0]
        name = f"{generated.info.get('solver')} steps={generated.info.get('steps')}"
        row: dict[str, Any] = {**generated.info, "num_real": n_ref, "num_fake": fake.shape[0]}
        features = extract_features(self.extractor, fake, cfg.feature_batch_size, desc=f"features: {name}")
        row.update(
            distribution_metrics(
                self.real_features,
                features,
                self.real_stats,
                cfg.kid_subsets,
                cfg.kid_subset_size,
                cfg.seed,
                rbf_mmd=self.spatial_dims == 3,
            )
        )
        if self.clip is not None:
            row["cmmd"] = cmmd(
                self.real_clip, extract_features(self.clip, fake, cfg.feature_batch_size, desc="clip")
            )
        if has_logits(self.extractor):
            probs = extract_features(self.extractor, fake, cfg.feature_batch_size, kind="probs")
            row["is"], row["is_std"] = inception_score(probs, min(cfg.inception_score_splits, fake.shape[0]))
        g = torch.Generator().manual_seed(cfg.seed)
        row["ms_ssim"] = intra_set_ms_ssim(fake, cfg.ms_ssim_pairs, generator=g)
        paired = generated.indices % n_ref
        if generated.masks is not None:
            if ref.masks is not None and torch.equal(generated.masks, ref.masks[paired]):
                row["ssim_paired"] = paired_ssim(fake, ref.images[paired])
            else:
                self.note(
                    f"paired SSIM omitted: the samples' masks are not those of the {cfg.ref_split!r} items "
                    "(sample with cond_split equal to ref_split)"
                )
        if self.segmenter is not None:
            if generated.masks is not None:
                row.update(dice_metrics(self.segmenter, fake, generated.masks, self.label_names))
            elif ref.masks is not None:
                random_masks = ref.masks[torch.randint(0, n_ref, (fake.shape[0],), generator=g)]
                row.update(
                    dice_metrics(
                        self.segmenter, fake, random_masks, self.label_names, prefix="dice_vs_random_real"
                    )
                )
        if self.classifier is not None:
            if generated.labels is not None:
                row["label_acc"] = self.classifier.label_accuracy(fake, generated.labels)
            else:
                self.note("label accuracy omitted: the class labels of the samples are not stored")
        return row


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Table columns present in some row; per-label values of the random-mask baseline stay in the JSON."""
    order = [
        "solver",
        "steps",
        "nfe",
        "num_fake",
        "fid",
        "kid",
        "mmd_rbf",
        "cmmd",
        "is",
        "ms_ssim",
        "ssim_paired",
    ]
    per_label = sorted({k for r in rows for k in r if k.startswith("dice/")})
    order += ["dice", "dice_vs_random_real", *per_label, "label_acc", "seconds", "images_per_s"]
    return [c for c in order if any(c in r and r[c] is not None for r in rows)]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation as configured; returns the content of ``metrics.json``.

    Raises:
        ExtractorUnavailable: the feature extractor cannot be built (nothing is written then).
    """
    device = pick_device(cfg.device)
    source = resolve_source(cfg, device)
    extractor = build_extractor(
        cfg.extractor, source.spec.spatial_dims, cfg.extractor_kwargs, cfg.slices_2p5d, device
    )
    data_cfg = data_config(cfg, source)
    reference = load_reference(data_cfg, cfg.ref_split, cfg.num_ref)
    scorer = Scorer(cfg, source, data_cfg, reference, extractor, device)
    sets = [read_samples(source)] if source.samples is not None else generate_sets(cfg, source, reference)
    rows = []
    for generated in sets:
        row = scorer.score(generated)
        log.info("%s", {k: v for k, v in row.items() if not k.startswith("dice/")})
        rows.append(row)
    reference_row = scorer.reference_row()
    described = extractor.describe()
    for row in rows:
        row.update(described)
    result = {
        "ckpt_path": source.ckpt_path,
        "samples": None if source.samples is None else str(source.samples),
        "spatial_dims": source.spec.spatial_dims,
        "conditioning": source.conditioning,
        "dataset": data_cfg.dataset.get("_target_"),
        "ref_split": cfg.ref_split,
        "num_real": reference.images.shape[0],
        **described,
        "ref_features_from_cache": scorer.ref_from_cache,
        "seed": cfg.seed,
        "guidance_scale": cfg.guidance_scale,
        "notes": scorer.notes,
        "reference": reference_row,
        "results": rows,
    }
    columns = _columns([*rows, reference_row])
    lines = [
        f"# Evaluation of {source.ckpt_path if source.samples is None else source.samples}",
        "",
        f"Extractor `{extractor.name}` (weights {extractor.weights_hash}); "
        f"{reference.images.shape[0]} real images ({cfg.ref_split} split of "
        f"`{data_cfg.dataset.get('_target_')}`), seed {cfg.seed}.",
        "",
        markdown_table([*rows, reference_row], columns),
    ]
    lines += [f"- {note}" for note in scorer.notes]
    write_report(cfg.out_dir, result, "\n".join(lines) + "\n")
    log.info("wrote %s", Path(cfg.out_dir) / "metrics.json")
    return result


@hydra.main(version_base="1.3", config_path="../../conf", config_name="evaluate")
@readable_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point; bad input (a missing feature extractor too) exits with status 2 and one line."""
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    evaluate(cfg)


if __name__ == "__main__":
    main()
