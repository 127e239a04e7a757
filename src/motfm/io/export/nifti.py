"""The NIfTI layouts: nnU-Net v2 raw data and the Medical Segmentation Decathlon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from motfm.io.export.base import DESCRIPTION, DatasetWriter, ExportError, case_id, to_nifti_array
from motfm.io.nifti import write_nifti


class _NiftiWriter(DatasetWriter):
    """Shared by the nnU-Net and MSD layouts: NIfTI images and integer label maps."""

    def channel_arrays(self, image: np.ndarray) -> list[np.ndarray]:
        """The channels of ``image`` ``[C, *spatial]`` in NIfTI voxel order."""
        return [to_nifti_array(image[c].astype(np.float32), self.is_2d) for c in range(image.shape[0])]

    def write_mask(self, mask: np.ndarray, path: Path) -> None:
        """Integer label map (uint8 for up to 256 labels) with the images' geometry."""
        write_nifti(to_nifti_array(mask.astype(np.int64), self.is_2d), path, self.affine)


class NnunetWriter(_NiftiWriter):
    """nnU-Net v2 raw dataset (``DatasetXXX_Name``; see the module docstring)."""

    format = "nnunet"
    needs_masks = True
    file_ending = ".nii.gz"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 1 <= self.dataset_id <= 999:
            raise ExportError(f"dataset_id={self.dataset_id}: nnU-Net dataset ids are 1..999")

    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    def case_files(self, index: int) -> dict[str, list[Path]]:
        cid = case_id(index)
        images = [
            self.folder / "imagesTr" / f"{cid}_{c:04d}{self.file_ending}" for c in range(self.spec.channels)
        ]
        return {"images": images, "masks": [self.folder / "labelsTr" / f"{cid}{self.file_ending}"]}

    def write_image(self, image: np.ndarray, paths: list[Path]) -> None:
        for arr, path in zip(self.channel_arrays(image), paths):
            write_nifti(arr, path, self.affine)

    def description(self, indices: list[int], labels: Tensor | None) -> dict[str, Any]:
        return {
            "channel_names": {str(c): n for c, n in enumerate(self.channel_names)},
            "labels": {n: v for v, n in enumerate(self.label_names())},
            "numTraining": len(indices),
            "file_ending": self.file_ending,
            "name": self.name,
            "description": DESCRIPTION,
        }


class MsdWriter(_NiftiWriter):
    """Medical Segmentation Decathlon layout (``TaskXX_Name``; see the module docstring)."""

    format = "msd"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 1 <= self.dataset_id <= 99:
            raise ExportError(f"dataset_id={self.dataset_id}: Decathlon task ids are 1..99 (TaskXX)")

    def folder_name(self) -> str:
        return f"Task{self.dataset_id:02d}_{self.name}"

    def case_files(self, index: int) -> dict[str, list[Path]]:
        cid = case_id(index)
        masks = [self.folder / "labelsTr" / f"{cid}.nii.gz"] if self.with_masks else []
        return {"images": [self.folder / "imagesTr" / f"{cid}.nii.gz"], "masks": masks}

    def write_image(self, image: np.ndarray, paths: list[Path]) -> None:
        channels = self.channel_arrays(image)
        arr = channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)
        write_nifti(arr, paths[0], self.affine)

    def description(self, indices: list[int], labels: Tensor | None) -> dict[str, Any]:
        names = self.label_names() if self.with_masks else ["background"]
        training = []
        for i in indices:
            files = self.case_files(i)
            entry = {"image": f"./imagesTr/{files['images'][0].name}"}
            if self.with_masks:
                entry["label"] = f"./labelsTr/{files['masks'][0].name}"
            training.append(entry)
        return {
            "name": self.name,
            "description": DESCRIPTION,
            "tensorImageSize": "4D" if self.spec.channels > 1 else "3D",
            "modality": {str(c): n for c, n in enumerate(self.channel_names)},
            "labels": {str(v): n for v, n in enumerate(names)},
            "numTraining": len(indices),
            "numTest": 0,
            "training": training,
            "test": [],
        }
