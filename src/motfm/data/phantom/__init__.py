"""Procedural phantoms: the embedded default datasets, generated on the fly and fully deterministic.

Two datasets follow the sample contract of :mod:`motfm.data.base`:

- :class:`EchoPhantom`: 2D apical echocardiography (B-mode) images ``[1, S, S]`` with a label map of the left
  ventricle cavity, myocardium and left atrium, in four classes (2- or 4-chamber view x end-diastole or
  end-systole);
- :class:`BrainPhantom`: 3D head volumes ``[1, S, S, S]`` with a brain tumour labelled loosely after the
  MSD brain-tumour convention (edema, non-enhancing core, enhancing rim), in classes of tumour size.

Sample ``i`` of a split depends only on ``(seed, split, i)`` (a :class:`numpy.random.Generator` seeded from
the three), never on the worker process or the order of access. Every anatomical structure has its own mean
intensity, which the deterministic segmenters of :mod:`motfm.metrics.fidelity` use to recover the label map
from an image (the echo intensities are documented in decibels, see :data:`ECHO_LEVELS_DB`).
"""

from motfm.data.phantom.brain import BRAIN_FOV_MM, BRAIN_LEVELS, BRAIN_MASK_LABELS, BrainPhantom, brain_affine
from motfm.data.phantom.echo import (
    ECHO_DISPLAY_DB,
    ECHO_LEVELS_DB,
    ECHO_MASK_LABELS,
    ECHO_PHASES,
    ECHO_VIEWS,
    EchoPhantom,
    echo_db_to_image,
    echo_geometry,
    echo_image_to_db,
)

__all__ = [
    "BRAIN_FOV_MM",
    "BRAIN_LEVELS",
    "BRAIN_MASK_LABELS",
    "ECHO_DISPLAY_DB",
    "ECHO_LEVELS_DB",
    "ECHO_MASK_LABELS",
    "ECHO_PHASES",
    "ECHO_VIEWS",
    "BrainPhantom",
    "EchoPhantom",
    "brain_affine",
    "echo_db_to_image",
    "echo_geometry",
    "echo_image_to_db",
]
