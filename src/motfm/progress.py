"""Progress bars for the long loops of the suite (sampling, evaluation, cache building, exports).

A bar is drawn only when its stream (stderr) is a terminal: in batch jobs, CI and log files the loops stay
quiet and the entry points' log lines remain the record.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is an interactive terminal (not for files, pipes, closed or absent streams)."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def progress(
    iterable: Iterable[T],
    desc: str,
    unit: str = "it",
    total: int | None = None,
    leave: bool = False,
    stream: IO[str] | None = None,
) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar that is shown only on a terminal.

    Args:
        iterable: the items to loop over.
        desc: the bar's label.
        unit: the name of one item.
        total: number of items (default: ``len(iterable)`` when defined).
        leave: keep the finished bar on screen.
        stream: where the bar is drawn (default: ``sys.stderr``, read at call time).

    Returns:
        An iterable over the same items.
    """
    stream = sys.stderr if stream is None else stream
    return tqdm(
        iterable,
        desc=desc,
        unit=unit,
        total=total,
        leave=leave,
        file=stream,
        disable=not is_terminal(stream),
        dynamic_ncols=True,
    )
