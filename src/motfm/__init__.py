"""motfm: fast medical image synthesis with optimal-transport flow matching.

``motfm.load_pretrained(folder)`` loads a model written by ``python -m motfm.export_model`` (imported on first
use, so that ``import motfm`` stays light).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_pretrained"]


def __getattr__(name: str) -> Any:
    if name == "load_pretrained":
        from motfm.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'motfm' has no attribute {name!r}")
