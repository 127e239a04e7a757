"""ControlNet for mask conditioning (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models", Sec. 3).

A trainable copy of the UNet encoder (time embedding, input conv, down levels, middle block) reads
the noisy image plus an embedding of the mask; every activation it produces passes through a
zero-initialised 1x1 convolution and is added to the corresponding skip (and middle activation) of
the UNet. At initialisation all residuals are zero, so the conditioned model equals the base model.
The copy receives the same cross-attention context as the UNet.

When the flow runs on wavelet coefficients at ``1 / f`` the image side (``mask_downsample=f``, see
:mod:`motfm.representation`), the one-hot mask is rearranged losslessly to that resolution
(space-to-depth: the ``f^d`` one-hot vectors of each block become channels), so a one-voxel-thin structure
reaches the ControlNet intact and at the position of the coefficients that describe it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from motfm.nn.blocks import conv_nd, memory_format_of, zero_module
from motfm.nn.unet import UNet, UNetConfig, UNetEncoder
from motfm.representation.haar import space_to_depth


def check_mask(mask: Tensor, num_labels: int, spatial_dims: int) -> None:
    """Raise a clear error for a label map the ControlNet cannot read (reads values: a host sync on a GPU).

    Called where masks enter the suite (data loaders, the sampling CLIs), never inside ``forward``.

    Args:
        mask: int64 label map ``[B, 1, *spatial]`` with values in ``0 .. num_labels - 1``.
        num_labels: number of labels including background.
        spatial_dims: 2 or 3.
    """
    check_mask_shape(mask, spatial_dims)
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) >= num_labels):
        raise ValueError(
            f"mask labels span [{int(mask.min())}, {int(mask.max())}], expected 0..{num_labels - 1}"
        )


def check_mask_shape(mask: Tensor, spatial_dims: int) -> None:
    """Shape and dtype checks of a label map (no value reads, so no host-device synchronisation)."""
    if mask.ndim != spatial_dims + 2 or mask.shape[1] != 1:
        raise ValueError(
            f"mask must have shape [B, 1, {', '.join(['S'] * spatial_dims)}], got {tuple(mask.shape)}"
        )
    if mask.is_floating_point():
        raise ValueError(f"mask must be an integer label map, got dtype {mask.dtype}")


MASK_INPUTS = ("one_hot", "scaled")


def mask_channels(mask: Tensor, num_labels: int, spatial_dims: int, dtype: torch.dtype, mode: str) -> Tensor:
    """What the ControlNet's mask embedding reads from an integer label map.

    Args:
        mask: integer label map ``[B, 1, *spatial]``.
        num_labels: number of labels including background.
        spatial_dims: 2 or 3.
        dtype: the output dtype.
        mode: ``one_hot`` (the suite's models: ``[B, num_labels, *spatial]``, see :func:`one_hot_mask`) or
            ``scaled`` (the original MOTFM's input: one channel ``label / (num_labels - 1)`` in [0, 1], what
            its data code's global min-max normalisation makes of a label map ``0 .. num_labels - 1``).

    Returns:
        ``[B, num_labels or 1, *spatial]``.
    """
    if mode == "one_hot":
        return one_hot_mask(mask, num_labels, spatial_dims, dtype)
    check_mask_shape(mask, spatial_dims)
    return mask.to(dtype) / (num_labels - 1)


def one_hot_mask(
    mask: Tensor, num_labels: int, spatial_dims: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """One-hot channels of an integer label map, by comparison (no value checks, no host sync).

    Args:
        mask: integer label map ``[B, 1, *spatial]``; values outside ``0 .. num_labels - 1`` (rejected at the
            data boundary by :func:`check_mask`) would give all-zero channels.
        num_labels: number of labels including background.
        spatial_dims: 2 or 3.
        dtype: the output dtype.

    Returns:
        ``[B, num_labels, *spatial]`` in channels-last memory format (what the ControlNet's convolutions
        read; built in that layout, so no layout copy follows).
    """
    check_mask_shape(mask, spatial_dims)
    labels = torch.arange(num_labels, device=mask.device)
    return (mask.movedim(1, -1) == labels).to(dtype).movedim(-1, 1)


class MaskEmbedding(nn.Module):
    """Small convolutional embedding of a one-hot mask into the UNet's first feature width.

    The last convolution is zero-initialised, as in ControlNet's condition encoder.

    Args:
        spatial_dims: 2 or 3.
        in_ch: input channels (the one-hot labels, or 1 for a scaled mask).
        hidden: widths of the hidden convolutions (each followed by SiLU).
        out_ch: output channels.
    """

    def __init__(self, spatial_dims: int, in_ch: int, hidden: Sequence[int], out_ch: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_ch
        for h in hidden:
            layers += [conv_nd(spatial_dims, ch, h), nn.SiLU()]
            ch = h
        layers.append(zero_module(conv_nd(spatial_dims, ch, out_ch)))
        self.net = nn.Sequential(*layers)

    def forward(self, mask: Tensor) -> Tensor:
        """``[B, in_ch, *spatial] -> [B, out_ch, *spatial]``."""
        return self.net(mask)


class ControlNet(nn.Module):
    """The trainable encoder copy with zero convolutions.

    Args:
        cfg: the UNet's architecture.
        num_mask_labels: labels of the conditioning mask including background.
        mask_embed_channels: hidden widths of the mask embedding.
        mask_input: how the label map enters the embedding (see :func:`mask_channels`): ``one_hot`` or
            ``scaled`` (imported MOTFM models).
        mask_downsample: the image side over the network's input side (``2^L`` on ``L``-level wavelet
            coefficients, 1 on pixels); the mask's channels enter as ``channels * f^d`` (space to depth).
    """

    def __init__(
        self,
        cfg: UNetConfig,
        num_mask_labels: int,
        mask_embed_channels: Sequence[int] = (16, 32),
        mask_input: str = "one_hot",
        mask_downsample: int = 1,
    ) -> None:
        super().__init__()
        if num_mask_labels < 2:
            raise ValueError(
                f"a mask needs at least 2 labels (background and one structure), got {num_mask_labels}"
            )
        if mask_input not in MASK_INPUTS:
            raise ValueError(f"mask_input must be one of {MASK_INPUTS}, got {mask_input!r}")
        if mask_downsample < 1:
            raise ValueError(f"mask_downsample must be >= 1, got {mask_downsample}")
        self.cfg = cfg
        self.num_mask_labels = num_mask_labels
        self.mask_input = mask_input
        self.mask_downsample = mask_downsample
        in_ch = num_mask_labels if mask_input == "one_hot" else 1
        self.mask_embed = MaskEmbedding(
            cfg.spatial_dims, in_ch * mask_downsample**cfg.spatial_dims, mask_embed_channels, cfg.channels[0]
        )
        self.encoder = UNetEncoder(cfg)
        self.zero_convs = nn.ModuleList(
            zero_module(conv_nd(cfg.spatial_dims, c, c, kernel_size=1)) for c in self.encoder.skip_channels
        )
        self.mid_zero_conv = zero_module(conv_nd(cfg.spatial_dims, cfg.channels[-1], cfg.channels[-1], 1))

    @classmethod
    def from_unet(
        cls,
        unet: UNet,
        num_mask_labels: int,
        mask_embed_channels: Sequence[int] = (16, 32),
        mask_input: str = "one_hot",
        mask_downsample: int = 1,
    ) -> ControlNet:
        """Build a ControlNet whose encoder starts as an exact copy of ``unet``'s encoder."""
        net = cls(unet.cfg, num_mask_labels, mask_embed_channels, mask_input, mask_downsample)
        net.encoder.load_state_dict(unet.encoder.state_dict())
        return net

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        mask: Tensor,
        context: Tensor | None = None,
        scale: float = 1.0,
        r: Tensor | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        """Compute the residuals for the UNet.

        Args:
            x: noisy image ``[B, C, *spatial]``.
            t: time ``[B]``.
            mask: int64 label map ``[B, 1, *spatial * mask_downsample]`` (the image resolution).
            context: the same cross-attention context the UNet receives.
            scale: ``conditioning_scale`` multiplying every residual.
            r: the second time ``[B]`` of an average-velocity model (see :class:`UNetEncoder`).

        Returns:
            ``(down_residuals, mid_residual)`` matching the UNet's skips and middle activation.
        """
        m = mask_channels(mask, self.num_mask_labels, self.cfg.spatial_dims, x.dtype, self.mask_input)
        f = self.mask_downsample
        if tuple(m.shape[2:]) != tuple(s * f for s in x.shape[2:]):
            raise ValueError(
                f"mask spatial size {tuple(m.shape[2:])} differs from image {tuple(x.shape[2:])}"
                + (f" x {f} (the input is wavelet coefficients)" if f > 1 else "")
            )
        m = space_to_depth(m, f).contiguous(memory_format=memory_format_of(x))
        h, skips, _ = self.encoder(x, t, context, hint=self.mask_embed(m), r=r)
        down = [conv(s) * scale for conv, s in zip(self.zero_convs, skips)]
        return down, self.mid_zero_conv(h) * scale
