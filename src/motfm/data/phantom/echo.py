"""The 2D apical echocardiography phantom (B-mode image, label map of the left heart, view x phase class)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from motfm.data.base import DataSpec, MotfmDataset
from motfm.data.phantom.common import check_index, sample_rng, split_length

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
        self.length = split_length(num_samples, split, "EchoPhantom")
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
        index = check_index(index, self.length, "EchoPhantom")
        label = index % self.spec.num_classes
        view = self.views[label // len(self.phases)]
        phase = self.phases[label % len(self.phases)]
        rng = sample_rng(self.seed, self.split, index)
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
