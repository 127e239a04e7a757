"""Convolutional building blocks shared by 2D and 3D networks (chosen by ``spatial_dims``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motfm.nn.conv3d import Conv3d
from motfm.nn.forward_ad import forward_ad_active

RESAMPLES = (None, "down", "up")


def conv_nd(spatial_dims: int, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    """A 2D or 3D convolution with 'same' padding for odd kernels (3D: :class:`motfm.nn.conv3d.Conv3d`)."""
    conv = {2: nn.Conv2d, 3: Conv3d}[spatial_dims]
    return conv(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2)


def zero_module(module: nn.Module) -> nn.Module:
    """Set all parameters of ``module`` to zero and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def check_groups(channels: int, groups: int) -> None:
    """Raise a clear error if GroupNorm cannot split ``channels`` into ``groups``."""
    if channels % groups:
        raise ValueError(f"channels {channels} are not divisible by norm_groups {groups}")


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (Wu & He 2018) that also works under forward-mode AD on channels-last tensors.

    Under :func:`~motfm.nn.forward_ad.forward_ad_mode` it normalises a contiguous fp32 copy with autocast
    off: PyTorch's forward-mode rule of ``group_norm`` cannot read channels-last strides, and under CPU bf16
    autocast it returns a bf16 primal with an fp32 tangent, which the next convolution refuses ("Input type
    (torch.FloatTensor) and weight type (CPUBFloat16Type) should be the same"). The fp32 output is cast back
    to bf16 by the next autocast operation, primal and tangent alike. Otherwise it is the fused kernel,
    except for bf16 channels-last maps of at most ``SMALL_MAP`` positions on a CPU: PyTorch's bf16
    channels-last kernel is 2.4-5x slower there than normalising an fp32 copy and casting back (AMX Xeon, 1
    and 2 threads: ``[4, 128, 16, 16]`` 0.42 against 0.09 ms, ``[4, 224, 8, 8]`` 0.125 against 0.035; from
    32x32 on the bf16 kernel is 2-4x the faster; docs/architecture.md, Performance notes).
    """

    SMALL_MAP = 256

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, *spatial] -> [B, C, *spatial]``."""
        if forward_ad_active():
            fmt = memory_format_of(x)
            with torch.autocast(x.device.type, enabled=False):
                out = F.group_norm(x.contiguous().float(), self.num_groups, self.weight, self.bias, self.eps)
            return out.contiguous(memory_format=fmt)
        if (
            x.dtype == torch.bfloat16
            and x.device.type == "cpu"
            and x[0, 0].numel() <= self.SMALL_MAP
            and memory_format_of(x) is not torch.contiguous_format
        ):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)
        return super().forward(x)


def memory_format_of(x: Tensor) -> torch.memory_format:
    """The memory format ``x`` is laid out in: channels-last (2D / 3D) where its strides allow it (a map
    with one channel or one position is both), else contiguous."""
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def resample(x: Tensor, mode: str | None) -> Tensor:
    """Halve (``down``: 2x average pooling) or double (``up``: nearest neighbour) every spatial size."""
    if mode == "down":
        return (F.avg_pool2d if x.ndim == 4 else F.avg_pool3d)(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


class ResBlock(nn.Module):
    """Residual block with GroupNorm, SiLU and an additive time embedding (Ho et al. 2020, App. B).

    With ``resample`` it also changes the resolution, between the first normalisation and the first
    convolution, on both the residual and the skip path (BigGAN's up/down residual blocks, Brock et al. 2019;
    MONAI's ``resblock_updown``, used by the MOTFM paper's networks).

    Args:
        spatial_dims: 2 or 3.
        in_ch: input channels.
        out_ch: output channels.
        temb_dim: width of the time embedding.
        norm_groups: GroupNorm groups.
        dropout: dropout before the second convolution.
        resample: ``None``, ``"down"`` (2x average pooling) or ``"up"`` (2x nearest neighbour).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_ch: int,
        out_ch: int,
        temb_dim: int,
        norm_groups: int,
        dropout: float = 0.0,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        if resample not in RESAMPLES:
            raise ValueError(f"resample must be one of {RESAMPLES}, got {resample!r}")
        self.resample = resample
        check_groups(in_ch, norm_groups)
        check_groups(out_ch, norm_groups)
        self.norm1 = GroupNorm(norm_groups, in_ch, eps=1e-6)
        self.conv1 = conv_nd(spatial_dims, in_ch, out_ch)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = GroupNorm(norm_groups, out_ch, eps=1e-6)
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_module(conv_nd(spatial_dims, out_ch, out_ch))
        self.skip = nn.Identity() if in_ch == out_ch else conv_nd(spatial_dims, in_ch, out_ch, kernel_size=1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """``x`` ``[B, in_ch, *S]``, ``temb`` ``[B, temb_dim]`` -> ``[B, out_ch, *S']`` (``S' = S``, ``S/2``
        or ``2S``)."""
        h = F.silu(self.norm1(x))
        if self.resample is not None:
            x, h = resample(x, self.resample), resample(h, self.resample)
        h = self.conv1(h)
        h = h + self.temb(F.silu(temb)).view(*temb.shape[:1], -1, *([1] * (x.ndim - 2)))
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve every spatial size with a stride-2 convolution."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims, channels, channels, stride=2)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        """``[B, C, *S] -> [B, C, *S/2]`` (``temb`` unused: called as a resampling :class:`ResBlock`)."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double every spatial size (nearest neighbour) and convolve."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims, channels, channels)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        """``[B, C, *S] -> [B, C, *2S]`` (``temb`` unused, as in :class:`Downsample`)."""
        return self.conv(resample(x, "up"))
