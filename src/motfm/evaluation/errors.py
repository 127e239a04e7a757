"""The errors that end an evaluation entry point with one line naming the file or option (anything else is a
bug and keeps its traceback)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from motfm.checkpoint import CheckpointError
from motfm.data.base import DataError
from motfm.metrics.extractors import ExtractorUnavailable


class InputError(ValueError):
    """Missing or contradictory inputs of an evaluation: the message names the path or option."""


USER_ERRORS = (ExtractorUnavailable, InputError, CheckpointError, DataError)


@contextlib.contextmanager
def exit_on_user_error(log: logging.Logger) -> Iterator[None]:
    """Turn a :data:`USER_ERRORS` exception into ``SystemExit("error: <message>")`` (exit status 1)."""
    try:
        yield
    except USER_ERRORS as err:
        log.error("%s", err)
        raise SystemExit(f"error: {err}") from None
