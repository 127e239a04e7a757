"""The input error of the evaluation entry points (reported in one line by :mod:`motfm.cli`)."""

from __future__ import annotations


class InputError(ValueError):
    """Missing or contradictory inputs of an evaluation: the message names the path or option."""
