"""PNG images and masks with a CSV index (2D)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from motfm.io.atomic import atomic_open, atomic_path
from motfm.io.export.base import DatasetWriter, ExportError, case_id
from motfm.io.images import to_uint8


class PngWriter(DatasetWriter):
    """2D images and masks as PNG files with a CSV index (see the module docstring)."""

    format = "png"
    dims = (2,)

    def folder_name(self) -> str:
        return self.name

    def case_files(self, index: int) -> dict[str, list[Path]]:
        cid = case_id(index)
        c = self.spec.channels
        names = [f"{cid}.png"] if c in (1, 3) else [f"{cid}_{k:04d}.png" for k in range(c)]
        masks = [self.folder / "masks" / f"{cid}.png"] if self.with_masks else []
        return {"images": [self.folder / "images" / n for n in names], "masks": masks}

    def write_image(self, image: np.ndarray, paths: list[Path]) -> None:
        pixels = to_uint8(torch.from_numpy(image))  # [C, H, W]
        if len(paths) == 1:
            _save_png(pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1), paths[0])
        else:
            for channel, path in zip(pixels, paths):
                _save_png(channel, path)

    def write_mask(self, mask: np.ndarray, path: Path) -> None:
        if mask.min() < 0 or mask.max() > 255:
            raise ExportError(f"{path}: mask labels span [{mask.min()}, {mask.max()}], PNG masks hold 0..255")
        _save_png(mask.astype(np.uint8), path)

    def description(self, indices: list[int], labels: Tensor | None) -> dict[str, Any]:
        self._write_index(indices, labels)
        return {
            "name": self.name,
            "channel_names": {str(c): n for c, n in enumerate(self.channel_names)},
            "labels": {n: v for v, n in enumerate(self.label_names())} if self.with_masks else {},
            "numTraining": len(indices),
            "file_ending": ".png",
            "index": "index.csv",
        }

    def _write_index(self, indices: list[int], labels: Tensor | None) -> None:
        """``index.csv``: one row per case (written before ``dataset.json``)."""
        names = self.spec.class_names
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(["case", "index", "image", "mask", "label", "class_name"])
        values = labels.tolist() if labels is not None else [None] * len(indices)
        for i, label in zip(indices, values):
            files = self.case_files(i)
            image = ";".join(str(p.relative_to(self.folder)) for p in files["images"])
            mask = str(files["masks"][0].relative_to(self.folder)) if files["masks"] else ""
            name = names[label] if label is not None and label < len(names) else ""
            out.writerow([case_id(i), i, image, mask, "" if label is None else label, name])
        with atomic_open(self.folder / "index.csv", "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())


def _save_png(pixels: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
