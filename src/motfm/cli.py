"""Errors a person can read: every entry point reports the suite's own errors as one line.

A bad input (a corrupt data file, a truncated checkpoint, an invalid option) ends the program with
``error: <file>: <problem>`` on stderr and exit status 2, instead of a 30-50 line traceback. The traceback
is still there for whoever wants it: ``debug=true`` (a config key of every entry point) or
``HYDRA_FULL_ERROR=1``. Anything else (a bug) keeps its full traceback.

What counts as the suite's own error: ``DataError``, ``CheckpointError``, ``ConfigError``, ``SamplerError``,
``ExportError`` (every ``ValueError`` subclass defined in motfm), a plain ``ValueError`` raised by motfm's own
code, ``ExtractorUnavailable``, and a ``FileNotFoundError`` (a missing input). Hydra wraps exceptions raised
inside ``instantiate`` (``InstantiationException``); they are unwrapped to their cause first.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import InstantiationException

from motfm.checkpoint import CheckpointError
from motfm.data.base import DataError
from motfm.metrics.extractors import ExtractorUnavailable
from motfm.objectives.base import SamplerError
from motfm.validate import ConfigError

EXIT_USER_ERROR = 2
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"

T = TypeVar("T")


def unwrap(err: BaseException) -> BaseException:
    """The exception a person needs to see: Hydra's ``InstantiationException`` replaced by its cause."""
    seen = set()
    while isinstance(err, InstantiationException) and err.__cause__ is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__
    return err


def _raised_by_motfm(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in the motfm package."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(_PACKAGE_DIR)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` reports bad input (print one line) rather than a bug (keep the traceback)."""
    if isinstance(err, DataError | CheckpointError | ConfigError | SamplerError | ExtractorUnavailable):
        return True
    if isinstance(err, FileNotFoundError):
        return True
    if isinstance(err, ValueError):  # one of motfm's own error types, or raised by motfm's validation
        return type(err).__module__.startswith("motfm.") or _raised_by_motfm(err)
    return False


def one_line(err: BaseException) -> str:
    """``err`` as one line ``<file>: <problem>``.

    Our messages already start with the file (or the config key). A ``FileNotFoundError`` from the standard
    library gets its file name in front; an error re-raised by a ``DataLoader`` worker (whose message holds
    the worker's traceback) is reduced to the worker's original message.
    """
    if isinstance(err, FileNotFoundError) and err.filename is not None:
        message = f"{err.filename}: {err.strerror or 'file not found'}"
    else:
        message = str(err)
    if _WORKER_TRACEBACK in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        head, sep, rest = last.partition(": ")
        message = rest if sep and "." in head and " " not in head else last
    return " ".join(message.split()) or type(err).__name__


def debug_requested(cfg: Any = None) -> bool:
    """``debug=true`` in the config, or ``HYDRA_FULL_ERROR=1`` in the environment."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return True
    try:
        return bool(cfg is not None and cfg.get("debug", False))
    except Exception:  # a config that cannot even be read: no debug key
        return False


def report(err: BaseException) -> None:
    """Print ``err`` as the one-line ``error: ...`` on stderr."""
    print(f"error: {one_line(err)}", file=sys.stderr, flush=True)


def readable_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a Hydra task function (``fn(cfg)``, under ``@hydra.main``) so that the suite's own errors end
    the program with one line on stderr and exit status 2 (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(cfg, *args, **kwargs)
        except Exception as err:
            cause = unwrap(err)
            if debug_requested(cfg) or not is_user_error(cause):
                raise
            report(cause)
            # SystemExit passes through Hydra's handlers (they catch Exception), so nothing else is printed.
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper


def run_script(main: Callable[[], int], debug: bool = False) -> int:
    """Run a script's ``main`` (returning its exit status) with the same one-line reporting.

    Args:
        main: the script's body.
        debug: show the traceback instead (``debug=true`` / ``--debug``).

    Returns:
        ``main``'s status, or :data:`EXIT_USER_ERROR` after reporting a user error.
    """
    try:
        return main()
    except Exception as err:
        cause = unwrap(err)
        if debug or debug_requested() or not is_user_error(cause):
            raise
        report(cause)
        return EXIT_USER_ERROR
