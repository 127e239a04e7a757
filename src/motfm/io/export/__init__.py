"""Write generated samples as datasets that downstream tools read: nnU-Net v2 raw data, the Medical
Segmentation Decathlon layout, or PNG files with an index.

A writer receives samples one batch at a time (nothing is kept), writes every file of a case atomically
(:mod:`motfm.io.atomic`), skips files that already exist, and writes the dataset description
(``dataset.json``) last, only when every case is complete. An interrupted export therefore resumes by writing
again: since sample i depends only on ``(seed, i)``, the missing cases come out as they would have.

Layouts (``<case>`` = ``sample_00000``, ``sample_00001``, ...):

- ``nnunet`` (nnU-Net v2 raw data, ``documentation/dataset_format.md`` of MIC-DKFZ/nnUNet):
  ``Dataset<ID:03d>_<Name>/imagesTr/<case>_<channel:04d>.nii.gz``, ``labelsTr/<case>.nii.gz`` (the
  conditioning mask, an integer map with consecutive labels, background 0) and ``dataset.json`` with
  ``channel_names`` (``{"0": name}``), ``labels`` (``{name: value}``, ``background`` = 0), ``numTraining``
  and ``file_ending``;
- ``msd`` (Decathlon): ``Task<ID:02d>_<Name>/imagesTr/<case>.nii.gz`` (channels in one file, 4D when several),
  ``labelsTr/<case>.nii.gz`` and ``dataset.json`` with ``modality`` (``{"0": name}``), ``labels``
  (``{"0": "background", ...}``), ``numTraining`` and the ``training`` list of ``{"image", "label"}``;
  readable back by ``data=msd_brain``;
- ``png`` (2D only): ``<Name>/images/<case>.png`` (grey, or RGB for 3 channels; ``<case>_<c:04d>.png`` per
  channel otherwise; [-1, 1] mapped to 0..255), ``masks/<case>.png`` (label values 0..n-1 as 8-bit grey), and
  ``index.csv`` (``case, index, image, mask, label, class_name``) plus ``dataset.json``.

Geometry: volumes keep the data's voxel-to-world affine (NIfTI axes ``(i, j, k)`` = tensor ``(D, H, W)``, as
:func:`motfm.io.nifti.save_nifti`). 2D images are written as single-slice 3D NIfTI, the form of nnU-Net's 2D
NIfTI conversion: array ``[W, H, 1]`` (i = column, j = row) with spacing ``(column, row, 999)`` mm, which
SimpleITK (nnU-Net's default reader) and nibabel both read back as ``[1, H, W]``.
"""

from __future__ import annotations

from typing import Any

from motfm.io.export.base import DatasetWriter, ExportError, remove_partial_files
from motfm.io.export.nifti import MsdWriter, NnunetWriter
from motfm.io.export.png import PngWriter

__all__ = [
    "WRITERS",
    "DatasetWriter",
    "ExportError",
    "MsdWriter",
    "NnunetWriter",
    "PngWriter",
    "make_writer",
    "remove_partial_files",
]

WRITERS: dict[str, type[DatasetWriter]] = {w.format: w for w in (NnunetWriter, MsdWriter, PngWriter)}


def make_writer(kind: str, **kwargs: Any) -> DatasetWriter:
    """The writer of export format ``kind`` (``nnunet``, ``msd`` or ``png``); ``kwargs`` as
    :class:`DatasetWriter`.

    Raises:
        ExportError: an unknown format, or one the model cannot feed.
    """
    if kind not in WRITERS:
        raise ExportError(f"export={kind!r}: expected one of {sorted(WRITERS)} (or null)")
    return WRITERS[kind](**kwargs)
