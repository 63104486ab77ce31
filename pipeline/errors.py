"""The failures a user can fix, and the one way they are shown.

Known failures (bad raw data, bad input to the CLI, a missing artifact, bad params) raise a ``ReficrError``
whose message is one line: ``<file>: line N: <what>; expected <what>``. The stage entry points and the CLI run
through ``user_errors``: such an error prints ``error: <message>`` on stderr and exits 2, with no traceback
(``REFICR_DEBUG=1`` shows it). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


class ReficrError(Exception):
    """A failure the user can fix; the message names the file, the line or record, and what was expected."""


class DataError(ReficrError, ValueError):
    """Raw or intermediate data that cannot be read."""


class InputError(ReficrError, ValueError):
    """Input given to a command (a JSONL file, an argument) that is not what it takes."""


class MissingArtifactError(ReficrError, FileNotFoundError):
    """An output of an earlier stage is not there; the message says which ``dvc repro`` target makes it."""


class OutputError(ReficrError, OSError):
    """An output that could not be written (e.g. the disk is full); the previous output is left as it was."""


class ParamError(ReficrError, ValueError):
    """A setting in params.yaml (or a profile) that is not allowed."""


class CudaRequiredError(ParamError, RuntimeError):
    """A CUDA-only setting was asked for on a machine without CUDA."""


def debug() -> bool:
    return os.environ.get("REFICR_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def user_errors(exit_code: int = 2) -> Iterator[None]:
    """Run a command: a ``ReficrError`` becomes ``error: <message>`` on stderr and exit ``exit_code``."""
    try:
        yield
    except ReficrError as err:
        if debug():
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(exit_code) from None
