"""Conditional fidelity: do generated images follow the label maps they were conditioned on?

A deterministic segmenter recovers the label map of a phantom image from its intensities (every structure of
the phantoms of :mod:`motfm.data.phantom` has its own mean intensity), and the Dice overlap between the
recovered map and the conditioning mask scores how faithfully a mask-conditioned sample follows its mask.
Segmenting a real phantom image recovers its own mask with a mean Dice above 0.8 and a different sample's
mask with a clearly lower Dice, which calibrates the score.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from motfm.data.phantom import BRAIN_LEVELS, ECHO_LEVELS_DB, echo_geometry, echo_image_to_db


def dice_per_label(
    pred: torch.Tensor, target: torch.Tensor, num_labels: int, ignore_background: bool = True
) -> torch.Tensor:
    """Dice overlap of each label, per sample.

    ``Dice = 2 |P ∩ T| / (|P| + |T|)`` for the voxel sets ``P`` and ``T`` of one label; by convention it is
    1 when the label is absent from both ``pred`` and ``target`` (nothing to find, nothing found).

    Args:
        pred: predicted label map, integer ``[B, 1, *spatial]`` (or ``[B, *spatial]``).
        target: reference label map of the same shape.
        num_labels: number of label values ``L`` (labels are ``0 .. L-1``).
        ignore_background: leave out label 0.

    Returns:
        float32 ``[B, L - 1]`` (``[B, L]`` when ``ignore_background`` is False), column ``k`` for label
        ``k + 1`` (resp. ``k``).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred, target = pred.reshape(pred.shape[0], -1), target.reshape(target.shape[0], -1)
    scores = []
    for label in range(1 if ignore_background else 0, num_labels):
        p, t = pred == label, target == label
        overlap = (p & t).sum(1).float()
        total = (p.sum(1) + t.sum(1)).float()
        scores.append(torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total)))
    return torch.stack(scores, 1)


def mean_dice(
    pred: torch.Tensor, target: torch.Tensor, num_labels: int, ignore_background: bool = True
) -> float:
    """Mean of :func:`dice_per_label` over samples and labels (same arguments), as a float."""
    return float(dice_per_label(pred, target, num_labels, ignore_background).mean())


def _mode_filter(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Replace each label by the most frequent one in its 3x3 neighbourhood: ``[B, 1, H, W]``."""
    one_hot = F.one_hot(labels[:, 0], num_labels).movedim(-1, 1).float()
    counts = F.avg_pool2d(one_hot, 3, stride=1, padding=1, count_include_pad=False)
    return counts.argmax(1, keepdim=True)


# The mean log-power of the phantom's gamma speckle (shape ECHO_COMPOUNDING = 2, unit mean) in dB:
# 10 / ln(10) * (digamma(2) - ln 2).
_ECHO_SPECKLE_BIAS_DB = -1.17
_ECHO_BANDS = (  # (structure, label), from dark to bright
    ("lv_cavity", 1),
    ("left_atrium", 3),
    ("right_heart", 0),
    ("tissue", 0),
    ("myocardium", 2),
)


def _median_filter2d(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Median over ``kernel x kernel`` windows of ``[B, 1, H, W]`` (reflect padding)."""
    h, w = x.shape[-2:]
    patches = F.unfold(F.pad(x, [kernel // 2] * 4, mode="reflect"), kernel)
    return patches.median(1).values.reshape(x.shape[0], 1, h, w)


def segment_echo_phantom(images: torch.Tensor) -> torch.Tensor:
    """Recover the label map of echo phantom images from their intensities.

    The image is mapped back to dB, averaged down to at most 64 x 64 pixels, 3 x 3 median filtered (which
    tames the speckle but keeps edges), compensated for the known attenuation, classified by the nearest
    structure level of :data:`motfm.data.phantom.ECHO_LEVELS_DB`, cleaned by two passes of a 3 x 3 majority
    filter, brought back to the input size and restricted to the sector.

    Args:
        images: float ``[B, 1, S, S]`` in [-1, 1] (phantom images or generated ones), ``S >= 16``.

    Returns:
        int64 ``[B, 1, S, S]`` with values 0 (background), 1 (LV cavity), 2 (myocardium), 3 (left atrium).
    """
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise ValueError(f"expected square images [B, 1, S, S], got {tuple(images.shape)}")
    size = images.shape[-1]
    _, _, sector, loss_db = echo_geometry(size)
    sector_t = torch.tensor(sector, device=images.device)[None, None]
    loss_t = torch.tensor(loss_db, device=images.device, dtype=torch.float32)[None, None]
    db = echo_image_to_db(images.float())
    factor = max(1, size // 64)
    if factor > 1:
        db, loss_t = F.avg_pool2d(db, factor, ceil_mode=True), F.avg_pool2d(loss_t, factor, ceil_mode=True)
    compensated = _median_filter2d(db, 3) - loss_t - _ECHO_SPECKLE_BIAS_DB
    levels = torch.tensor([ECHO_LEVELS_DB[name] for name, _ in _ECHO_BANDS], device=images.device)
    band = torch.bucketize(compensated, (levels[1:] + levels[:-1]) / 2)
    labels = torch.tensor([label for _, label in _ECHO_BANDS], device=images.device)[band]
    labels = _mode_filter(_mode_filter(labels, 4), 4)
    if factor > 1:
        labels = labels.repeat_interleave(factor, 2).repeat_interleave(factor, 3)[..., :size, :size]
    return labels * sector_t


def segment_brain_phantom(volumes: torch.Tensor) -> torch.Tensor:
    """Recover the tumour label map of brain phantom volumes from their intensities.

    Voxels well inside the head (at least ``max(3, 5 S / 64)`` voxels from the black background for a side
    ``S``, which excludes the bright skull at any size) are classified by intensity as enhancing rim (brighter
    than edema) or edema (between brain and rim levels of :data:`motfm.data.phantom.BRAIN_LEVELS`); the
    non-enhancing core is what the rim encloses.
    The result is reduced to the largest connected tumour (labels 1-3 together).

    Args:
        volumes: float ``[B, 1, D, H, W]`` in [-1, 1].

    Returns:
        int64 ``[B, 1, D, H, W]`` with values 0 (background), 1 (edema), 2 (non-enhancing core),
        3 (enhancing rim).
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"expected volumes [B, 1, D, H, W], got {tuple(volumes.shape)}")
    values = ((volumes[:, 0].detach().float().cpu() + 1) / 2).numpy()
    edema_min = (BRAIN_LEVELS["brain"] + BRAIN_LEVELS["edema"]) / 2
    rim_min = (BRAIN_LEVELS["edema"] + BRAIN_LEVELS["rim"]) / 2
    ball = ndimage.generate_binary_structure(3, 1)
    # The skull is ~3 voxels thick at 64^3 and blurred: erode past it in proportion to the side, not into the
    # tumour (its rim stays ~2 voxels inside the skull at 64^3).
    erosion = max(3, round(5 * max(values.shape[1:]) / 64))
    out = np.zeros(values.shape, dtype=np.int64)
    for i, v in enumerate(values):
        head = ndimage.binary_fill_holes(v > BRAIN_LEVELS["csf"] / 2)
        interior = ndimage.binary_erosion(head, ball, iterations=erosion)
        rim = interior & (v >= rim_min)
        enclosed = ndimage.binary_fill_holes(rim)
        labels = np.where(rim, 3, np.where(enclosed, 2, np.where(interior & (v >= edema_min), 1, 0)))
        components, count = ndimage.label(labels > 0)
        if count:
            largest = 1 + int(np.bincount(components.ravel())[1:].argmax())
            out[i] = np.where(components == largest, labels, 0)
    return torch.from_numpy(out[:, None]).to(volumes.device)
