"""Starting the desktop app from a menu or a double-click, where nobody sees a terminal.

:func:`main` is what the ``gemma-desktop-gui`` script and the desktop entry's
``Exec`` line run. It wraps :func:`gemma_desktop.app.main` so that a failure
before the window (and the app's own crash handler) exists still leaves a
trace: the error goes to :func:`startup_log_path` (redacted: never a token)
and, when a display is there, into a dialog that names that file (started from
the menu or from a terminal alike). Without a
terminal the output of the whole run also goes to that log.

vLLM runs on Linux only. On Windows and macOS the app still starts (it can
talk to a remote engine) and :func:`platform_notice` says what a local engine
needs there.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from gemma_desktop import APP_ID, APP_NAME
from gemma_desktop.core import paths
from gemma_desktop.core.errors import GemmaDesktopError

log = logging.getLogger(__name__)

STARTUP_LOG = "startup.log"


def startup_log_path() -> Path:
    """``state_dir()/startup.log``: output and errors of runs started without a terminal."""
    return paths.state_dir() / STARTUP_LOG


def has_terminal() -> bool:
    """Whether a person can see stderr (started from a terminal, not a menu)."""
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def platform_notice(platform: str | None = None) -> str | None:
    """What a local engine needs on this platform, or ``None`` on Linux."""
    platform = platform or sys.platform
    if platform.startswith("linux"):
        return None
    if platform == "win32":
        return (
            "vLLM, the engine Gemma Desktop runs models with, works on Linux only. On Windows, "
            "install Gemma Desktop inside WSL 2 (Ubuntu or Debian; with an NVIDIA GPU, "
            "install the NVIDIA driver for WSL) and start it there, or point the app at a "
            "vLLM server running on a Linux machine (remote engine)."
        )
    if platform == "darwin":
        return (
            "vLLM, the engine Gemma Desktop runs models with, works on Linux only and has no "
            "macOS build. Point the app at a vLLM server running on a Linux machine (remote "
            "engine), or run Gemma Desktop in a Linux virtual machine."
        )
    return (
        f"vLLM, the engine Gemma Desktop runs models with, works on Linux only ({platform} "
        "is not supported). Use a remote vLLM server running on Linux."
    )


def display_problem(env: dict[str, str] | None = None) -> str | None:
    """Why Qt could not open a window here (it would abort without a Python error)."""
    env = dict(os.environ) if env is None else env
    if not sys.platform.startswith("linux"):
        return None
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform.startswith(("offscreen", "minimal", "vnc", "eglfs", "linuxfb")):
        return None
    if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return (
        "No graphical display was found (neither DISPLAY nor WAYLAND_DISPLAY is set). "
        "Start Gemma Desktop from your desktop session, or use `gemma-desktop chat` in a "
        "terminal."
    )


def _redact(text: str) -> str:
    from gemma_desktop.core.logs import REDACTOR

    return REDACTOR.redact(text)


def record_startup_error(exc: BaseException, log_file: Path | None = None) -> Path:
    """Append ``exc`` with its traceback (redacted) to the start-up log; returns its path.

    When the state folder itself cannot be written (the failure may be exactly
    that), the log goes to the temporary folder instead.
    """
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = f"--- {stamp} {APP_NAME} could not start\n{_redact(trace)}\n"
    candidates = [
        log_file or startup_log_path(),
        Path(tempfile.gettempdir()) / f"{APP_ID}-{STARTUP_LOG}",
    ]
    for candidate in candidates:
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            with open(candidate, "a", encoding="utf-8") as handle:
                handle.write(text)
        except OSError:
            continue
        return candidate
    return candidates[-1]


def show_startup_error(title: str, text: str, detail: str = "") -> bool:
    """A modal error box; only called when no event loop runs. ``False`` without a display."""
    if display_problem() is not None:
        return False
    from PySide6.QtWidgets import QApplication, QMessageBox

    app = QApplication.instance() or QApplication(sys.argv[:1])
    box = QMessageBox()
    box.setObjectName("startupError")
    box.setIcon(QMessageBox.Icon.Critical)
    box.setWindowTitle(title)
    box.setText(text)
    if detail:
        box.setDetailedText(detail)
    box.exec()  # nothing else runs: the app failed before its event loop started
    del app
    return True


def _redirect_output(log_file: Path) -> None:
    """Without a terminal, keep stdout/stderr (Qt and vLLM warnings) in the start-up log."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    stream = open(log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the process
    stream.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} start\n")
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    sys.stdout = stream
    sys.stderr = stream


def guarded(run: Callable[[], int], *, terminal: bool | None = None) -> int:
    """Run ``run()``; an error escaping it is logged and shown, and the exit code is 1."""
    terminal = has_terminal() if terminal is None else terminal
    log_file = startup_log_path()
    if not terminal:
        with contextlib.suppress(OSError):
            _redirect_output(log_file)
    problem = display_problem()
    if problem is not None:
        with contextlib.suppress(OSError), open(log_file, "a", encoding="utf-8") as handle:
            handle.write(problem + "\n")
        print(problem, file=sys.stderr)
        return 1
    try:
        return run()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        where = record_startup_error(exc, log_file)
        if isinstance(exc, GemmaDesktopError):
            summary = exc.reason + (f"\n\n{exc.hint}" if exc.hint else "")
        else:
            summary = f"{type(exc).__name__}: {exc}"
        summary = _redact(summary)
        print(f"{APP_NAME} could not start: {summary}\n(details in {where})", file=sys.stderr)
        # A dialog from the menu and from a terminal alike: a desktop app says what
        # went wrong where its window would have been.
        show_startup_error(
            f"{APP_NAME} could not start",
            f"{summary}\n\nThe details are in {where}.",
            _redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))),
        )
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """The ``gemma-desktop-gui`` entry point: the app, guarded."""

    def run() -> int:
        from gemma_desktop.app import main as app_main

        return app_main(argv)

    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
