"""Embeddings of continuous time and of class labels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of a *continuous* time (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020).

    ``t`` is used as a float: ``scale * t`` spans the same range [0, 1000] as the integer steps of
    diffusion models, but is never floored (the original MOTFM floored it to 0..998).

    Args:
        t: time ``[B]`` in [0, 1].
        dim: embedding width (even).
        scale: multiplier applied to ``t`` before the frequencies.
        max_period: the slowest period.

    Returns:
        ``[B, dim]`` embedding (float32, or float64 for float64 ``t``) ``[cos(w_k s t), sin(w_k s t)]``.
    """
    if dim % 2:
        raise ValueError(f"time embedding width must be even, got {dim}")
    half = dim // 2
    dtype = torch.promote_types(t.dtype, torch.float32)  # float32 (float64 for float64 times)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    args = (scale * t.to(dtype))[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP.

    Args:
        base_dim: width of the sinusoidal features.
        out_dim: width of the embedding fed to every residual block.
        max_timestep: ``None`` (the suite's models): ``t`` is embedded as a float, ``1000 t``. An integer
            ``T``: ``t`` is first floored to the integer step ``floor(t (T - 1))`` (in float32), as the
            original MOTFM code feeds time to MONAI's embedding; imported MOTFM models use ``T = 1000``.
    """

    def __init__(self, base_dim: int, out_dim: int, max_timestep: int | None = None) -> None:
        super().__init__()
        if max_timestep is not None and max_timestep < 2:
            raise ValueError(f"max_timestep must be >= 2, got {max_timestep}")
        self.base_dim = base_dim
        self.max_timestep = max_timestep
        self.mlp = nn.Sequential(nn.Linear(base_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        """Map time ``[B]`` to ``[B, out_dim]``."""
        if self.max_timestep is None:
            return self.mlp(sinusoidal_embedding(t, self.base_dim))
        steps = (t.float() * (self.max_timestep - 1)).floor()
        return self.mlp(sinusoidal_embedding(steps, self.base_dim, scale=1.0).to(t.dtype))


class IntervalEmbedding(nn.Module):
    """Embedding of the interval ``d = r - t`` of an average-velocity model (MeanFlow's second time).

    It returns ``mlp(sin(d)) - mlp(sin(0))`` with a zero-initialised last layer: zero for every ``d`` at
    initialisation, and zero for ``d = 0`` always, so a model evaluated at ``r = t`` is an ordinary
    velocity field (Geng et al. 2025, "Mean Flows for One-step Generative Modeling", Sec. 4: the network
    conditions on (t, t - r)).

    Args:
        base_dim: width of the sinusoidal features.
        out_dim: width of the time embedding it is added to.
    """

    def __init__(self, base_dim: int, out_dim: int) -> None:
        super().__init__()
        self.time = TimeEmbedding(base_dim, out_dim)
        nn.init.zeros_(self.time.mlp[-1].weight)
        nn.init.zeros_(self.time.mlp[-1].bias)

    def forward(self, d: Tensor) -> Tensor:
        """Map intervals ``[B]`` to ``[B, out_dim]``."""
        e = self.time(torch.cat([d, torch.zeros_like(d[:1])]))  # one call: d = 0 rows cancel exactly
        return e[:-1] - e[-1:]


def check_class_labels(labels: Tensor, num_classes: int) -> None:
    """Raise a clear error for labels outside ``0 .. num_classes`` (reads values: a host sync on a GPU).

    Called where conditions enter the suite (data loaders, the sampling CLIs), never inside ``forward``,
    so that the forward pass has no host-device synchronisation and compiles as one graph.
    """
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"class labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > num_classes):
        raise ValueError(
            f"class labels span [{int(labels.min())}, {int(labels.max())}], "
            f"expected 0..{num_classes - 1} (or {num_classes} for the null token)"
        )


class LabelContext(nn.Module):
    """What every class-label context shares: ``num_classes`` real classes, the null label ``num_classes``
    (the unconditional branch of classifier-free guidance), label checks at the data boundary."""

    num_classes: int

    @property
    def null_index(self) -> int:
        """The label value that selects the null (unconditional) token."""
        return self.num_classes

    def check_labels(self, labels: Tensor) -> None:
        """See :func:`check_class_labels`."""
        check_class_labels(labels, self.num_classes)

    @staticmethod
    def as_indices(labels: Tensor) -> Tensor:
        """Integer labels ``[B]`` as int64 (a float tensor is refused: it is a caller's bug)."""
        if labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"class labels must be an integer tensor, got {labels.dtype}")
        return labels.long()


class OneHotContext(LabelContext):
    """Class labels as a one-hot context token ``[B, 1, num_classes]`` (no parameters).

    How the original MOTFM code conditions on a class: the one-hot vector itself is the single token of the
    cross-attention context (``cross_attention_dim = num_classes``). Same interface as
    :class:`ClassEmbedding`; the null label ``num_classes`` maps to the zero vector, which such a model never
    saw in training (it has no classifier-free guidance).

    Args:
        num_classes: number of classes (the token width).
    """

    num_tokens = 1

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a one-hot class context needs num_classes >= 1, got {num_classes}")
        self.num_classes = self.dim = num_classes

    def forward(self, labels: Tensor) -> Tensor:
        """Map int64 labels ``[B]`` to one-hot float32 ``[B, 1, num_classes]`` (the null label: zeros)."""
        onehot = F.one_hot(self.as_indices(labels), self.num_classes + 1)[:, : self.num_classes]
        return onehot.float()[:, None]


class ClassEmbedding(LabelContext):
    """Class labels as a learned token sequence, the context of cross-attention.

    Index ``num_classes`` is the learned *null* token used for classifier-free guidance
    (Ho & Salimans 2022): the unconditional model is the same network given the null token.

    Args:
        num_classes: number of real classes.
        num_tokens: tokens per label (sequence length ``L`` of the context).
        dim: token width ``D``.
    """

    def __init__(self, num_classes: int, num_tokens: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1 or num_tokens < 1 or dim < 1:
            raise ValueError(f"class embedding needs positive sizes, got {num_classes=} {num_tokens=} {dim=}")
        self.num_classes, self.num_tokens, self.dim = num_classes, num_tokens, dim
        self.table = nn.Embedding(num_classes + 1, num_tokens * dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, labels: Tensor) -> Tensor:
        """Map int64 labels ``[B]`` (``num_classes`` = null; see :meth:`check_labels`) to ``[B, L, D]``."""
        return self.table(self.as_indices(labels)).view(-1, self.num_tokens, self.dim)
