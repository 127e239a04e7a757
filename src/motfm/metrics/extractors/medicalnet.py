"""``medicalnet``: the MedicalNet 3D ResNet encoder (Chen et al. 2019, "Med3D: Transfer Learning for 3D
Medical Image Analysis"; weights from Tencent/MedicalNet), from a local weights file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motfm.metrics.extractors.base import (
    ExtractorUnavailable,
    FeatureExtractor,
    register_extractor,
    sha256_file,
)


class _ZeroPadShortcut(nn.Module):
    """MedicalNet shortcut type A: strided identity, channels zero-padded (no parameters)."""

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


class _BasicBlock3d(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv3d(
            inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck3d(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class MedicalNetResNet(nn.Module):
    """The MedicalNet 3D ResNet encoder (Chen et al. 2019), without its segmentation head.

    A 7^3 stride-2 stem, 3^3 stride-2 max-pool, four stages of 64/128/256/512 planes with strides 1/2/1/1 and
    dilations 1/1/2/4, 1-channel input; the global average of the last stage is the feature vector.

    Args:
        blocks: residual blocks per stage, e.g. ``(1, 1, 1, 1)`` for ResNet-10, ``(3, 4, 6, 3)`` for 34/50.
        bottleneck: bottleneck blocks (ResNet-50 and deeper) instead of basic blocks.
        shortcut: ``"B"`` (1x1x1 conv + BN projection) or ``"A"`` (zero-padded identity) where shapes change.
    """

    def __init__(
        self, blocks: tuple[int, int, int, int], bottleneck: bool, shortcut: Literal["A", "B"] = "B"
    ):
        super().__init__()
        block = _Bottleneck3d if bottleneck else _BasicBlock3d
        self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        inplanes = 64
        stages = []
        for planes, count, stride, dilation in zip((64, 128, 256, 512), blocks, (1, 2, 1, 1), (1, 1, 2, 4)):
            out = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = (
                    _ZeroPadShortcut(out, stride)
                    if shortcut == "A"
                    else nn.Sequential(
                        nn.Conv3d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm3d(out)
                    )
                )
            layers = [block(inplanes, planes, stride, dilation, downsample)]
            layers += [block(out, planes, 1, dilation, None) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = inplanes

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 1, D, H, W]`` -> ``[B, 512 * expansion]``."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.flatten(2).mean(2)


def _medicalnet_state_dict(path: Path) -> dict[str, Tensor]:
    """The encoder weights of a MedicalNet checkpoint (unwrapped, ``module.`` and ``conv_seg`` removed)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("conv_seg.")}


def _medicalnet_architecture(
    state: dict[str, Tensor],
) -> tuple[tuple[int, int, int, int], bool, Literal["A", "B"]]:
    """Infer (blocks per stage, bottleneck, shortcut type) from checkpoint keys."""
    blocks = tuple(
        len({k.split(".")[1] for k in state if k.startswith(f"layer{stage}.")}) for stage in (1, 2, 3, 4)
    )
    if min(blocks) == 0:
        raise ValueError("not a MedicalNet ResNet checkpoint: keys layer1..layer4 missing")
    bottleneck = "layer1.0.conv3.weight" in state
    shortcut: Literal["A", "B"] = "B" if any(".downsample.0.weight" in k for k in state) else "A"
    return blocks, bottleneck, shortcut


@register_extractor("medicalnet")
class MedicalNetExtractor(FeatureExtractor):
    """MedicalNet 3D ResNet features (512-d for ResNet-10/18/34, 2048-d for ResNet-50+) of 1-channel volumes.

    The architecture (depth, block type, shortcut type) is read from the checkpoint. Each volume is
    normalised to zero mean and unit variance over all its voxels before the network (MedicalNet trains on
    z-scored intensities; its loader takes the statistics over the non-zero voxels only).

    Args:
        weights_path: a Tencent/MedicalNet checkpoint (``resnet_10_23dataset.pth``,
            ``resnet_50_23dataset.pth``, ...), loaded with ``torch.load(weights_only=True)``.
    """

    spatial_dims = 3

    def __init__(self, weights_path: str | os.PathLike[str] | None = None):
        super().__init__()
        if weights_path is None or not Path(weights_path).is_file():
            raise ExtractorUnavailable(
                "extractor 'medicalnet' needs MedicalNet 3D ResNet weights from Tencent/MedicalNet "
                "(e.g. resnet_10_23dataset.pth or resnet_50_23dataset.pth): pass weights_path=<file>"
                + ("" if weights_path is None else f"; not found: {weights_path}")
            )
        state = _medicalnet_state_dict(Path(weights_path))
        blocks, bottleneck, shortcut = _medicalnet_architecture(state)
        self.net = MedicalNetResNet(blocks, bottleneck, shortcut)
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(f"{weights_path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        depth = sum(blocks) * (3 if bottleneck else 2) + 2
        self.feature_dim = self.net.out_channels
        self.name = f"medicalnet_resnet{depth}"
        self.weights_hash = sha256_file(weights_path)

    def forward(self, volumes: Tensor) -> Tensor:
        """``[B, 1, D, H, W]`` (any intensity range) -> ``[B, F]``."""
        self.check_input(volumes)
        if volumes.shape[1] != 1:
            raise ValueError(f"medicalnet expects 1-channel volumes, got {volumes.shape[1]} channels")
        x = volumes.float()
        flat = x.flatten(1)
        mean = flat.mean(1).reshape(-1, 1, 1, 1, 1)
        std = flat.std(1).reshape(-1, 1, 1, 1, 1).clamp_min(1e-6)
        return self.net((x - mean) / std)
