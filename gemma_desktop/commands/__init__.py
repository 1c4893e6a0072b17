"""One module per ``gemma-desktop`` subcommand (see :mod:`gemma_desktop.cli`)."""

from __future__ import annotations

import sys
from typing import TextIO

#: The exit code of an error (see :mod:`gemma_desktop.cli`).
EXIT_ERROR = 1


def print_error(exc: BaseException, err: TextIO | None = None) -> int:
    """Print ``exc`` as ``error:`` (and ``hint:``) lines on stderr; returns :data:`EXIT_ERROR`."""
    from gemma_desktop.core.errors import GemmaDesktopError

    err = err or sys.stderr
    if isinstance(exc, GemmaDesktopError):
        print(f"error: {exc.reason}", file=err)
        if exc.hint:
            print(f"hint: {exc.hint}", file=err)
    else:
        print(f"error: {type(exc).__name__}: {exc}", file=err)
    return EXIT_ERROR
