"""Seeded training loops of the downstream segmenter and classifier.

Every random draw has its own stream derived from the replicate's seed (:func:`motfm.flow.solvers.seed_for`):
the initial weights, the batch order (reshuffled every pass) and the augmentation, so a run is a pure function
of its items, settings and seed, and reproduces bit for bit on the CPU with the same number of threads. A
fixed number of optimiser steps (not epochs) is used in every regime, so small and large training sets get the
same compute; the last weights are kept (no model selection on test data). AdamW (Loshchilov & Hutter 2019)
with a linear warm-up and a cosine decay (:func:`lr_factor`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motfm.downstream.augment import Augment, augment
from motfm.downstream.items import Items
from motfm.downstream.nets import build_classifier, build_segmenter
from motfm.flow.solvers import seed_for

# Offsets of the random streams of one seed: initial weights, batch order, augmentation.
_INIT, _ORDER, _AUGMENT = 0, 1, 2
# Each task draws from its own block of streams, so the segmenter and the classifier of one seed differ.
_SEGMENTER, _CLASSIFIER = 0, 16


@dataclass(frozen=True)
class TrainSettings:
    """How a downstream network is trained.

    Attributes:
        steps: optimiser steps (the same in every regime).
        batch_size: items per step.
        lr: peak learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        warmup: share of the steps spent warming up.
        augment: the augmentation of every batch.
    """

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    warmup: float = 0.1
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 < self.warmup < 1:
            raise ValueError(f"training needs steps, batch_size >= 1, lr > 0 and 0 < warmup < 1, got {self}")


def batch_indices(
    num_items: int, steps: int, batch_size: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """``steps`` batches of item indices: passes over a fresh permutation each, a batch may span two passes.

    Args:
        num_items: items to draw from (> 0).
        steps: batches to yield.
        batch_size: indices per batch.
        generator: the order's random stream.

    Yields:
        int64 ``[batch_size]`` (with repeats only when ``batch_size > num_items``).
    """
    if num_items < 1:
        raise ValueError("cannot train on zero items")
    pool = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while pool.numel() < batch_size:
            pool = torch.cat([pool, torch.randperm(num_items, generator=generator)])
        yield pool[:batch_size]
        pool = pool[batch_size:]


def lr_factor(step: int, steps: int, warmup: float) -> float:
    """The learning rate of optimiser step ``step`` (0-based) over the peak: a linear warm-up over the first
    ``max(1, round(warmup * steps))`` steps, then a cosine decay to 0 at step ``steps``."""
    ramp = max(1, round(warmup * steps))
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1 + math.cos(math.pi * (step - ramp) / max(1, steps - ramp)))


def fit(
    net: nn.Module,
    items: Items,
    settings: TrainSettings,
    seed: int,
    loss_fn: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor],
) -> dict[str, Any]:
    """Train ``net`` in place on ``items``.

    Args:
        net: the network (its weights already drawn), on the device to train on; the items stay on the CPU
            and each augmented batch is moved there.
        items: the training items.
        settings: steps, batch, optimiser and augmentation.
        seed: the seed of the order and augmentation streams (derive it with :func:`seed_for`).
        loss_fn: ``loss_fn(net, images, masks, labels) -> scalar`` on an augmented batch.

    Returns:
        ``{"steps", "seconds", "loss_first", "loss_last"}``: the mean loss of the first and last tenth of the
        steps, and the wall-clock time.
    """
    order = torch.Generator().manual_seed(seed_for(seed, _ORDER))
    draws = torch.Generator().manual_seed(seed_for(seed, _AUGMENT))
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, settings.steps, settings.warmup)
    )
    device = next(net.parameters()).device
    net.train()
    losses = []
    t0 = time.perf_counter()
    for index in batch_indices(len(items), settings.steps, settings.batch_size, order):
        images, masks = augment(items.images[index], items.masks[index], settings.augment, draws)
        loss = loss_fn(net, images.to(device), masks.to(device), items.labels[index].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    tenth = max(1, len(losses) // 10)
    return {
        "steps": settings.steps,
        "seconds": time.perf_counter() - t0,
        "loss_first": sum(losses[:tenth]) / tenth,
        "loss_last": sum(losses[-tenth:]) / tenth,
    }


def segmentation_loss() -> Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]:
    """Cross-entropy plus the soft Dice of the foreground labels (MONAI ``DiceCELoss``; Milletari et al.
    2016)."""
    from monai.losses import DiceCELoss

    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)

    def loss(net: nn.Module, images: Tensor, masks: Tensor, labels: Tensor) -> Tensor:
        return dice_ce(net(images), masks)

    return loss


def classification_loss(net: nn.Module, images: Tensor, masks: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the class logits."""
    return F.cross_entropy(net(images), labels)


def train_segmenter(
    items: Items,
    num_labels: int,
    features: list[int],
    settings: TrainSettings,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Draw a segmenter from ``seed`` and train it on ``items`` on ``device``; returns it (eval mode) and
    :func:`fit`'s record."""
    base = seed_for(seed, _SEGMENTER)
    dims, channels = items.images.ndim - 2, items.images.shape[1]
    net = build_segmenter(dims, num_labels, features, seed_for(base, _INIT), channels).to(device)
    return net, fit(net, items, settings, base, segmentation_loss())


def train_classifier(
    items: Items,
    num_classes: int,
    width: int,
    input_size: int | None,
    settings: TrainSettings,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Draw a classifier from ``seed`` and train it on ``items`` on ``device``; returns it (eval mode) and
    :func:`fit`'s record."""
    base = seed_for(seed, _CLASSIFIER)
    dims = items.images.ndim - 2
    net = build_classifier(dims, num_classes, width, input_size, seed_for(base, _INIT)).to(device)
    return net, fit(net, items, settings, base, classification_loss)
