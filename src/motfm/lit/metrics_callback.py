"""Distribution metrics during training: FID / KID (and Dice on phantom mask models) of EMA samples.

:class:`FeatureDistances` is a ``torchmetrics.Metric`` whose states are the lists of real and generated
features with ``dist_reduce_fx="cat"``: every process adds the features of its own shard and torchmetrics
gathers all of them before :meth:`FeatureDistances.compute`, so FID (Heusel et al. 2017) and KID
(Bińkowski et al. 2018) use every sample of every process, not only rank 0's. :class:`MetricsCallback`
drives it: every ``every_n_epochs`` validation epochs each process generates its share ``rank::world_size``
of a fixed set of sample indices with the EMA weights (sample ``i`` depends only on ``(seed, i)``, so the set
is the same whatever the number of processes), and the values are logged as ``val/fid@steps=K``,
``val/kid@steps=K`` (and ``val/dice@steps=K``) through ``pl_module.log``, hence to every logger (W&B by
default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric
from torchmetrics.utilities import dim_zero_cat

from motfm.metrics.extractors import FeatureExtractor
from motfm.metrics.fidelity import dice_per_label
from motfm.metrics.frechet import fid_from_features
from motfm.metrics.kernels import kid
from motfm.metrics.report import build_extractor, phantom_segmenter


class FeatureDistances(Metric):
    """FID and KID between the real and generated features added on every process.

    Args:
        kid_subsets: KID subsets.
        kid_subset_size: rows per KID subset (clipped to the smaller set).
        seed: seed of the KID subset draw.
        **kwargs: ``torchmetrics.Metric`` options (e.g. ``dist_sync_fn``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(
        self, kid_subsets: int = 50, kid_subset_size: int = 1000, seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.kid_subsets, self.kid_subset_size, self.seed = kid_subsets, kid_subset_size, seed
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        """Add features ``[B, F]`` of real (``real=True``) or generated images."""
        if features.ndim != 2:
            raise ValueError(f"features must be [B, F], got shape {tuple(features.shape)}")
        (self.real_features if real else self.fake_features).append(features.detach().float())

    def compute(self) -> dict[str, Tensor]:
        """``{"fid", "kid", "kid_std"}`` over all gathered features (float64 scalars)."""
        real, fake = dim_zero_cat(self.real_features).cpu(), dim_zero_cat(self.fake_features).cpu()
        generator = torch.Generator().manual_seed(self.seed)
        kid_mean, kid_std = kid(real, fake, self.kid_subsets, self.kid_subset_size, generator=generator)
        values = {"fid": fid_from_features(real, fake), "kid": kid_mean, "kid_std": kid_std}
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}


class MetricsCallback(L.Callback):
    """Every ``every_n_epochs`` validation epochs, score EMA samples of fixed seeds against real images.

    Conditional models are conditioned on the labels / masks of the ``split`` items (sample ``i`` on item
    ``i mod len(split)``). On the embedded phantoms, samples of mask-conditional models are also segmented
    and compared with their masks (mean Dice over samples and foreground labels).

    Args:
        every_n_epochs: period in validation epochs (epoch 0 included, as :class:`SampleGrid`).
        num_samples: generated images per evaluation (shared out over the processes).
        steps: sampler steps; each value gives its own metrics.
        sampler: a sampler of the model's method.
        seed: sampling seed (the same noise every time, so values are comparable across epochs).
        guidance_scale: classifier-free guidance weight for class-conditional models.
        extractor: registered feature extractor (a 2D one scores volumes through 2.5D slices).
        extractor_kwargs: its constructor arguments.
        slices_2p5d: ``num_slices`` / ``extent`` of the 2.5D wrapper.
        split: the real images' split of the datamodule.
        num_real: real images used (default: the whole split).
        batch_size: images per generation / feature batch.
        kid_subsets: KID subsets.
        kid_subset_size: rows per KID subset.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 64,
        steps: Sequence[int] = (1, 10),
        sampler: str = "euler",
        seed: int = 0,
        guidance_scale: float = 1.0,
        extractor: str = "inception_bundled",
        extractor_kwargs: dict[str, Any] | None = None,
        slices_2p5d: dict[str, Any] | None = None,
        split: str = "val",
        num_real: int | None = None,
        batch_size: int = 32,
        kid_subsets: int = 50,
        kid_subset_size: int = 1000,
    ) -> None:
        if every_n_epochs < 1 or num_samples < 2 or not steps:
            raise ValueError(
                f"need every_n_epochs >= 1, num_samples >= 2 and some steps, got {every_n_epochs}, "
                f"{num_samples}, {list(steps)}"
            )
        self.every_n_epochs, self.num_samples, self.steps = (
            every_n_epochs,
            num_samples,
            [int(s) for s in steps],
        )
        self.sampler, self.seed, self.guidance_scale = sampler, seed, guidance_scale
        self.extractor_name, self.extractor_kwargs = extractor, dict(extractor_kwargs or {})
        self.slices_2p5d = dict(slices_2p5d or {})
        self.split, self.num_real, self.batch_size = split, num_real, batch_size
        self.distances = {k: FeatureDistances(kid_subsets, kid_subset_size, seed) for k in self.steps}
        self.dice = {k: MeanMetric() for k in self.steps}
        self.extractor: FeatureExtractor | None = None
        self._real_shard: Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        """Build the extractor up front, so that a missing one fails before training."""
        if self.extractor is None:
            spatial_dims = pl_module.spec.spatial_dims
            self.extractor = build_extractor(
                self.extractor_name, spatial_dims, self.extractor_kwargs, self.slices_2p5d
            )

    def _shard(self, trainer: L.Trainer, n: int) -> list[int]:
        return list(range(trainer.global_rank, n, trainer.world_size))

    def _features(self, images: Tensor, device: torch.device) -> Tensor:
        return self.extractor.extract(images, self.batch_size).to(device)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Generate this process's shard, gather the features, compute and log the metrics."""
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        device = pl_module.device
        self.extractor.to(device)
        ds = trainer.datamodule.dataset(self.split)
        if self._real_shard is None:
            n_real = len(ds) if self.num_real is None else min(self.num_real, len(ds))
            real = torch.stack([ds[i]["image"] for i in self._shard(trainer, n_real)])
            self._real_shard = self._features(real, device).cpu()
        need_label, need_mask = pl_module.net.num_classes > 0, pl_module.net.num_mask_labels > 0
        segmenter = phantom_segmenter(type(ds)) if need_mask else None
        indices = self._shard(trainer, self.num_samples)
        for k in self.steps:
            distances, dice = self.distances[k].to(device), self.dice[k].to(device)
            distances.update(self._real_shard.to(device), real=True)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                items = [ds[i % len(ds)] for i in batch]
                labels = torch.stack([s["label"] for s in items]).to(device) if need_label else None
                masks = torch.stack([s["mask"] for s in items]).to(device) if need_mask else None
                images = pl_module.generate(
                    batch, self.seed, self.sampler, k, labels, masks, self.guidance_scale
                ).x.float()
                distances.update(self._features(images, device), real=False)
                if segmenter is not None:
                    scores = dice_per_label(segmenter(images), masks, pl_module.net.num_mask_labels)
                    dice.update(scores.mean(1).to(device))
            values = distances.compute()
            pl_module.log(f"val/fid@steps={k}", values["fid"].float().to(device), sync_dist=True)
            pl_module.log(f"val/kid@steps={k}", values["kid"].float().to(device), sync_dist=True)
            distances.reset()
            if segmenter is not None:
                pl_module.log(f"val/dice@steps={k}", dice.compute().float(), sync_dist=True)
                dice.reset()
