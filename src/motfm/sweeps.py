"""Hyper-parameter sweeps (``hparams_search=optuna``): the study's storage and the value a trial returns."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)


def sqlite_storage(path: str | os.PathLike[str]) -> str:
    """The SQLite URL of an Optuna study stored at ``path``, creating its folder.

    The Optuna sweeper opens the study before any trial has created the sweep folder, and SQLite does not
    create folders; a study reopened from the same file continues with new trials.

    Args:
        path: the database file, e.g. ``<sweep dir>/optuna.db``.

    Returns:
        ``sqlite:///<absolute path>``.
    """
    file = Path(path).expanduser().absolute()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def trial_value(metrics: Mapping[str, float], name: str | None) -> float | None:
    """The value of metric ``name`` that a sweeper optimises: a finite float, else ``None``.

    ``None`` (with a warning naming the reason) when the metric was not logged or is not finite: the Optuna
    sweeper records such a trial as failed and goes on, whereas a NaN would stop the whole study when it is
    stored. Basic sweeps and single runs ignore the value.

    Args:
        metrics: the run's final metrics (``trainer.callback_metrics`` as floats).
        name: the metric (``optimized_metric``), or ``None``.
    """
    if not name:
        return None
    if name not in metrics:
        log.warning("optimized_metric=%s was not logged by this run (logged: %s)", name, sorted(metrics))
        return None
    value = float(metrics[name])
    if not math.isfinite(value):
        log.warning("optimized_metric=%s is %s: no value for the sweeper", name, value)
        return None
    return value
