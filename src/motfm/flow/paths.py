"""Probability paths of flow matching.

The conditional optimal-transport path of Lipman et al. 2023 ("Flow Matching for Generative
Modeling", Eq. 20-23), written with x0 ~ N(0, I) the noise and x1 the data:

    x_t = t * x1 + (1 - (1 - sigma_min) * t) * x0,        u_t = x1 - (1 - sigma_min) * x0.

With ``sigma_min = 0`` this is the straight line x_t = t*x1 + (1-t)*x0 with constant velocity
x1 - x0 used by MOTFM. Time broadcasts over any tensor rank, so 2D and 3D share this code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PathSample:
    """A point on the path for a batch.

    Attributes:
        x0: noise ``[B, C, *spatial]``.
        x1: data ``[B, C, *spatial]``.
        t: time ``[B]`` in [0, 1].
        xt: the interpolant at ``t``, ``[B, C, *spatial]``.
        ut: the target velocity dx_t/dt, ``[B, C, *spatial]``.
    """

    x0: Tensor
    x1: Tensor
    t: Tensor
    xt: Tensor
    ut: Tensor


def expand_time(t: Tensor, like: Tensor) -> Tensor:
    """Reshape time ``[B]`` (or a scalar) to ``[B, 1, ..., 1]`` so it broadcasts against ``like``.

    Args:
        t: time, a scalar or ``[B]``.
        like: a tensor ``[B, C, *spatial]``.

    Returns:
        ``t`` viewed as ``[B or 1, 1, ..., 1]`` with ``like.ndim`` dimensions.
    """
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.reshape([1] * like.ndim)
    if t.ndim != 1 or t.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"time must be a scalar or have shape [B]={like.shape[0]}, got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


class CondOTPath:
    """The conditional optimal-transport (rectified / straight-line) path.

    Args:
        sigma_min: width of the path's end point around x1 (0 gives the exact straight line).
    """

    def __init__(self, sigma_min: float = 0.0) -> None:
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = sigma_min

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """Interpolate between ``x0`` and ``x1`` at time ``t``.

        Args:
            x0: noise ``[B, C, *spatial]``.
            x1: data, same shape as ``x0``.
            t: time ``[B]`` in [0, 1].

        Returns:
            The :class:`PathSample` with ``xt`` and ``ut`` from the equations in the module docstring.
        """
        if x0.shape != x1.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have the same shape")
        tt = expand_time(t, x1)
        scale0 = 1.0 - self.sigma_min
        xt = tt * x1 + (1.0 - scale0 * tt) * x0
        ut = x1 - scale0 * x0
        return PathSample(x0=x0, x1=x1, t=t, xt=xt, ut=ut)


class TimeSampler:
    """Draws training times ``t`` in [0, 1].

    Args:
        kind: ``"uniform"`` (MOTFM) or ``"logit_normal"`` (t = sigmoid(N(mean, std)), Esser et al. 2024,
            "Scaling Rectified Flow Transformers", Sec. 3.1), which puts more weight on middle times.
        mean: mean of the normal for ``logit_normal``.
        std: standard deviation of the normal for ``logit_normal``.
    """

    def __init__(self, kind: str = "uniform", mean: float = 0.0, std: float = 1.0) -> None:
        if kind not in ("uniform", "logit_normal"):
            raise ValueError(f"unknown time sampler {kind!r}; expected 'uniform' or 'logit_normal'")
        if std <= 0:
            raise ValueError(f"logit_normal std must be > 0, got {std}")
        self.kind, self.mean, self.std = kind, mean, std

    def __call__(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> Tensor:
        """Return ``[batch_size]`` times in [0, 1] (float32)."""
        if self.kind == "uniform":
            return torch.rand(batch_size, device=device, generator=generator)
        z = torch.randn(batch_size, device=device, generator=generator) * self.std + self.mean
        return torch.sigmoid(z)
