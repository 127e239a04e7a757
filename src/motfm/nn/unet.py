"""The velocity UNet, 2D or 3D, with attention and optional cross-attention to a context.

Structure (Ho et al. 2020; Rombach et al. 2022; MONAI's DiffusionModelUNet): an encoder of
resolution levels (residual blocks, attention where asked, a stride-2 convolution between levels),
a middle block (residual, attention, residual) and a decoder that mirrors the encoder and consumes
every encoder activation as a skip connection. The encoder (with the time embedding and the middle
block) is its own module so that a ControlNet can be an exact copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from motfm.nn.attention import ATTENTION_BLOCKS, AttentionBlock, SpatialTransformer, check_backend
from motfm.nn.blocks import Downsample, GroupNorm, ResBlock, Upsample, check_groups, conv_nd, zero_module
from motfm.nn.embeddings import IntervalEmbedding, TimeEmbedding


class ResAttnStage(nn.Module):
    """A residual block optionally followed by attention (a spatial transformer or a plain block)."""

    def __init__(self, res: ResBlock, attn: nn.Module | None) -> None:
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: Tensor, temb: Tensor, context: Tensor | None, skip: Tensor | None = None) -> Tensor:
        """``[B, C_in, *S] -> [B, C_out, *S]``; a decoder stage first concatenates its ``skip`` to ``x``
        (inside the stage, so that activation checkpointing does not store the concatenation)."""
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = self.res(x, temb)
        return x if self.attn is None else self.attn(x, context)


class UNetConfig:
    """Validated architecture hyper-parameters shared by :class:`UNet` and the ControlNet.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: velocity channels (defaults to ``in_channels``).
        channels: feature channels per resolution level.
        num_res_blocks: residual blocks per level (an int or one per level).
        attention_levels: whether each level has attention.
        head_dim: channels per attention head, one number or one per level (MONAI's ``num_head_channels``;
            the MOTFM paper's networks use one head per level: ``head_dim`` = that level's channels).
        norm_groups: GroupNorm groups.
        dropout: dropout in residual and attention blocks.
        transformer_num_layers: transformer layers per attention block.
        context_dim: width of the cross-attention context (``None``: no cross-attention).
        attention_backend: ``sdpa`` or ``xformers``.
        interval_embedding: also embed a second time ``r`` (MeanFlow's average-velocity models), through
            :class:`~motfm.nn.embeddings.IntervalEmbedding` of ``r - t``.
        resblock_updown: change resolution with residual blocks (average pooling / nearest neighbour inside
            a :class:`ResBlock`, as MONAI's ``resblock_updown`` in the MOTFM paper's networks) instead of a
            stride-2 convolution / upsampling followed by a convolution.
        ff_mult: width multiplier of the transformer feed-forward (0: attention only).
        attention_block: ``transformer`` (:class:`~motfm.nn.attention.SpatialTransformer`) or ``plain``
            (:class:`~motfm.nn.attention.AttentionBlock`, MONAI's attention of unconditional models).
        max_timestep: ``None``: time enters as a float; an integer ``T``: floored to ``floor(t (T - 1))``
            first, as in the original MOTFM code (see :class:`~motfm.nn.embeddings.TimeEmbedding`).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: Sequence[int] = (64, 128, 256),
        num_res_blocks: int | Sequence[int] = 2,
        attention_levels: Sequence[bool] = (False, True, True),
        head_dim: int | Sequence[int] = 32,
        norm_groups: int = 32,
        dropout: float = 0.0,
        transformer_num_layers: int = 1,
        context_dim: int | None = None,
        attention_backend: str = "sdpa",
        interval_embedding: bool = False,
        resblock_updown: bool = False,
        ff_mult: int = 4,
        attention_block: str = "transformer",
        max_timestep: int | None = None,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must list at least one level")
        if isinstance(num_res_blocks, int):
            num_res_blocks = (num_res_blocks,) * len(channels)
        num_res_blocks = tuple(int(n) for n in num_res_blocks)
        attention_levels = tuple(bool(a) for a in attention_levels)
        if len(num_res_blocks) != len(channels) or len(attention_levels) != len(channels):
            raise ValueError(
                f"num_res_blocks {num_res_blocks} and attention_levels {attention_levels} need one entry "
                f"per level of channels {channels}"
            )
        if min(num_res_blocks) < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        head_dims = (head_dim,) * len(channels) if isinstance(head_dim, int) else tuple(head_dim)
        head_dims = tuple(int(d) for d in head_dims)
        if len(head_dims) != len(channels) or min(head_dims) < 1:
            raise ValueError(f"head_dim {head_dim} must be a positive int or one per level of {channels}")
        for c, d, attention in zip(channels, head_dims, attention_levels):
            check_groups(c, norm_groups)
            if attention and c % d:
                raise ValueError(f"channels {c} of an attention level are not divisible by head_dim {d}")
        if transformer_num_layers < 1:
            raise ValueError(f"transformer_num_layers must be >= 1, got {transformer_num_layers}")
        if ff_mult < 0:
            raise ValueError(f"ff_mult must be >= 0, got {ff_mult}")
        check_backend(attention_backend)
        if attention_block not in ATTENTION_BLOCKS:
            raise ValueError(f"attention_block must be one of {ATTENTION_BLOCKS}, got {attention_block!r}")
        if attention_block == "plain" and context_dim is not None:
            raise ValueError("attention_block=plain has no cross-attention, so no class conditioning")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.channels = channels
        self.num_res_blocks = num_res_blocks
        self.attention_levels = attention_levels
        self.head_dims = head_dims
        self.norm_groups = norm_groups
        self.dropout = dropout
        self.transformer_num_layers = transformer_num_layers
        self.context_dim = context_dim
        self.attention_backend = attention_backend
        self.interval_embedding = interval_embedding
        self.resblock_updown = bool(resblock_updown)
        self.ff_mult = int(ff_mult)
        self.attention_block = attention_block
        self.max_timestep = None if max_timestep is None else int(max_timestep)

    @property
    def temb_dim(self) -> int:
        """Width of the time embedding (4x the first level's channels)."""
        return 4 * self.channels[0]

    @property
    def downsample_factor(self) -> int:
        """Every spatial size must be divisible by this."""
        return 2 ** (len(self.channels) - 1)

    def res_attn(self, in_ch: int, out_ch: int, level: int, attention: bool = True) -> ResAttnStage:
        """A residual block, with a spatial transformer when ``attention`` and the ``level`` has attention."""
        res = ResBlock(self.spatial_dims, in_ch, out_ch, self.temb_dim, self.norm_groups, self.dropout)
        attn: nn.Module | None = None
        if attention and self.attention_levels[level] and self.attention_block == "plain":
            attn = AttentionBlock(out_ch, self.head_dims[level], self.norm_groups, self.attention_backend)
        elif attention and self.attention_levels[level]:
            attn = SpatialTransformer(
                out_ch,
                self.head_dims[level],
                self.transformer_num_layers,
                self.context_dim,
                self.norm_groups,
                self.dropout,
                self.attention_backend,
                self.ff_mult,
            )
        return ResAttnStage(res, attn)

    def resampler(self, channels: int, mode: str) -> nn.Module:
        """The block between two levels: ``mode`` ``down`` halves, ``up`` doubles every spatial size.

        Called as ``block(x, temb)`` (the convolutional variants ignore ``temb``).
        """
        if self.resblock_updown:
            return ResBlock(
                self.spatial_dims, channels, channels, self.temb_dim, self.norm_groups, self.dropout, mode
            )
        return (Downsample if mode == "down" else Upsample)(self.spatial_dims, channels)


def run_stage(owner: nn.Module, stage: nn.Module, *args: Any) -> Tensor:
    """Call ``stage(*args)``, through activation checkpointing when ``owner`` asks for it and trains.

    With ``owner.activation_checkpointing`` set, in training mode and with gradients enabled, the stage's
    inner activations are not stored but recomputed in the backward pass
    (``torch.utils.checkpoint.checkpoint(use_reentrant=False)``, Chen et al. 2016, "Training Deep Nets with
    Sublinear Memory Cost"): only its input stays in memory. Same values and gradients, one more forward.
    """
    if owner.activation_checkpointing and owner.training and torch.is_grad_enabled():
        return checkpoint(stage, *args, use_reentrant=False)
    return stage(*args)


class UNetEncoder(nn.Module):
    """Time embedding, input convolution, down levels and middle block.

    ``forward`` returns the middle activation, the skip activations (in the order the decoder
    consumes them in reverse) and the time embedding.

    Attributes:
        activation_checkpointing: recompute each residual / attention stage in the backward pass instead of
            storing its activations (training only; see :func:`run_stage`).
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = False
        self.time_embed = TimeEmbedding(cfg.channels[0], cfg.temb_dim, cfg.max_timestep)
        self.interval_embed = (
            IntervalEmbedding(cfg.channels[0], cfg.temb_dim) if cfg.interval_embedding else None
        )
        self.conv_in = conv_nd(cfg.spatial_dims, cfg.in_channels, cfg.channels[0])
        self.levels = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_channels = [cfg.channels[0]]
        ch = cfg.channels[0]
        for level, out_ch in enumerate(cfg.channels):
            stages = nn.ModuleList()
            for _ in range(cfg.num_res_blocks[level]):
                stages.append(cfg.res_attn(ch, out_ch, level))
                ch = out_ch
                skip_channels.append(ch)
            self.levels.append(stages)
            last = level == len(cfg.channels) - 1
            self.downsamplers.append(nn.Identity() if last else cfg.resampler(ch, "down"))
            if not last:
                skip_channels.append(ch)
        self.mid1 = cfg.res_attn(ch, ch, len(cfg.channels) - 1)
        self.mid2 = cfg.res_attn(ch, ch, len(cfg.channels) - 1, attention=False)
        self.skip_channels = skip_channels

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor | None = None,
        hint: Tensor | None = None,
        r: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor], Tensor]:
        """Encode.

        Args:
            x: ``[B, in_channels, *spatial]``.
            t: time ``[B]`` in [0, 1].
            context: cross-attention context ``[B, L, context_dim]``.
            hint: added after the input convolution, ``[B, channels[0], *spatial]`` (ControlNet).
            r: the second time ``[B]`` (models with ``interval_embedding``; ``None``: ``r = t``).

        Returns:
            ``(mid [B, C_last, *spatial / 2^(levels-1)], skips, temb [B, temb_dim])``.
        """
        temb = self.time_embed(t)
        if r is not None:
            if self.interval_embed is None:
                raise ValueError("this network has no second time input: build it with interval_embedding")
            temb = temb + self.interval_embed(r - t)
        h = self.conv_in(x)
        if hint is not None:
            h = h + hint
        skips = [h]
        for stages, down in zip(self.levels, self.downsamplers):
            for stage in stages:
                h = run_stage(self, stage, h, temb, context)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = run_stage(self, down, h, temb)
                skips.append(h)
        h = run_stage(self, self.mid1, h, temb, context)
        h = run_stage(self, self.mid2, h, temb, None)
        return h, skips, temb


class UNet(nn.Module):
    """The velocity UNet.

    Args:
        cfg: the architecture (see :class:`UNetConfig`).

    Attributes:
        activation_checkpointing: as :class:`UNetEncoder`'s, for the decoder stages (set both through
            :meth:`motfm.nn.velocity.VelocityNet.set_activation_checkpointing`).
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = False
        self.encoder = UNetEncoder(cfg)
        skip_channels = list(self.encoder.skip_channels)
        ch = cfg.channels[-1]
        self.levels = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(len(cfg.channels))):
            out_ch = cfg.channels[level]
            stages = nn.ModuleList()
            for _ in range(cfg.num_res_blocks[level] + 1):
                stages.append(cfg.res_attn(ch + skip_channels.pop(), out_ch, level))
                ch = out_ch
            self.levels.append(stages)
            self.upsamplers.append(cfg.resampler(ch, "up") if level > 0 else nn.Identity())
        self.norm_out = GroupNorm(cfg.norm_groups, ch, eps=1e-6)
        self.conv_out = zero_module(conv_nd(cfg.spatial_dims, ch, cfg.out_channels))

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error for an input the network cannot process."""
        cfg = self.cfg
        if x.ndim != cfg.spatial_dims + 2 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"expected input [B, {cfg.in_channels}, " + ", ".join(["S"] * cfg.spatial_dims) + "], "
                f"got {tuple(x.shape)}"
            )
        bad = [s for s in x.shape[2:] if s % cfg.downsample_factor]
        if bad:
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} is not divisible by {cfg.downsample_factor} "
                f"(2^(levels-1) for {len(cfg.channels)} levels)"
            )

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor | None = None,
        down_residuals: Sequence[Tensor] | None = None,
        mid_residual: Tensor | None = None,
        r: Tensor | None = None,
    ) -> Tensor:
        """Predict the velocity.

        Args:
            x: ``[B, in_channels, *spatial]``.
            t: time ``[B]`` in [0, 1].
            context: cross-attention context ``[B, L, context_dim]`` (class-conditional models).
            down_residuals: ControlNet residuals added to the skips (one per skip).
            mid_residual: ControlNet residual added to the middle activation.
            r: the second time ``[B]`` of an average-velocity model.

        Returns:
            ``[B, out_channels, *spatial]``.
        """
        self.check_input(x)
        h, skips, temb = self.encoder(x, t, context, r=r)
        if down_residuals is not None:
            skips = [s + r for s, r in zip(skips, down_residuals, strict=True)]
        if mid_residual is not None:
            h = h + mid_residual
        for stages, up in zip(self.levels, self.upsamplers):
            for stage in stages:
                h = run_stage(self, stage, h, temb, context, skips.pop())
            if not isinstance(up, nn.Identity):
                h = run_stage(self, up, h, temb)
        return self.conv_out(F.silu(self.norm_out(h)))
