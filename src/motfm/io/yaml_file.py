"""Experiment files (study, downstream): a YAML mapping read with one clear line per problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def read_mapping(path: str | Path, error: type[Exception], what: str) -> dict[str, Any]:
    """Read the YAML file ``path`` (interpolations resolved) as a plain dict.

    Args:
        path: the file.
        error: the exception type to raise (its message starts with the path).
        what: what the file is, for the message ("study file", "experiment file").

    Raises:
        error: the file is missing, is not YAML, or is not a mapping at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # OmegaConf raises several types for bad YAML
        raise error(f"{path}: not a readable YAML file ({err})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping at the top level")
    return raw
