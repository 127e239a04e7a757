"""One tiny trained checkpoint per session, shared by the test modules that only need *a* model."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import TINY_2D, compose_config

COND_2D = [*TINY_2D, "model.conditioning=[class,mask]", "trainer.max_epochs=1"]


def tiny_checkpoint(
    factory: pytest.TempPathFactory, name: str = "tiny2d", overrides: list[str] = COND_2D
) -> Path:
    """Train (once per session and ``name``) a tiny model on the echo phantom; returns its last checkpoint."""
    from motfm.train import train

    out = factory.getbasetemp() / f"shared-{name}"
    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file():
        train(compose_config("train", list(overrides), out))
    return last
