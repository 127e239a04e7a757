"""Forward-mode differentiation through the network (``torch.func.jvp``), as MeanFlow's training needs.

Two of the network's fast kernels have no forward-mode derivative in PyTorch: the fused CPU/CUDA
scaled-dot-product attention kernels, and GroupNorm on channels-last tensors (its decomposition views the
tensor as if contiguous). Inside :func:`forward_ad_mode`, attention runs through the composite "math" kernel
and GroupNorm normalises a contiguous copy; outside it nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch.nn.attention import SDPBackend, sdpa_kernel

# A plain module flag (torch.compile traces a global read; it cannot trace a ContextVar).
_ACTIVE = [False]


def forward_ad_active() -> bool:
    """Whether the network is evaluated under :func:`forward_ad_mode`."""
    return _ACTIVE[0]


@contextlib.contextmanager
def forward_ad_mode() -> Iterator[None]:
    """Evaluate the network with kernels that support forward-mode automatic differentiation."""
    previous, _ACTIVE[0] = _ACTIVE[0], True
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        _ACTIVE[0] = previous
