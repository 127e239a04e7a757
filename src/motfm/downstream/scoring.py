"""Scores of the downstream networks on real test items: Dice per label and classification accuracy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from motfm.downstream.items import Items
from motfm.metrics.fidelity import dice_per_label


@torch.inference_mode()
def predict(net: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """The argmax over the network's output channels: label maps ``[N, 1, *spatial]`` of a segmenter, classes
    ``[N]`` of a classifier (int64, CPU); ``images`` (CPU) go to the network's device batch by batch."""
    net.eval()
    device = next(net.parameters()).device
    out = [
        net(images[i : i + batch_size].to(device)).argmax(1).cpu()
        for i in range(0, images.shape[0], batch_size)
    ]
    pred = torch.cat(out)
    return pred[:, None] if pred.ndim > 1 else pred


def segmentation_scores(net: nn.Module, test: Items, label_names: tuple[str, ...]) -> dict[str, float]:
    """Dice of each foreground label, averaged over the test items, and their mean (``"mean"``).

    A label absent from both the prediction and the reference of an item scores 1 for that item
    (:func:`motfm.metrics.fidelity.dice_per_label`).

    Args:
        net: the segmenter.
        test: real test items.
        label_names: names of the label values ``0 .. L-1`` (background first).

    Returns:
        ``{label name: Dice, ..., "mean": mean over the foreground labels}``.
    """
    dice = dice_per_label(predict(net, test.images), test.masks, len(label_names)).mean(0)
    scores = {name: float(d) for name, d in zip(label_names[1:], dice)}
    scores["mean"] = float(dice.mean())
    return scores


def accuracy(net: nn.Module, test: Items) -> float:
    """Share of the test items whose class the classifier predicts."""
    return float((predict(net, test.images) == test.labels).float().mean())
