"""The app's log file and its one crash handler.

:func:`setup_logging` adds the rotating, redacted ``gemma-desktop.log`` in the
state dir to the root logger. :class:`CrashHandler` is ``sys.excepthook``, the
event loop's exception handler and faulthandler in one place: an unexpected
exception is logged (redacted) and explained in a dialog with a Copy
diagnostics button; the traceback is in the dialog's details, never the only
explanation. :func:`diagnostics_text` is what that button (and Help → Copy
diagnostics) copies.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import platform
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from gemma_desktop import APP_ID, APP_NAME, __version__
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.logs import RedactingFilter, Redactor, rotating_handler

if TYPE_CHECKING:
    from PySide6.QtWidgets import QMessageBox

log = logging.getLogger(__name__)

LOG_FILE_NAME = f"{APP_ID}.log"
CRASH_FILE_NAME = "crash.log"


def setup_logging(
    state_dir: Path, redactor: Redactor | None = None, *, level: int = logging.INFO
) -> logging.Handler:
    """Add the app's rotating, redacted log file to the root logger; returns the handler."""
    handler = rotating_handler(state_dir / LOG_FILE_NAME, redactor)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return handler


class CrashHandler:
    """``sys.excepthook``, the loop's exception handler and faulthandler, in one place.

    ``diagnostics(trace)`` builds the text Copy diagnostics puts on the clipboard.
    """

    def __init__(
        self,
        redactor: RedactingFilter,
        diagnostics: Callable[[str], str],
        crash_file: Path,
        *,
        show_dialog: bool = True,
    ) -> None:
        self._redactor = redactor
        self._diagnostics = diagnostics
        self._crash_file = crash_file
        self._fault_stream: IO[str] | None = None
        self._previous_hook = sys.excepthook
        self._loop: asyncio.AbstractEventLoop | None = None
        self.show_dialog = show_dialog
        self.dialog: QMessageBox | None = None
        self.count = 0

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._crash_file.parent.mkdir(parents=True, exist_ok=True)
        self._fault_stream = open(self._crash_file, "a", encoding="utf-8")  # noqa: SIM115
        faulthandler.enable(self._fault_stream)
        sys.excepthook = self.excepthook
        if loop is not None:
            self.attach(loop)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Report the exceptions of tasks and callbacks on ``loop`` too."""
        self._loop = loop
        loop.set_exception_handler(self.loop_exception)

    def uninstall(self) -> None:
        sys.excepthook = self._previous_hook
        if self._loop is not None:
            self._loop.set_exception_handler(None)
            self._loop = None
        if self._fault_stream is not None:
            faulthandler.disable()
            self._fault_stream.close()
            self._fault_stream = None

    def excepthook(
        self,
        exc_type: type[BaseException],
        exc: BaseException,
        tb: TracebackType | None,
    ) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            self._previous_hook(exc_type, exc, tb)
            return
        self.report(exc, "".join(traceback.format_exception(exc_type, exc, tb)))

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is None or isinstance(exc, asyncio.CancelledError):
            log.warning("event loop: %s", context.get("message", "unknown problem"))
            return
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.report(exc, f"{context.get('message', '')}\n{text}")

    def report(self, exc: BaseException, trace: str) -> None:
        self.count += 1
        trace = self._redactor.redact(trace)
        log.critical("Unexpected error: %s\n%s", type(exc).__name__, trace)
        if isinstance(exc, GemmaDesktopError):
            summary = f"{exc.reason} {exc.hint}".strip()
        else:
            summary = f"{type(exc).__name__}: {exc}"
        summary = self._redactor.redact(summary)
        if self.show_dialog:
            self._show(summary, trace)

    def _show(self, summary: str, trace: str) -> None:
        from PySide6.QtGui import QGuiApplication
        from PySide6.QtWidgets import QApplication, QMessageBox

        if QApplication.instance() is None or (self.dialog is not None and self.dialog.isVisible()):
            return
        box = QMessageBox(QApplication.activeWindow())
        box.setObjectName("crashDialog")
        box.setIcon(QMessageBox.Icon.Critical)
        box.setWindowTitle(f"{APP_NAME}: unexpected problem")
        box.setText(
            "Something went wrong inside Gemma Desktop. Your conversation is still here and "
            "the app keeps running, but the last action may not have finished."
        )
        box.setInformativeText(
            f"{summary}\n\nIf it happens again, copy the diagnostics into a bug report. "
            "They contain no token."
        )
        box.setDetailedText(trace)
        copy = box.addButton("Copy diagnostics", QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Close)
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(self._diagnostics(trace)))
        self.dialog = box
        box.open()


def diagnostics_text(
    redactor: RedactingFilter,
    *,
    engine_line: str,
    report_text: str | None,
    log_path: Path,
    trace: str = "",
) -> str:
    """Plain-text facts for a bug report; every secret is redacted."""
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import qVersion

    lines = [
        f"{APP_NAME} {__version__}",
        f"Python {platform.python_version()} on {platform.platform()}",
        f"Qt {qVersion()}, PySide6 {pyside_version}",
        engine_line,
        f"Log file: {log_path}",
        "",
    ]
    if report_text:
        lines += [report_text, ""]
    if trace:
        lines += ["Error:", trace, ""]
    lines += ["Last log lines:", *tail(log_path, 60)]
    return redactor.redact("\n".join(lines))


def tail(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a text file (``(no log yet)`` when it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-20000:].splitlines()[-count:]
    except OSError:
        return ["(no log yet)"]
