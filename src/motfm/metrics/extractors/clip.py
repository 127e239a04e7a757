"""``clip``: CLIP ViT-L/14@336px image embeddings (``openai/clip-vit-large-patch14-336``, the CMMD embedding),
L2-normalised, via ``transformers``; only from a local folder or the local Hugging Face cache."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from motfm.metrics.extractors.base import (
    ExtractorUnavailable,
    FeatureExtractor,
    register_extractor,
    state_dict_sha256,
    to_rgb,
)

CLIP_MODEL_ID = "openai/clip-vit-large-patch14-336"
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
