"""Framework-free image-generation metrics: Fréchet/kernel distances, IS, SSIM and feature extractors.

Plain PyTorch/NumPy; nothing here imports Lightning or Hydra.
"""

from motfm.metrics.extractors import (
    ExtractorUnavailable,
    FeatureExtractor,
    available_extractors,
    get_extractor,
    register_extractor,
)
from motfm.metrics.frechet import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    load_statistics,
    save_statistics,
)
from motfm.metrics.inception_score import inception_score
from motfm.metrics.kernels import cmmd, kid, median_bandwidth, mmd_rbf
from motfm.metrics.ssim import intra_set_ms_ssim, ms_ssim, paired_ssim, ssim

__all__ = [
    "ExtractorUnavailable",
    "FeatureExtractor",
    "available_extractors",
    "cmmd",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "get_extractor",
    "inception_score",
    "intra_set_ms_ssim",
    "kid",
    "load_statistics",
    "median_bandwidth",
    "mmd_rbf",
    "ms_ssim",
    "paired_ssim",
    "register_extractor",
    "save_statistics",
    "ssim",
]
