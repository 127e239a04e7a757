"""A 3D convolution that keeps single-volume CPU batches on oneDNN.

PyTorch chooses the CPU kernel of a float32 convolution by a rule written for 2D images
(``ConvParams::use_mkldnn`` in ``aten/src/ATen/native/Convolution.cpp``): a batch of one goes to oneDNN only
if ``N * C * D * H > 20480``; the width is not counted. Every smaller 3D batch of one falls to
``aten::slow_conv3d_forward`` (im2col and a GEMM): for a 3x3x3 kernel on channels-last volumes of 4^3 to
32^3, 1.2-14x slower than oneDNN in the forward pass and up to 1.6x forward + backward (2-core AVX2 EPYC,
``scripts/bench_conv3d_routing.py``, ``benchmarks/2026-11-29-cpu-conv3d-routing.md``). That is the inner
levels of a 3D UNet at 32^3, batch 1: how volumes are sampled one at a time and trained at large sizes. The
original MOTFM stack (MONAI ``nn.Conv3d``) takes the slow path there too.

:class:`Conv3d` calls oneDNN directly for those inputs when the kernel has more than one tap and the volume
has at least :data:`ONEDNN_MIN_VOXELS_CHANNELS_LAST` voxels in channels-last layout (the suite's) or
:data:`ONEDNN_MIN_VOXELS` in contiguous layout; below those sizes PyTorch's path is as fast. 1x1x1 kernels
(a few skip projections) stay on PyTorch's path, which wins for them below 12^3 and in contiguous layout.
Everything else goes through ``nn.Conv3d`` unchanged: CUDA, batches above one, reduced precision and
autocast, forward-mode AD (oneDNN's kernel has no forward-mode derivative) and ``torch.compile`` (the oneDNN
operator has no fake-tensor kernel to trace; the compiler picks its own convolution). Both kernels compute the
same convolution (to float32 rounding), and oneDNN's has a backward pass (``convolution_backward``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from motfm.nn.forward_ad import forward_ad_active

ONEDNN_MIN_VOXELS = 8**3
"""Smallest ``D * H * W`` of a contiguous batch of one that is sent to oneDNN (PyTorch's path wins below)."""
ONEDNN_MIN_VOXELS_CHANNELS_LAST = 4**3
"""The same for a channels-last batch (the suite's layout), where oneDNN needs no reordering."""

_ONEDNN_BUILT = torch.backends.mkldnn.is_available()


def min_voxels(x: Tensor) -> int:
    """The smallest volume :class:`Conv3d` sends to oneDNN for the memory layout of ``x``."""
    if x.is_contiguous(memory_format=torch.channels_last_3d):
        return ONEDNN_MIN_VOXELS_CHANNELS_LAST
    return ONEDNN_MIN_VOXELS


def routes_to_onednn(x: Tensor, conv: nn.Conv3d) -> bool:
    """Whether :class:`Conv3d` sends ``x`` ``[N, C, D, H, W]`` to oneDNN instead of PyTorch's choice."""
    return (
        _ONEDNN_BUILT
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and x.ndim == 5
        and x.shape[0] == 1
        and math.prod(x.shape[2:]) >= min_voxels(x)
        and math.prod(conv.kernel_size) > 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not torch.is_autocast_enabled("cpu")
        and not forward_ad_active()
        and not torch.compiler.is_compiling()
    )


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs single-volume float32 CPU batches on oneDNN (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C_in, D, H, W] -> [N, C_out, D', H', W']``."""
        if routes_to_onednn(x, self):
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super().forward(x)
