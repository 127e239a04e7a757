"""Writers of tiny datasets in the real on-disk layouts (CAMUS NIfTI/MetaImage, MSD, MOTFM pickle, DICOM).

Plain functions, imported by the tests (``from data.fixtures import ...``).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from omegaconf import DictConfig

from motfm.data.metaimage import write_metaimage

CAMUS_SPACING_XY = (0.308, 0.154)  # mm per column (x) and per row (y)
MSD_AFFINE = np.array(
    [
        [-1.0, 0.0, 0.0, 23.5],
        [0.0, -1.2, 0.1, 30.0],
        [0.0, 0.05, 1.5, -12.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
DICOM_TEST_FILES = (
    "US1_UNCR.dcm",
    "US1_UNCI.dcm",
    "OBXXXX1A_2frame.dcm",
    "emri_small.dcm",
    "SC_ybr_full_uncompressed.dcm",
)


def camus_frame(
    rng: np.random.Generator, size: tuple[int, int], view: int, phase: int
) -> tuple[np.ndarray, np.ndarray]:
    """A crude apical view ``(image uint8 [H, W], labels uint8 [H, W])``: apex at the top, atrium below."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    v, u = (y + 0.5) / h, (x + 0.5) / w
    labels = np.zeros(size, np.uint8)
    cav = 0.16 - 0.03 * phase
    lv = ((u - 0.5 - 0.05 * view) / (cav + 0.02)) ** 2 + ((v - 0.4) / (cav + 0.18)) ** 2
    labels[lv <= 1.6] = 2
    labels[lv <= 1.0] = 1
    labels[((u - 0.5) / 0.14) ** 2 + ((v - 0.83) / (0.1 + 0.02 * phase)) ** 2 <= 1] = 3
    sector = np.abs(np.arctan2(u - 0.5, v)) < 0.6
    levels = np.array([100, 25, 200, 40], np.float64)
    image = np.where(sector, levels[labels] + rng.normal(0, 12, size), 0)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def _info_cfg(rng: np.random.Generator, quality: str) -> str:
    return (
        f"ED: 1\nES: 14\nNbFrame: 15\nSex: {'F' if rng.random() < 0.5 else 'M'}\n"
        f"Age: {int(rng.integers(30, 90))}\n"
        f"ImageQuality: {quality}\nEF: {rng.uniform(30, 70):.2f}\nFrameRate: 50.0\n"
    )


def write_camus(
    root: Path, n_patients: int = 6, size: tuple[int, int] = (64, 48), release: str = "nifti", seed: int = 0
) -> list[str]:
    """Write a CAMUS release under ``root`` (``nifti``: ``database_nifti/``; ``mhd``: ``training/``).

    Images are ``size = (H, W)`` uint8 with label maps 0..3. Returns the patient ids.
    """
    rng = np.random.default_rng(seed)
    base = root / ("database_nifti" if release == "nifti" else "training")
    patients = [f"patient{i + 1:04d}" for i in range(n_patients)]
    qualities = ("Good", "Medium", "Poor")
    for p, patient in enumerate(patients):
        folder = base / patient
        folder.mkdir(parents=True)
        for vi, view in enumerate(("2CH", "4CH")):
            (folder / f"Info_{view}.cfg").write_text(_info_cfg(rng, qualities[(p + vi) % 3]))
            for pi, phase in enumerate(("ED", "ES")):
                image, labels = camus_frame(rng, size, vi, pi)
                stem = folder / f"{patient}_{view}_{phase}"
                for arr, suffix in ((image, ""), (labels, "_gt")):
                    if release == "nifti":  # stored transposed: NIfTI axes are (x, y)
                        affine = np.diag([*CAMUS_SPACING_XY, 1.0, 1.0])
                        nib.save(nib.Nifti1Image(arr.T.copy(), affine), f"{stem}{suffix}.nii.gz")
                    else:
                        write_metaimage(f"{stem}{suffix}.mhd", arr, spacing=CAMUS_SPACING_XY)
    return patients


def write_camus_split(root: Path, assignment: dict[str, list[str]]) -> None:
    """Write ``database_split/subgroup_{name}.txt`` for ``name`` in training/validation/testing."""
    folder = root / "database_split"
    folder.mkdir(parents=True, exist_ok=True)
    for name, patients in assignment.items():
        (folder / f"subgroup_{name}.txt").write_text("".join(f"{p}\n" for p in patients))


def brain_volume(
    rng: np.random.Generator, shape: tuple[int, int, int], channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """A skull-stripped head ``(image float32 [X, Y, Z, C], labels uint8 [X, Y, Z])``, zero background."""
    grid = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) / n for n in shape], indexing="ij"))
    centre = np.array([0.5, 0.45, 0.5])[:, None, None, None]
    brain = (((grid - centre) / np.array([0.3, 0.35, 0.3])[:, None, None, None]) ** 2).sum(0) <= 1
    tumour_c = centre + np.array([0.08, 0.05, 0.0])[:, None, None, None]
    r = (((grid - tumour_c) / 0.12) ** 2).sum(0)
    labels = np.zeros(shape, np.uint8)
    labels[(r <= 1) & brain] = 1
    labels[(r <= 0.5) & brain] = 3
    labels[(r <= 0.2) & brain] = 2
    image = np.zeros((*shape, channels), np.float32)
    for c in range(channels):
        tissue = 300 + 100 * c + rng.normal(0, 20, shape)
        image[..., c] = np.where(brain, tissue + 150 * labels, 0)
    return image, labels


def write_msd(
    root: Path, n_cases: int = 6, shape: tuple[int, int, int] = (24, 20, 16), seed: int = 0
) -> list[str]:
    """Write a Decathlon Task01_BrainTumour layout with 4D ``shape x 4`` images; returns the case ids."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    cases = [f"BRATS_{i + 1:03d}" for i in range(n_cases)]
    for case in cases:
        image, labels = brain_volume(rng, shape, 4)
        nib.save(nib.Nifti1Image(image, MSD_AFFINE), root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(labels, MSD_AFFINE), root / "labelsTr" / f"{case}.nii.gz")
    write_msd_json(root, cases)
    return cases


def write_msd_json(root: Path, cases: list[str], modality: dict[str, str] | None = None) -> None:
    """Write ``dataset.json`` listing ``cases`` as training entries."""
    meta = {
        "name": "BRATS",
        "tensorImageSize": "4D",
        "modality": modality or {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": len(cases),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))


def write_legacy_pickle(
    path: Path, counts: dict[str, int] | None = None, size: int = 32, seed: int = 0
) -> None:
    """Write an original-MOTFM pickle: 0..255 float images, masks scaled to {0, 1/3, 2/3, 1}, str classes."""
    rng = np.random.default_rng(seed)
    counts = counts or {"train": 6, "valid": 3, "test": 3}
    data = {}
    for split, n in counts.items():
        entries = []
        for i in range(n):
            view, phase = i % 2, (i // 2) % 2
            image, labels = camus_frame(rng, (size, size), view, phase)
            entries.append(
                {
                    "image": image.astype(np.float32)[None],
                    "mask": labels.astype(np.float32) / 3.0,
                    "class": f"{('2CH', '4CH')[view]}_{('ED', 'ES')[phase]}",
                    "metadata": {"patient": f"p{split}{i}", "frame": np.int64(i)},
                }
            )
        data[split] = entries
    with open(path, "wb") as f:
        pickle.dump(data, f)


def copy_dicom_files(root: Path, names: tuple[str, ...] = DICOM_TEST_FILES) -> list[Path]:
    """Copy real DICOM files shipped with pydicom / pydicom-data into ``root/<i>/<name>``."""
    from pydicom.data import get_testdata_file

    out = []
    for i, name in enumerate(names):
        src = get_testdata_file(name)
        assert src is not None, f"pydicom test file {name} is not available"
        dst = root / f"series{i}" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        out.append(dst)
    return out


def compose_data(name: str, overrides: list[str]) -> DictConfig:
    """The ``data`` node of ``conf/train.yaml`` composed with ``data=<name>`` and ``overrides``."""
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={name}", *overrides])
    return cfg.data
