"""Former home of the feature extractors, now the package :mod:`motfm.metrics.extractors`.

Kept only because ``motfm.lit.metrics_callback`` (being refactored on another branch) still imports
``FeatureExtractor`` from here; remove this module once that import reads ``motfm.metrics.extractors``.
"""

from motfm.metrics.extractors import ExtractorUnavailable, FeatureExtractor, get_extractor

__all__ = ["ExtractorUnavailable", "FeatureExtractor", "get_extractor"]
