"""Where a study's training runs live under its ``out_dir``: shared by the runner and the report."""

from __future__ import annotations

from pathlib import Path

from motfm.study.spec import Study


def train_dir(study: Study, model: str) -> Path:
    """The training run folder of a model."""
    return study.out_dir / model / "train"


def checkpoint(study: Study, model: str) -> Path:
    """The last checkpoint of a model."""
    return train_dir(study, model) / "checkpoints" / "last.ckpt"
