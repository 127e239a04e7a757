"""CAMUS (Cardiac Acquisitions for Multi-structure Ultrasound Segmentation): 2D apical echocardiography.

Both public releases are read:

- the NIfTI release: ``root/database_nifti/patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}[_gt].nii.gz`` with
  ``Info_{2CH,4CH}.cfg`` beside them, and the official split in
  ``root/database_split/subgroup_{training,validation,testing}.txt`` (one patient id per line);
- the original challenge release:
  ``root/training/patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}[_gt].mhd`` (+ ``.raw``) and ``Info_{2CH,4CH}.cfg``
  (read with :mod:`motfm.data.metaimage`; the ``testing`` folder has no label maps and is not used).

``root`` may also be the ``database_nifti`` or ``training`` folder itself.

Orientation: nibabel returns a NIfTI image indexed ``[x, y]`` (first axis = image columns), i.e. transposed
relative to the display; it is transposed to ``[H, W]`` = ``[y, x]``, the order in which the ``.mhd`` data are
stored (x fastest) and the same as ``SimpleITK.GetArrayFromImage``. Row 0 is then the top of the sector: the
probe, at the apex of the heart; the atrium is at the bottom. ``meta["spacing"]`` is ``(row, column)`` in mm
of the *output* pixels; ``meta["source_spacing"]`` that of the file.

Label maps: 0 background, 1 left-ventricle cavity (endocardium), 2 myocardium (epicardium), 3 left atrium.
Images are 8-bit (0..255) and mapped linearly to [-1, 1]. They are resized (without keeping the aspect ratio)
to ``image_size``, bilinearly with antialiasing; label maps by nearest neighbour.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from motfm.data.base import DataError, DataSpec
from motfm.data.cache import DEFAULT_CACHE_DIR, CachedDataset
from motfm.data.cache_entry import Case, Record
from motfm.data.metaimage import read_metaimage
from motfm.data.msd import read_nifti
from motfm.data.splits import DEFAULT_FRACTIONS, select_split
from motfm.data.transforms import as_size, resize_image, resize_mask, uint8_to_unit

VIEWS = ("2CH", "4CH")
PHASES = ("ED", "ES")
MASK_LABELS = ("background", "lv_endocardium", "lv_myocardium", "left_atrium")
QUALITIES = ("Good", "Medium", "Poor")
CLASS_BY = ("view_phase", "view", "image_quality", "none")
SPLIT_FILES = {
    "train": "subgroup_training.txt",
    "val": "subgroup_validation.txt",
    "test": "subgroup_testing.txt",
}
_PATIENT = re.compile(r"^patient\d+$")
_INT_KEYS = {"ED", "ES", "NbFrame", "Age"}
_FLOAT_KEYS = {"EF", "LVedv", "LVesv", "LVef", "FrameRate"}


def read_info_cfg(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a CAMUS ``Info_{2CH,4CH}.cfg`` file of ``Key: value`` lines.

    Returns:
        The fields; ``ED``, ``ES``, ``NbFrame``, ``Age`` as int, ``EF``, ``LVedv``, ``LVesv``, ``LVef``,
        ``FrameRate`` as float, the rest (``Sex``, ``ImageQuality``) as strings.

    Raises:
        DataError: naming the file, for a line without ``:``, a non-numeric numeric field, an empty file or an
            ``ImageQuality`` other than Good/Medium/Poor.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read CAMUS info file ({e})") from None
    info: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise DataError(f"{path}: line {n} {line!r} is not 'Key: value'")
        try:
            info[key] = int(value) if key in _INT_KEYS else float(value) if key in _FLOAT_KEYS else value
        except ValueError:
            raise DataError(f"{path}: line {n}: {key} = {value!r} is not a number") from None
    if not info:
        raise DataError(f"{path}: CAMUS info file is empty")
    if "ImageQuality" in info and info["ImageQuality"] not in QUALITIES:
        raise DataError(f"{path}: ImageQuality {info['ImageQuality']!r} is not one of {QUALITIES}")
    return info


def find_release(root: Path) -> tuple[str, Path]:
    """Locate the patient folders of either release.

    Returns:
        ``(suffix, folder)``: ``".nii.gz"`` or ``".mhd"``, and the folder holding the ``patientXXXX`` folders.

    Raises:
        DataError: when ``root`` is missing or holds neither release.
    """
    if not root.is_dir():
        raise DataError(f"CAMUS root {root} does not exist or is not a folder")
    for folder in (root / "database_nifti", root / "training", root):
        patients = [p for p in sorted(folder.glob("patient*")) if p.is_dir() and _PATIENT.match(p.name)]
        for suffix in (".nii.gz", ".mhd"):
            if any(any(p.glob(f"{p.name}_*{suffix}")) for p in patients[:5]):
                return suffix, folder
    raise DataError(
        f"{root}: no CAMUS patient folders found (expected database_nifti/patientXXXX/*.nii.gz "
        "or training/patientXXXX/*.mhd)"
    )


def read_official_split(root: Path) -> dict[str, str] | None:
    """The official patient split of ``root/database_split`` (``None`` when the folder is absent).

    Returns:
        ``{patient_id: split}`` with splits ``train``/``val``/``test``.

    Raises:
        DataError: when a split file is missing or a patient is listed twice.
    """
    folder = root / "database_split"
    if not folder.is_dir():
        return None
    out: dict[str, str] = {}
    for split, name in SPLIT_FILES.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: official CAMUS split file is missing")
        for line in path.read_text(encoding="utf-8").split():
            if line in out:
                raise DataError(f"{path}: patient {line} is also listed in the {out[line]!r} split")
            out[line] = split
    return out


def read_camus_image(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Read one CAMUS image or label map in display orientation.

    Args:
        path: a ``.nii.gz`` or ``.mhd`` file.

    Returns:
        ``(array [H, W], (row_spacing, column_spacing))``.

    Raises:
        DataError: when the file is missing, unreadable or not 2D.
    """
    if path.name.endswith(".mhd"):
        mi = read_metaimage(path)
        array, spacing = mi.array, mi.spacing
        while array.ndim > 2 and array.shape[0] == 1:  # [1, y, x] -> [y, x]
            array = array[0]
        spacing_yx = (spacing[1], spacing[0]) if len(spacing) >= 2 else (1.0, 1.0)
    else:
        img, array = read_nifti(path)
        while array.ndim > 2 and array.shape[-1] == 1:  # [x, y, 1] -> [x, y]
            array = array[..., 0]
        zooms = img.header.get_zooms()
        array = array.T if array.ndim == 2 else array
        spacing_yx = (float(zooms[1]), float(zooms[0])) if len(zooms) >= 2 else (1.0, 1.0)
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2D image, got shape {array.shape}")
    return np.asarray(array), (float(spacing_yx[0]), float(spacing_yx[1]))


class CamusDataset(CachedDataset):
    """CAMUS 2D echocardiography: end-diastole/end-systole frames of apical 2- and 4-chamber views.

    Each sample: ``image`` float32 ``[1, H, W]`` in [-1, 1], ``mask`` int64 ``[1, H, W]`` (0..3, see
    :data:`MASK_LABELS`), ``label`` (see ``class_by``) and ``meta`` (``id``, ``patient``, ``view``, ``phase``,
    ``source``, ``spacing``, ``source_spacing``, ``source_shape`` and the ``Info_*.cfg`` fields present:
    ``image_quality``, ``ef``, ``age``, ``sex``).

    Args:
        split: ``train``, ``val`` or ``test``.
        root: the CAMUS folder (see the module docstring).
        views: subset of ``("2CH", "4CH")``.
        phases: subset of ``("ED", "ES")``.
        image_size: output ``H, W`` (one int for square images).
        class_by: ``view_phase`` (class ``view_idx * len(phases) + phase_idx``: with both views and phases
            2CH-ED=0, 2CH-ES=1, 4CH-ED=2, 4CH-ES=3, as in the MOTFM paper), ``view``, ``image_quality``
            (Good=0, Medium=1, Poor=2, from ``Info_*.cfg``) or ``none``.
        with_mask: load the ``_gt`` label maps.
        official_split: use ``database_split/`` when it exists (patients it does not list are left out);
            otherwise (or when ``False``) split patients by ``split_fractions`` and ``split_seed``.
        split_fractions: fraction of patients per split (default 0.8/0.1/0.1).
        split_seed: seed of the patient split.
        cache, cache_dir, skip_bad_cases, augment: see :class:`motfm.data.cache.CachedDataset`.
    """

    dataset_name = "camus"

    def __init__(
        self,
        split: str,
        *,
        root: str | os.PathLike[str],
        views: Sequence[str] = VIEWS,
        phases: Sequence[str] = PHASES,
        image_size: int | Sequence[int] = 256,
        class_by: str = "view_phase",
        with_mask: bool = True,
        official_split: bool = True,
        split_fractions: dict[str, float] | None = None,
        split_seed: int = 0,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
        skip_bad_cases: bool = False,
        augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            split, cache=cache, cache_dir=cache_dir, skip_bad_cases=skip_bad_cases, augment=augment
        )
        self.views = _subset(views, VIEWS, "views")
        self.phases = _subset(phases, PHASES, "phases")
        if class_by not in CLASS_BY:
            raise ValueError(f"class_by must be one of {CLASS_BY}, got {class_by!r}")
        self.class_by = class_by
        self.with_mask = with_mask
        self.image_size = as_size(image_size, 2)
        self.root = Path(root).expanduser()
        self.suffix, folder = find_release(self.root)
        class_names = {
            "view_phase": tuple(f"{v}_{p}" for v in self.views for p in self.phases),
            "view": self.views,
            "image_quality": QUALITIES,
            "none": (),
        }[class_by]
        self.spec = DataSpec(
            spatial_dims=2,
            channels=1,
            image_size=self.image_size,
            num_classes=len(class_names),
            num_mask_labels=len(MASK_LABELS) if with_mask else 0,
            class_names=class_names,
            mask_label_names=MASK_LABELS if with_mask else (),
        )
        patients = [p.name for p in sorted(folder.iterdir()) if p.is_dir() and _PATIENT.match(p.name)]
        official = read_official_split(self.root) if official_split else None
        if official is not None:
            selected = [p for p in patients if official.get(p) == split]
            split_rule: Any = "official"
        else:
            fractions = dict(split_fractions or DEFAULT_FRACTIONS)
            selected = select_split(patients, {p: p for p in patients}, split, fractions, split_seed)
            split_rule = {"fractions": fractions, "seed": split_seed}
        cases = [self._case(folder / p, v, ph) for p in selected for v in self.views for ph in self.phases]
        options = {
            "release": self.suffix,
            "views": list(self.views),
            "phases": list(self.phases),
            "image_size": list(self.image_size),
            "class_by": class_by,
            "with_mask": with_mask,
            "split": split_rule,
        }
        self.prepare(cases, self.root, options)

    def _case(self, folder: Path, view: str, phase: str) -> Case:
        stem = f"{folder.name}_{view}_{phase}"
        image = folder / f"{stem}{self.suffix}"
        mask = folder / f"{stem}_gt{self.suffix}"
        cfg = folder / f"Info_{view}.cfg"
        files = [image, *([mask] if self.with_mask else []), *([cfg] if cfg.exists() else [])]
        if self.suffix == ".mhd":  # the data files of the headers
            files += [
                f.with_suffix(ext)
                for f in (image, mask)
                for ext in (".raw", ".zraw")
                if f.with_suffix(ext).exists()
            ]
        info = {
            "patient": folder.name,
            "view": view,
            "phase": phase,
            "image": image,
            "mask": mask,
            "cfg": cfg,
        }
        return Case(id=stem, files=tuple(files), info=info)

    def load_case(self, case: Case) -> list[Record]:
        """Read, check and resize one view/phase of one patient."""
        info = case.info
        image_path: Path = info["image"]
        if not image_path.exists():
            raise DataError(f"{image_path}: CAMUS image file is missing")
        cfg = read_info_cfg(info["cfg"]) if info["cfg"].exists() else {}
        image, spacing = read_camus_image(image_path)
        if not np.isfinite(image).all():
            raise DataError(f"{image_path}: image contains NaN or inf values")
        if image.size == 0 or image.min() < 0 or image.max() > 255:
            raise DataError(
                f"{image_path}: intensities span [{image.min()}, {image.max()}], expected 8-bit values 0..255"
            )
        meta: dict[str, Any] = {
            "id": case.id,
            "patient": info["patient"],
            "view": info["view"],
            "phase": info["phase"],
            "source": str(image_path),
            "source_shape": list(image.shape),
            "source_spacing": list(spacing),
            "spacing": [spacing[i] * image.shape[i] / self.image_size[i] for i in range(2)],
        }
        for key, name in (
            ("ImageQuality", "image_quality"),
            ("EF", "ef"),
            ("LVef", "ef"),
            ("Age", "age"),
            ("Sex", "sex"),
        ):
            if key in cfg:
                meta[name] = cfg[key]
        mask = None
        if self.with_mask:
            mask = self._read_mask(info["mask"], image.shape)
        return [
            Record(
                image=resize_image(uint8_to_unit(image)[None], self.image_size),
                mask=resize_mask(mask[None], self.image_size) if mask is not None else None,
                label=self._label(case, cfg),
                meta=meta,
            )
        ]

    def _read_mask(self, path: Path, shape: tuple[int, ...]) -> np.ndarray:
        if not path.exists():
            raise DataError(f"{path}: CAMUS label map is missing")
        mask, _ = read_camus_image(path)
        if mask.shape != shape:
            raise DataError(f"{path}: label map has shape {mask.shape}, its image has {shape}")
        if not np.isfinite(mask).all() or not np.array_equal(mask, np.round(mask)):
            raise DataError(f"{path}: label map has non-integer values")
        values = np.unique(mask)
        if values.min() < 0 or values.max() >= len(MASK_LABELS):
            raise DataError(
                f"{path}: label map values {values.tolist()} outside 0..{len(MASK_LABELS) - 1} {MASK_LABELS}"
            )
        return mask.astype(np.uint8)

    def _label(self, case: Case, cfg: dict[str, Any]) -> int | None:
        view, phase = case.info["view"], case.info["phase"]
        if self.class_by == "view_phase":
            return self.views.index(view) * len(self.phases) + self.phases.index(phase)
        if self.class_by == "view":
            return self.views.index(view)
        if self.class_by == "image_quality":
            if "ImageQuality" not in cfg:
                raise DataError(f"{case.info['cfg']}: no ImageQuality (needed by class_by=image_quality)")
            return QUALITIES.index(cfg["ImageQuality"])
        return None


def _subset(values: Sequence[str], allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    values = tuple(str(v) for v in values)
    if not values or len(set(values)) != len(values) or not set(values) <= set(allowed):
        raise ValueError(f"{name} must be a non-empty subset of {allowed} without repeats, got {values}")
    return tuple(v for v in allowed if v in values)
