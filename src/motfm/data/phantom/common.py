"""What both phantoms share: per-split sample counts and per-sample random generators."""

from __future__ import annotations

import zlib

import numpy as np


def split_length(num_samples: dict[str, int] | int, split: str, name: str) -> int:
    """The number of samples of ``split`` (``num_samples`` is one count for every split or one per split)."""
    if isinstance(num_samples, int):
        n = num_samples
    else:
        if split not in num_samples:
            raise ValueError(
                f"{name}: no sample count for split {split!r} in num_samples={dict(num_samples)}"
            )
        n = int(num_samples[split])
    if n < 0:
        raise ValueError(f"{name}: the sample count of split {split!r} must be >= 0, got {n}")
    return n


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: a pure function of the three (stable across runs)."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def check_index(index: int, length: int, name: str) -> int:
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"{name}: index {index} out of range for {length} samples")
    return int(index)
