"""The 3D head phantom with an MSD-style brain tumour (edema, non-enhancing core, enhancing rim)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from motfm.data.base import DataSpec, MotfmDataset
from motfm.data.phantom.common import check_index, sample_rng, split_length

BRAIN_MASK_LABELS = ("background", "edema", "non_enhancing_tumor", "enhancing_tumour")
# Mean intensities in [0, 1] (before the map to [-1, 1]); background is 0.
BRAIN_LEVELS = {
    "csf": 0.12,
    "core": 0.25,
    "cortex": 0.4,
    "brain": 0.47,
    "edema": 0.65,
    "skull": 0.85,
    "rim": 0.95,
}
BRAIN_FOV_MM = 192.0


@lru_cache(maxsize=4)
def _brain_axes(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in [-1, 1] along z, y, x, shaped ``[S,1,1]``, ``[1,S,1]``, ``[1,1,S]``."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    c.setflags(write=False)
    return c[:, None, None], c[None, :, None], c[None, None, :]


@lru_cache(maxsize=4)
def _texture_interpolation(size: int, coarse: int) -> np.ndarray:
    """Linear interpolation matrix ``[S, coarse]`` from a coarse grid to ``S`` samples (same extent)."""
    pos = np.clip((np.arange(size) + 0.5) * coarse / size - 0.5, 0, coarse - 1)
    low = np.minimum(np.floor(pos).astype(int), coarse - 2)
    weights = np.zeros((size, coarse), dtype=np.float32)
    weights[np.arange(size), low] = 1 - (pos - low)
    weights[np.arange(size), low + 1] = pos - low
    weights.setflags(write=False)
    return weights


def brain_affine(size: int) -> torch.Tensor:
    """Voxel-to-millimetre affine of :class:`BrainPhantom` volumes: isotropic, centred, ``[4, 4]`` float64.

    Voxel index ``(d, h, w)`` maps to ``affine @ (d, h, w, 1)``; the field of view is :data:`BRAIN_FOV_MM`.
    """
    spacing = BRAIN_FOV_MM / size
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] *= spacing
    affine[:3, 3] = -0.5 * (size - 1) * spacing
    return affine


class BrainPhantom(MotfmDataset):
    """A 3D head phantom with a brain tumour, labelled loosely after the MSD brain-tumour task.

    Each volume shows an ellipsoidal head (bright skull shell, grey textured brain, dark lateral ventricles,
    black background) with a tumour at a random position in the brain: a dark necrotic / non-enhancing core
    (label 2) inside a bright enhancing rim (label 3), surrounded by an edema halo (label 1); all other voxels
    are background (label 0). Classes are tumour sizes from small to large, assigned cyclically
    (sample ``i`` has class ``i % num_classes``).

    Args:
        split: split name (any string; it seeds the samples, so splits differ).
        size: volume side ``S`` (>= 16); volumes are ``[1, S, S, S]``.
        num_samples: number of samples, one count for every split or a dict per split.
        seed: non-negative base seed.
        num_classes: number of tumour-size classes (>= 1).
    """

    def __init__(
        self,
        split: str,
        size: int = 32,
        num_samples: dict[str, int] | int | None = None,
        seed: int = 0,
        num_classes: int = 2,
    ) -> None:
        if size < 16:
            raise ValueError(f"BrainPhantom: size must be >= 16, got {size}")
        if seed < 0:
            raise ValueError(f"BrainPhantom: seed must be >= 0, got {seed}")
        if num_classes < 1:
            raise ValueError(f"BrainPhantom: num_classes must be >= 1, got {num_classes}")
        if num_samples is None:
            num_samples = {"train": 1024, "val": 16, "test": 128}
        self.split = split
        self.size = int(size)
        self.seed = int(seed)
        self.length = split_length(num_samples, split, "BrainPhantom")
        names = ("small", "large") if num_classes == 2 else tuple(f"size_{k}" for k in range(num_classes))
        self.spec = DataSpec(
            spatial_dims=3,
            channels=1,
            image_size=(self.size,) * 3,
            num_classes=num_classes,
            num_mask_labels=len(BRAIN_MASK_LABELS),
            class_names=names,
            mask_label_names=BRAIN_MASK_LABELS,
        )
        self.spacing = BRAIN_FOV_MM / self.size
        self.affine = brain_affine(self.size)

    def __len__(self) -> int:
        return self.length

    def tumour_radius(self, label: int) -> float:
        """Mean tumour (rim) radius of class ``label``, in normalised units (the head spans [-1, 1])."""
        k = self.spec.num_classes
        return 0.24 + 0.1 * (label / (k - 1) if k > 1 else 0.5)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = check_index(index, self.length, "BrainPhantom")
        label = index % self.spec.num_classes
        rng = sample_rng(self.seed, self.split, index)
        image, mask = self._volume(rng, self.tumour_radius(label))
        return {
            "image": torch.from_numpy(image[None]),
            "mask": torch.from_numpy(mask[None]),
            "label": torch.tensor(label, dtype=torch.int64),
            "meta": {
                "source": "brain_phantom",
                "split": self.split,
                "index": index,
                "spacing": (self.spacing,) * 3,
                "affine": self.affine.clone(),
            },
        }

    def _volume(self, rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Draw one head: image float32 ``[S, S, S]`` in [-1, 1] and label map int64 ``[S, S, S]``."""
        z, y, x = _brain_axes(self.size)
        j = rng.uniform(-1.0, 1.0, size=10)
        centre = (0.03 * j[:3]).astype(np.float32)
        semi = (np.array([0.80, 0.92, 0.76]) * (1 + 0.04 * j[3:6])).astype(np.float32)
        dz, dy, dx = z - centre[0], y - centre[1], x - centre[2]
        head_r2 = (dz / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dx / semi[2]) ** 2
        brain = head_r2 < 0.88**2

        # Lateral ventricles: two ellipsoids either side of the midline, splayed like a butterfly.
        vent_size = 1 + 0.1 * j[6]
        vent_z = ((dz - 0.05) / (0.2 * vent_size)) ** 2
        ventricles = np.zeros(head_r2.shape, dtype=bool)
        for side in (-1.0, 1.0):
            angle = side * np.deg2rad(12.0)
            vx, vy = dx - side * 0.16 * semi[2], dy + 0.05
            a = (vy * np.cos(angle) - vx * np.sin(angle)) / (0.32 * vent_size)
            b = (vy * np.sin(angle) + vx * np.cos(angle)) / (0.11 * vent_size)
            ventricles |= a**2 + b**2 + vent_z < 1.0

        # Tumour: in one hemisphere, its rim inside the brain (at most 0.8 of the head's semi-axes).
        radius *= 1 + 0.08 * j[7]
        room = np.maximum(0.8 - 1.2 * radius / semi, 0.0)
        offset = np.array([0.5, 0.6, rng.choice([-1.0, 1.0])]) * room * rng.uniform([-1, -1, 0.5], 1)
        t_centre = (centre + offset * semi).astype(np.float32)
        tz, ty, tx = z - t_centre[0], y - t_centre[1], x - t_centre[2]
        dist = np.sqrt(tz**2 + ty**2 + tx**2)
        freq = rng.normal(size=(3, 3)).astype(np.float32) * 2.5
        phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
        lumps = sum(np.cos(f[0] * tz + f[1] * ty + f[2] * tx + p) for f, p in zip(freq, phase)) / 3.0
        rho = dist / (radius * (1 + 0.15 * lumps))
        edema_rho = dist / (radius * (1.55 + 0.1 * j[8]) * (1 + 0.2 * lumps))
        mask = np.where(rho < 0.55 + 0.05 * j[9], 2, np.where(rho < 1.0, 3, np.where(edema_rho < 1.0, 1, 0)))
        mask = np.where(brain, mask, 0).astype(np.int64)

        interp = _texture_interpolation(self.size, 6)
        coarse = rng.standard_normal((6, 6, 6), dtype=np.float32)
        texture = np.tensordot(interp, interp @ (coarse @ interp.T), 1)  # trilinear upsampling to [S, S, S]
        tissue = np.where(head_r2 > 0.8**2, BRAIN_LEVELS["cortex"], BRAIN_LEVELS["brain"]) + 0.03 * texture
        tissue = np.where(ventricles, BRAIN_LEVELS["csf"], tissue)
        tumour_levels = np.array(
            [0.0, BRAIN_LEVELS["edema"], BRAIN_LEVELS["core"], BRAIN_LEVELS["rim"]], np.float32
        )
        level = np.where(mask > 0, tumour_levels[mask], tissue)
        level = np.where(brain, level, np.where(head_r2 < 1.0, BRAIN_LEVELS["skull"], 0.0)).astype(np.float32)
        level = ndimage.gaussian_filter(level, 0.5, mode="constant", truncate=2.0)
        level += rng.standard_normal(level.shape, dtype=np.float32) * np.float32(0.02) * (level > 0.02)
        image = np.clip(level, 0.0, 1.0) * 2.0 - 1.0
        return image.astype(np.float32), mask
