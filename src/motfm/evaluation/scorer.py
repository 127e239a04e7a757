"""Scoring of generated sets against a reference set: :class:`Scorer` (built once per run: reference
features, optional CLIP, phantom segmenter and classifier) and the columns of the ``metrics.md`` table.
The metrics are listed in :mod:`motfm.evaluate`."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from motfm.evaluation.inputs import GeneratedSet, Reference, Source
from motfm.metrics.extractors import ExtractorUnavailable, FeatureExtractor
from motfm.metrics.frechet import feature_statistics, fid_bootstrap
from motfm.metrics.inception_score import inception_score
from motfm.metrics.kernels import cmmd
from motfm.metrics.manifold import manifold_metrics
from motfm.metrics.phantom_classifier import PhantomClassifier, load_or_train
from motfm.metrics.report import (
    build_extractor,
    dice_metrics,
    distribution_metrics,
    extract_features,
    has_logits,
    phantom_segmenter,
    reference_features,
)
from motfm.metrics.spectrum import spectrum_scores
from motfm.metrics.ssim import intra_set_ms_ssim, paired_ssim


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
        # the labels of the masks the segmenter is scored against: the real data's, not the model's
        self.label_names = list(reference.spec.mask_label_names) or [
            str(k) for k in range(reference.spec.num_mask_labels)
        ]

    def note(self, text: str) -> None:
        """Record why a metric is missing (once)."""
        if text not in self.notes:
            self.notes.append(text)

    def reference_row(self) -> dict[str, Any]:
        """Metrics of the real reference set itself (the values a perfect model would reach)."""
        ref = self.reference
        g = torch.Generator().manual_seed(self.cfg.seed)
        row: dict[str, Any] = {"sampler": f"real ({self.cfg.ref_split})", "num_real": ref.images.shape[0]}
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
        name = f"{generated.info.get('sampler')} steps={generated.info.get('steps')}"
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
        if cfg.get("fid_bootstrap", 0) > 0:
            stats = self.real_stats if self.real_stats is not None else feature_statistics(self.real_features)
            fids = fid_bootstrap(stats, features, int(cfg.fid_bootstrap), cfg.seed)
            row["fid_std"], row["fid_bootstrap_draws"] = float(fids.std(ddof=1)), int(cfg.fid_bootstrap)
        k_pr, k_dc = cfg.manifold_k.precision_recall, cfg.manifold_k.density_coverage
        if n_ref > max(k_pr, k_dc) and fake.shape[0] > k_pr:
            row.update(manifold_metrics(self.real_features, features, k_pr, k_dc))
        else:
            self.note(
                f"precision/recall (k={k_pr}) and density/coverage (k={k_dc}) omitted: they need more than "
                f"k real and generated images ({n_ref} real, {fake.shape[0]} generated)"
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
        row.update(spectrum_scores(ref.images, fake))
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


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Table columns present in some row; per-label values of the random-mask baseline stay in the JSON."""
    order = [
        "sampler",
        "steps",
        "nfe",
        "num_fake",
        "fid",
        "kid",
        "mmd_rbf",
        "cmmd",
        "is",
        "precision",
        "recall",
        "density",
        "coverage",
        "ms_ssim",
        "psd_hf_log_error",
        "psd_hf_ratio",
        "ssim_paired",
    ]
    per_label = sorted({k for r in rows for k in r if k.startswith("dice/")})
    order += ["dice", "dice_vs_random_real", *per_label, "label_acc", "seconds", "images_per_s"]
    return [c for c in order if any(c in r and r[c] is not None for r in rows)]
