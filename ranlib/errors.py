"""Errors that ranlib reports to a user as one clear line.

Every class here is a :class:`RanlibError`. The CLI catches ``RanlibError``, prints its
message (what was wrong, what to do) on stderr and exits non-zero, never with a traceback.
Workers append classes at the end of this file.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

ERROR_PREFIX = "ranlib: error:"


def print_error(exc: BaseException) -> None:
    """The one line every command prints on stderr for bad input: ``ranlib: error: <message>``."""
    print(f"{ERROR_PREFIX} {' '.join(str(exc).split())}", file=sys.stderr)


def quiet_on_closed_pipe(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's ``main`` so that a reader who stops early (``campaign status | head``) ends
    the command quietly with status 1 instead of a ``BrokenPipeError`` traceback.

    Follows the note on SIGPIPE in Python's ``signal`` documentation: stdout is pointed at
    ``os.devnull`` so that the interpreter's last flush at exit cannot raise a second time.
    """
    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return wrapped


class RanlibError(Exception):
    """Base class: the message is a complete one-line explanation for the user."""


class ConfigError(RanlibError, ValueError):
    """A configuration value is invalid (unknown profile, bad noise level, bad schedule, ...)."""


class UnknownNameError(ConfigError):
    """An unknown model, dataset or profile name; the message lists the valid names."""


class CheckpointError(RanlibError):
    """A checkpoint is missing, corrupt, or does not match the run that wants to load it."""


class ResultsExistError(RanlibError, FileExistsError):
    """Writing a results file (or starting a run) would overwrite an existing run."""


class ResultsSchemaError(RanlibError, ValueError):
    """A results file does not follow the results schema."""


class InputSizeError(RanlibError, ValueError):
    """Images have the wrong size for the model."""


class DataNotFoundError(RanlibError, FileNotFoundError):
    """A dataset root or file does not exist; the message says how to get the data."""


class DataFormatError(RanlibError, ValueError):
    """A dataset exists but is not in the expected layout (missing keys, wrong image size, ...)."""


class RunLockedError(RanlibError):
    """Another process holds the lock of a run's folder: it is training that run now."""


class StorageError(RanlibError, OSError):
    """A folder a run writes to cannot be written, or lacks the space a checkpoint needs."""
