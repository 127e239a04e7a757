"""Multi-head attention and the spatial transformer used at the UNet's attention levels.

Attention runs through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on
CUDA, a fused kernel on CPU) or, where installed and on CUDA, xformers' memory-efficient attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motfm.nn.blocks import GroupNorm

BACKENDS = ("sdpa", "xformers")
# The attention at a UNet level: the suite's spatial transformer, or MONAI's plain self-attention block (what
# MONAI's DiffusionModelUNet builds at the attention levels of unconditional models; imported MOTFM models).
ATTENTION_BLOCKS = ("transformer", "plain")


def check_backend(backend: str) -> None:
    """Raise a clear error for an unknown or unusable attention backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except ImportError as err:
            raise ValueError(
                "attention_backend=xformers needs the optional package xformers (CUDA only): "
                "pip install 'motfm[cuda]', or use attention_backend=sdpa"
            ) from err


def attend(q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa", dropout: float = 0.0) -> Tensor:
    """Scaled dot-product attention softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017, Eq. 1).

    Args:
        q: queries ``[B, heads, N, d]``.
        k: keys ``[B, heads, M, d]``.
        v: values ``[B, heads, M, d]``.
        backend: ``sdpa`` or ``xformers`` (the latter only for CUDA tensors).
        dropout: attention dropout probability (training only).

    Returns:
        ``[B, heads, N, d]``.
    """
    if backend == "xformers" and q.is_cuda:
        import xformers.ops as xops

        return xformers_attention(xops, q, k, v, dropout)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)


def xformers_attention(ops: object, q: Tensor, k: Tensor, v: Tensor, dropout: float = 0.0) -> Tensor:
    """:func:`attend` through ``ops.memory_efficient_attention`` (xformers), which takes and returns
    ``[B, N, heads, d]``: ``q`` ``[B, heads, N, d]``, ``k`` / ``v`` ``[B, heads, M, d]`` -> ``[B, heads, N,
    d]``."""
    out = ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), p=dropout)
    return out.transpose(1, 2)


class MultiHeadAttention(nn.Module):
    """Self-attention (``context_dim=None``) or cross-attention to a context sequence.

    Args:
        dim: query width.
        heads: number of heads (``dim`` must be divisible by it).
        context_dim: width of the context tokens for cross-attention.
        dropout: attention dropout.
        backend: ``sdpa`` or ``xformers``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        backend: str = "sdpa",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.dropout, self.backend = heads, dropout, backend
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Attend from ``x`` ``[B, N, dim]`` to ``context`` ``[B, M, context_dim]`` (or to ``x`` itself)."""
        k, v = self.to_kv(x if context is None else context).chunk(2, dim=-1)
        q, k, v = self._split(self.to_q(x)), self._split(k), self._split(v)
        out = attend(q, k, v, self.backend, self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(x.shape))


class FeedForward(nn.Module):
    """GEGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer"), width multiplier 4."""

    def __init__(self, dim: int, dropout: float = 0.0, mult: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.drop = nn.Dropout(dropout)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, N, dim] -> [B, N, dim]``."""
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.drop(a * F.gelu(gate)))


class TransformerLayer(nn.Module):
    """Pre-norm layer: self-attention, optional cross-attention to a context, feed-forward.

    ``ff_mult=0`` leaves the feed-forward out (a plain attention block, as MONAI's ``DiffusionModelUNet``
    builds for unconditional models).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        context_dim: int | None,
        dropout: float = 0.0,
        backend: str = "sdpa",
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, None, dropout, backend)
        self.cross_attn = None
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.cross_attn = MultiHeadAttention(dim, heads, context_dim, dropout, backend)
        self.ff = None
        if ff_mult > 0:
            self.norm3 = nn.LayerNorm(dim)
            self.ff = FeedForward(dim, dropout, ff_mult)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``[B, N, dim] -> [B, N, dim]``; ``context`` ``[B, M, context_dim]`` iff cross-attention."""
        x = x + self.self_attn(self.norm1(x))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this attention block cross-attends to a context, but none was given")
            x = x + self.cross_attn(self.norm2(x), context)
        return x if self.ff is None else x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the positions of a feature map, 2D or 3D (Rombach et al. 2022, Sec. 3.3).

    Args:
        channels: feature channels ``C`` (also the token width).
        head_dim: channels per head.
        num_layers: transformer layers.
        context_dim: width of the cross-attention context (``None``: self-attention only).
        norm_groups: GroupNorm groups of the input normalisation.
        dropout: dropout in attention and feed-forward.
        backend: ``sdpa`` or ``xformers``.
        ff_mult: width multiplier of the feed-forward (0: none).
    """

    def __init__(
        self,
        channels: int,
        head_dim: int,
        num_layers: int = 1,
        context_dim: int | None = None,
        norm_groups: int = 32,
        dropout: float = 0.0,
        backend: str = "sdpa",
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention channels {channels} are not divisible by head_dim {head_dim}")
        self.norm = GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.layers = nn.ModuleList(
            TransformerLayer(channels, channels // head_dim, context_dim, dropout, backend, ff_mult)
            for _ in range(num_layers)
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``[B, C, *spatial] -> [B, C, *spatial]`` (residual)."""
        b, c, *spatial = x.shape
        h = self.proj_in(torch.flatten(self.norm(x), 2).transpose(1, 2))
        for layer in self.layers:
            h = layer(h, context)
        h = self.proj_out(h).transpose(1, 2).reshape(b, c, *spatial)
        return x + h


class AttentionBlock(nn.Module):
    """Plain multi-head self-attention over the positions of a feature map, with a residual connection.

    GroupNorm, query / key / value projections with biases, attention, and no output projection: MONAI
    Generative's ``AttentionBlock`` (built at the attention levels of ``DiffusionModelUNet``'s unconditional
    models, so of the original MOTFM's unconditional and 3D networks), whose ``proj_attn`` layer exists but is
    never applied in its forward pass (monai-generative 0.2.3).

    Args:
        channels: feature channels ``C`` (also the token width).
        head_dim: channels per head.
        norm_groups: GroupNorm groups.
        backend: ``sdpa`` or ``xformers``.
    """

    def __init__(self, channels: int, head_dim: int, norm_groups: int = 32, backend: str = "sdpa") -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention channels {channels} are not divisible by head_dim {head_dim}")
        self.heads, self.backend = channels // head_dim, backend
        self.norm = GroupNorm(norm_groups, channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(channels, 2 * channels)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``[B, C, *spatial] -> [B, C, *spatial]`` (residual); a ``context`` is refused."""
        if context is not None:
            raise ValueError("a plain attention block has no cross-attention, but a context was given")
        b, c, *spatial = x.shape
        h = torch.flatten(self.norm(x), 2).transpose(1, 2)
        q, (k, v) = self.to_q(h), self.to_kv(h).chunk(2, dim=-1)
        q, k, v = (y.view(b, -1, self.heads, c // self.heads).transpose(1, 2) for y in (q, k, v))
        out = attend(q, k, v, self.backend)
        return x + out.transpose(2, 3).reshape(b, c, *spatial)
