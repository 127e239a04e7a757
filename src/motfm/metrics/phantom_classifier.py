"""A small CNN that tells the classes of the embedded phantoms apart, to score class-conditional samples.

The label accuracy of class-conditioned samples (the share of samples a classifier trained on real images
assigns to the class they were conditioned on) is the "classification accuracy score" idea of Ravuri &
Vinyals 2019 ("Classification Accuracy Score for Conditional Generative Models") turned around: a fixed
classifier of real data judges the generated data. For the echo phantom the classes are view x phase
(2CH/4CH x ED/ES, 4 classes), for the brain phantom tumour-size classes.

The classifier trains deterministically (a fixed seed for the weights and the batch order) on the first
``num_train`` images of the phantom's ``train`` split, which are the model's own training images (phantom
sample ``i`` of a split depends only on the dataset seed, the split name and ``i``; more are generated when
the training run used fewer), and reports its accuracy on the first ``num_val`` images of the ``test``
split. It is cached as a plain ``torch.save`` state dict under ``<cache_dir>/phantom_classifier/``, keyed by
a hash of the dataset configuration (sample counts excluded) and the training settings, and loaded back with
``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from motfm.data.base import MotfmDataset
from motfm.io.atomic import atomic_path
from motfm.metrics.report import config_hash, phantom_segmenter

log = logging.getLogger(__name__)

_FORMAT = 1


class PhantomClassifier(nn.Module):
    """Area downsampling to ``input_size`` per axis, four 3x3 convolutions (strides 1, 2, 2, 2) with GroupNorm
    and SiLU, a 4x4(x4) average pool and a linear head: ``[B, 1, *spatial]`` in [-1, 1] -> logits ``[B, K]``.

    The pooled map keeps a coarse layout (the echo views differ in where the right heart lies).

    Args:
        spatial_dims: 2 or 3.
        num_classes: number of classes ``K``.
        width: channels of the first convolution (doubled twice).
        input_size: side the images are averaged down to when larger (default 32 in 2D, 16 in 3D).
    """

    def __init__(
        self, spatial_dims: int, num_classes: int, width: int = 16, input_size: int | None = None
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        chans = (1, width, 2 * width, 4 * width, 4 * width)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [
                conv(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1),
                nn.GroupNorm(4, c_out),
                nn.SiLU(),
            ]
        self.body = nn.Sequential(*layers, pool(4))
        self.head = nn.Linear(chans[-1] * 4**spatial_dims, num_classes)
        self.spatial_dims, self.num_classes, self.width = spatial_dims, num_classes, width
        self.input_size = input_size or (32 if spatial_dims == 2 else 16)
        self.val_accuracy: float | None = None

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 1, *spatial]`` -> logits ``[B, K]``."""
        if images.ndim != 2 + self.spatial_dims or images.shape[1] != 1:
            raise ValueError(
                f"expected [B, 1, *spatial] with {self.spatial_dims} spatial axes, got {tuple(images.shape)}"
            )
        x = images.float()
        if max(x.shape[2:]) > self.input_size:
            size = tuple(min(s, self.input_size) for s in x.shape[2:])
            x = F.interpolate(x, size=size, mode="area")
        return self.head(self.body(x).flatten(1))

    @torch.inference_mode()
    def predict(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Predicted classes ``[N]`` (int64, on the CPU) of ``[N, 1, *spatial]`` images."""
        self.eval()
        device = self.head.weight.device
        out = [
            self(images[i : i + batch_size].to(device)).argmax(1).cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(out)

    def label_accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Share of ``images`` ``[N, 1, *spatial]`` classified as their ``labels`` ``[N]``."""
        if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
            raise ValueError(
                f"need as many labels as images (> 0), got {labels.shape[0]} and {images.shape[0]}"
            )
        return float((self.predict(images) == labels.cpu()).float().mean())


def phantom_dataset(dataset_cfg: Mapping[str, Any], split: str, num_samples: int) -> MotfmDataset:
    """The ``split`` split of a phantom dataset configuration with its sample count set to ``num_samples``."""
    cfg = {**dict(dataset_cfg), "num_samples": {split: num_samples}, "_partial_": True}
    return instantiate(OmegaConf.create(cfg))(split=split)


def _stack(ds: MotfmDataset) -> tuple[Tensor, Tensor]:
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([s["image"] for s in items]), torch.stack([s["label"] for s in items])


def train_phantom_classifier(
    dataset_cfg: Mapping[str, Any],
    num_train: int = 512,
    num_val: int = 256,
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 3e-3,
    width: int = 16,
    input_size: int | None = None,
    seed: int = 0,
) -> PhantomClassifier:
    """Train a :class:`PhantomClassifier` on real phantom images, deterministically, on the CPU.

    AdamW with a cosine learning-rate decay over ``epochs`` epochs; the weights come from
    ``torch.manual_seed(seed)`` (in a forked RNG state, the global one is left alone) and the batch order from
    a private generator.

    Args:
        dataset_cfg: the phantom dataset configuration (the ``data.dataset`` section of a training config).
        num_train: training images (the first of the ``train`` split).
        num_val: held-out images (the first of the ``test`` split) for ``val_accuracy``.
        epochs: passes over the training images.
        batch_size: images per step.
        lr: peak learning rate.
        width: network width.
        input_size: side the images are averaged down to (see :class:`PhantomClassifier`).
        seed: seed of the weights and the batch order.

    Returns:
        The classifier in eval mode, with ``val_accuracy`` set.
    """
    if phantom_segmenter(dataset_cfg.get("_target_")) is None:
        raise ValueError(
            f"the phantom classifier needs a motfm.data.phantom dataset, got {dataset_cfg.get('_target_')}"
        )
    train_ds = phantom_dataset(dataset_cfg, "train", num_train)
    images, labels = _stack(train_ds)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PhantomClassifier(train_ds.spec.spatial_dims, train_ds.spec.num_classes, width, input_size)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-num_train // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(num_train, generator=generator)
        for i in range(0, num_train, batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    model.val_accuracy = model.label_accuracy(*_stack(phantom_dataset(dataset_cfg, "test", num_val)))
    return model


def load_or_train(
    dataset_cfg: Mapping[str, Any],
    cache_dir: str | os.PathLike[str] | None,
    device: torch.device | str = "cpu",
    **train_kwargs: Any,
) -> PhantomClassifier:
    """The classifier of a phantom dataset: from the cache, else trained (and cached).

    Args:
        dataset_cfg: the phantom dataset configuration.
        cache_dir: the cache root; the file is ``<cache_dir>/phantom_classifier/<Dataset>-<hash>.pt``
            (``None``: train without caching).
        device: where the returned classifier lives.
        **train_kwargs: settings of :func:`train_phantom_classifier` (part of the cache key).

    Returns:
        The classifier in eval mode, with ``val_accuracy`` (held-out accuracy on real images) set.
    """
    key_cfg = {k: v for k, v in dict(dataset_cfg).items() if k not in ("num_samples", "_partial_")}
    key = config_hash({"format": _FORMAT, "dataset": key_cfg, "train": dict(sorted(train_kwargs.items()))})
    name = str(dataset_cfg.get("_target_", "dataset")).rsplit(".", 1)[-1]
    path = Path(cache_dir) / "phantom_classifier" / f"{name}-{key}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        meta = saved["meta"]
        model = PhantomClassifier(
            meta["spatial_dims"], meta["num_classes"], meta["width"], meta["input_size"]
        )
        model.load_state_dict(saved["state_dict"])
        model.val_accuracy = meta["val_accuracy"]
        return model.eval().to(device)
    model = train_phantom_classifier(dataset_cfg, **train_kwargs)
    log.info("phantom classifier (%s): held-out accuracy %.3f", name, model.val_accuracy)
    if path is not None:
        meta = {
            "spatial_dims": model.spatial_dims,
            "num_classes": model.num_classes,
            "width": model.width,
            "input_size": model.input_size,
            "val_accuracy": model.val_accuracy,
        }
        with atomic_path(path) as tmp:
            torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    return model.to(device)
