"""Procedural phantoms: the embedded default datasets, generated on the fly and fully deterministic.

Two datasets follow the sample contract of :mod:`motfm.data.base`:

- :class:`EchoPhantom`: 2D apical echocardiography (B-mode) images ``[1, S, S]`` with a label map of the left
  ventricle cavity, myocardium and left atrium, in four classes (2- or 4-chamber view x end-diastole or
  end-systole);
- :class:`BrainPhantom`: 3D head volumes ``[1, S, S, S]`` with a brain tumour labelled loosely after the
  MSD brain-tumour convention (edema, non-enhancing core, enhancing rim), in classes of tumour size.

Sample ``i`` of a split depends only on ``(seed, split, i)`` (a :class:`numpy.random.Generator` seeded from
the three), never on the worker process or the order of access. Every anatomical structure has its own mean
intensity, which the deterministic segmenters of :mod:`motfm.metrics.fidelity` use to recover the label map
from an image (the echo intensities are documented in decibels, see :data:`ECHO_LEVELS_DB`).
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from motfm.data.base import DataSpec, MotfmDataset

ECHO_VIEWS = ("2CH", "4CH")
ECHO_PHASES = ("ED", "ES")
ECHO_MASK_LABELS = ("background", "lv_cavity", "myocardium", "left_atrium")

# Mean echo power of each structure in dB relative to the myocardium, ordered from dark to bright. The
# right heart (4CH only) is labelled background; its level lies between the left atrium and the tissue so
# that every label boundary of the left heart crosses as few foreign levels as possible.
ECHO_LEVELS_DB = {
    "lv_cavity": -38.0,
    "left_atrium": -30.0,
    "right_heart": -22.0,
    "tissue": -14.0,
    "myocardium": 0.0,
}
# Displayed dynamic range: ECHO_DISPLAY_DB[0] maps to -1 (black), ECHO_DISPLAY_DB[1] to +1.
ECHO_DISPLAY_DB = (-50.0, 8.0)
# Sector geometry in normalised image coordinates (u right, v down, both in [0, 1]).
ECHO_APEX = (0.5, 0.03)
ECHO_SECTOR_HALF_ANGLE = np.deg2rad(37.0)
ECHO_SECTOR_RADIUS = 0.93
# Depth attenuation (dB at the far end of the sector) and fall-off towards the sector edges (dB at the edge).
ECHO_DEPTH_LOSS_DB = 6.0
ECHO_EDGE_LOSS_DB = 4.0
# Number of independent speckle patterns averaged (spatial compounding): the power is gamma(k, 1/k).
ECHO_COMPOUNDING = 2

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


def _split_length(num_samples: dict[str, int] | int, split: str, name: str) -> int:
    """The number of samples of ``split`` (``num_samples`` is one count for every split or one per split)."""
    if isinstance(num_samples, int):
        n = num_samples
    else:
        if split not in num_samples:
            raise ValueError(
                f"{name}: no sample count for split {split!r} in num_samples={dict(num_samples)}"
            )
        n = int(num_samples[split])
    if n < 0:
        raise ValueError(f"{name}: the sample count of split {split!r} must be >= 0, got {n}")
    return n


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: a pure function of the three (stable across runs)."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _check_index(index: int, length: int, name: str) -> int:
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"{name}: index {index} out of range for {length} samples")
    return int(index)


def _unit_l2_gaussian(sigma: float) -> np.ndarray:
    """1D Gaussian kernel with unit L2 norm (so a white complex field keeps its mean power)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / np.sqrt((k**2).sum())).astype(np.float32)


@lru_cache(maxsize=8)
def echo_geometry(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates and fixed sector geometry of the echo phantom.

    Args:
        size: image side ``S``.

    Returns:
        ``(u, v, sector, loss_db)``, each ``[S, S]``: horizontal and vertical normalised coordinates, the
        boolean field of view, and the deterministic attenuation (dB, <= 0) of depth and sector edges.
    """
    c = (np.arange(size, dtype=np.float64) + 0.5) / size
    v, u = np.meshgrid(c, c, indexing="ij")
    du, dv = u - ECHO_APEX[0], v - ECHO_APEX[1]
    radius = np.hypot(du, dv)
    angle = np.arctan2(du, dv)
    sector = (radius <= ECHO_SECTOR_RADIUS) & (np.abs(angle) <= ECHO_SECTOR_HALF_ANGLE) & (dv > 0)
    edge = np.clip((np.abs(angle) / ECHO_SECTOR_HALF_ANGLE - 0.8) / 0.2, 0.0, 1.0)
    loss_db = -ECHO_DEPTH_LOSS_DB * radius / ECHO_SECTOR_RADIUS - ECHO_EDGE_LOSS_DB * edge**2
    for a in (u, v, sector, loss_db):
        a.setflags(write=False)
    return u, v, sector, loss_db


def echo_db_to_image(db: np.ndarray) -> np.ndarray:
    """Map echo power in dB to display values in [-1, 1] (the inverse of :func:`echo_image_to_db`)."""
    lo, hi = ECHO_DISPLAY_DB
    return np.clip((db - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0


def echo_image_to_db(image: torch.Tensor) -> torch.Tensor:
    """Map display values in [-1, 1] back to echo power in dB (the inverse of :func:`echo_db_to_image`)."""
    lo, hi = ECHO_DISPLAY_DB
    return lo + (image.clamp(-1.0, 1.0) + 1.0) * (0.5 * (hi - lo))


class EchoPhantom(MotfmDataset):
    """A 2D apical echocardiography phantom with left-heart label maps.

    Each image is a B-mode sector (apex at the top, black outside the field of view) showing the left
    ventricle (dark cavity, label 1, inside a bright myocardium, label 2) above the left atrium (dark,
    label 3); the 4-chamber view also shows the right ventricle and atrium on the left of the septum (dark,
    labelled background). The structure levels (:data:`ECHO_LEVELS_DB`) are slightly blurred, attenuated
    with depth and towards the sector edges, multiplied by speckle (two compounded fully developed patterns
    from a complex Gaussian field blurred by an anisotropic point-spread function, so gamma-distributed
    power) and log-compressed into the displayed range :data:`ECHO_DISPLAY_DB`.

    Classes are view x phase, index ``view_idx * len(phases) + phase_idx``, and are assigned cyclically:
    sample ``i`` has class ``i % num_classes``. End-systole (ES) has a smaller cavity, a thicker
    myocardium and a larger atrium than end-diastole (ED).

    Args:
        split: split name (any string; it seeds the samples, so splits differ).
        size: image side ``S`` (>= 16).
        num_samples: number of samples, one count for every split or a dict per split.
        seed: non-negative base seed.
        views: subset of ``("2CH", "4CH")``.
        phases: subset of ``("ED", "ES")``.
    """

    def __init__(
        self,
        split: str,
        size: int = 64,
        num_samples: dict[str, int] | int | None = None,
        seed: int = 0,
        views: tuple[str, ...] | list[str] = ECHO_VIEWS,
        phases: tuple[str, ...] | list[str] = ECHO_PHASES,
    ) -> None:
        if size < 16:
            raise ValueError(f"EchoPhantom: size must be >= 16, got {size}")
        if seed < 0:
            raise ValueError(f"EchoPhantom: seed must be >= 0, got {seed}")
        views, phases = tuple(views), tuple(phases)
        for given, allowed, what in ((views, ECHO_VIEWS, "views"), (phases, ECHO_PHASES, "phases")):
            if not given or len(set(given)) != len(given) or not set(given) <= set(allowed):
                raise ValueError(f"EchoPhantom: {what} must be distinct entries of {allowed}, got {given}")
        if num_samples is None:
            num_samples = {"train": 4096, "val": 64, "test": 512}
        self.split = split
        self.size = int(size)
        self.seed = int(seed)
        self.views = views
        self.phases = phases
        self.length = _split_length(num_samples, split, "EchoPhantom")
        self.spec = DataSpec(
            spatial_dims=2,
            channels=1,
            image_size=(self.size, self.size),
            num_classes=len(views) * len(phases),
            num_mask_labels=len(ECHO_MASK_LABELS),
            class_names=tuple(f"{v}_{p}" for v in views for p in phases),
            mask_label_names=ECHO_MASK_LABELS,
        )
        scale = self.size / 64.0
        self._psf = (_unit_l2_gaussian(0.6 * scale), _unit_l2_gaussian(1.0 * scale))  # axial, lateral

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, self.length, "EchoPhantom")
        label = index % self.spec.num_classes
        view = self.views[label // len(self.phases)]
        phase = self.phases[label % len(self.phases)]
        rng = _sample_rng(self.seed, self.split, index)
        level_db, mask = self._anatomy(rng, view == "4CH", phase == "ES")
        image = self._bmode(rng, level_db)
        return {
            "image": torch.from_numpy(image[None]),
            "mask": torch.from_numpy(mask[None]),
            "label": torch.tensor(label, dtype=torch.int64),
            "meta": {
                "source": "echo_phantom",
                "split": self.split,
                "index": index,
                "view": view,
                "phase": phase,
            },
        }

    def _anatomy(
        self, rng: np.random.Generator, four_chamber: bool, systole: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw the heart: mean power (dB) ``[S, S]`` float64 and label map ``[S, S]`` int64."""
        u, v, sector, _ = echo_geometry(self.size)
        j = rng.uniform(-1.0, 1.0, size=10)
        # Left ventricle in its own frame: s along the long axis from the endocardial apex, w across it.
        half_len = (0.185 if systole else 0.22) * (1 + 0.07 * j[0])
        half_wid = (0.075 if systole else 0.105) * (1 + 0.07 * j[1]) * (1.0 if four_chamber else 0.9)
        wall = (0.08 if systole else 0.06) * (1 + 0.1 * j[2])
        apex_u = 0.5 + 0.02 * j[3]
        apex_v = 0.15 + 0.02 * j[4]
        tilt = np.deg2rad((12.0 if four_chamber else 0.0) + 5.0 * j[5])
        du, dv = u - apex_u, v - apex_v
        s = du * np.sin(tilt) + dv * np.cos(tilt)
        w = du * np.cos(tilt) - dv * np.sin(tilt)
        base = 1.7 * half_len

        def inside(centre_s: float, centre_w: float, a: float, b: float) -> np.ndarray:
            return ((s - centre_s) / a) ** 2 + ((w - centre_w) / b) ** 2 < 1.0

        cavity = inside(half_len, 0.0, half_len, half_wid) & (s < base)
        epicardium = inside(half_len, 0.0, half_len + 0.8 * wall, half_wid + wall) & (s < base)
        atrium_len = (0.13 if systole else 0.105) * (1 + 0.1 * j[6])
        atrium_wid = (0.11 if systole else 0.09) * (1 + 0.1 * j[7])
        atrium = inside(base + 0.85 * atrium_len, 0.0, atrium_len, atrium_wid) & (s >= base)

        level = np.full(u.shape, ECHO_LEVELS_DB["tissue"])
        if four_chamber:
            rv_wid = (0.7 if systole else 0.8) * half_wid * (1 + 0.1 * j[8])
            rv_w = -(half_wid + wall + rv_wid)
            right_ventricle = inside(1.05 * half_len, rv_w, 0.8 * half_len, rv_wid) & (s < base)
            ra_len, ra_wid = 0.9 * atrium_len, 0.9 * atrium_wid * (1 + 0.1 * j[9])
            right_atrium = inside(base + 0.85 * ra_len, rv_w, ra_len, ra_wid) & (s >= base)
            level[right_ventricle | right_atrium] = ECHO_LEVELS_DB["right_heart"]
        mask = np.zeros(u.shape, dtype=np.int64)
        for structure, value, region in (
            ("left_atrium", 3, atrium),
            ("myocardium", 2, epicardium),
            ("lv_cavity", 1, cavity),
        ):
            level[region] = ECHO_LEVELS_DB[structure]
            mask[region] = value
        mask[~sector] = 0
        return level, mask

    def _bmode(self, rng: np.random.Generator, level_db: np.ndarray) -> np.ndarray:
        """Speckle, attenuation and log compression of a mean-power map: float32 ``[S, S]`` in [-1, 1].

        The speckle is multiplicative: the mean of ``ECHO_COMPOUNDING`` independent fully developed patterns
        (a white complex Gaussian field blurred by the point-spread function, exponential in power), i.e.
        gamma-distributed power with unit mean, added in dB to the slightly blurred structure levels.
        """
        _, _, sector, loss_db = echo_geometry(self.size)
        field = rng.standard_normal((2 * ECHO_COMPOUNDING, self.size, self.size), dtype=np.float32)
        field = ndimage.correlate1d(field, self._psf[0], axis=1, mode="nearest")
        field = ndimage.correlate1d(field, self._psf[1], axis=2, mode="nearest")
        speckle = (field**2).mean(0)
        structure = ndimage.gaussian_filter(level_db, 0.5 * self.size / 64, mode="nearest")
        power_db = structure + loss_db + rng.uniform(-1.0, 1.0) + 10.0 * np.log10(speckle + 1e-12)
        image = echo_db_to_image(power_db)
        image[~sector] = -1.0
        return image.astype(np.float32)


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
        self.length = _split_length(num_samples, split, "BrainPhantom")
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
        index = _check_index(index, self.length, "BrainPhantom")
        label = index % self.spec.num_classes
        rng = _sample_rng(self.seed, self.split, index)
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
