"""The downstream networks: a segmenter (MONAI's ``BasicUNet``) and a small classification CNN.

The segmenter is MONAI's ``BasicUNet`` (a plain two-convolution-per-level UNet with instance norm and leaky
ReLU, the field's standard baseline), installed with the ``[downstream]`` extra. The classifier is the
suite's :class:`~motfm.metrics.phantom_classifier.PhantomClassifier` architecture (four strided convolutions,
a coarse pooled layout and a linear head), here trained afresh on each data regime.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from motfm.metrics.phantom_classifier import PhantomClassifier

MONAI_HINT = "the downstream segmenter needs MONAI: pip install -e '.[downstream]'"


def require_monai() -> None:
    """Raise one clear line when MONAI is not installed."""
    try:
        import monai  # noqa: F401
    except ImportError as err:
        raise ImportError(MONAI_HINT) from err


def build_segmenter(
    spatial_dims: int, num_labels: int, features: Sequence[int], seed: int, in_channels: int = 1
) -> nn.Module:
    """MONAI ``BasicUNet`` ``[B, C, *spatial] -> [B, L, *spatial]`` logits, weights drawn from ``seed``.

    Args:
        spatial_dims: 2 or 3.
        num_labels: label values ``L`` (background included).
        features: the six widths of ``BasicUNet`` (five encoder levels and the last decoder level).
        seed: seed of the initial weights (the global random state is left alone).
        in_channels: image channels ``C``.

    Returns:
        The network in training mode.
    """
    require_monai()
    from monai.networks.nets import BasicUNet

    if len(features) != 6:
        raise ValueError(f"BasicUNet needs six feature widths, got {list(features)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BasicUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_labels,
            features=tuple(int(f) for f in features),
        )


def build_classifier(
    spatial_dims: int, num_classes: int, width: int, input_size: int | None, seed: int
) -> PhantomClassifier:
    """A :class:`PhantomClassifier` ``[B, 1, *spatial] -> [B, K]`` logits, weights drawn from ``seed``.

    Args:
        spatial_dims: 2 or 3.
        num_classes: classes ``K``.
        width: channels of the first convolution.
        input_size: side the images are area-averaged down to (``None``: the classifier's default).
        seed: seed of the initial weights (the global random state is left alone).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PhantomClassifier(spatial_dims, num_classes, width, input_size)
