"""The app's one way out.

Every way of quitting (File → Quit, the tray's Quit, closing the window where
there is no tray, Ctrl+C in a terminal, a second SIGTERM...) calls
:meth:`Quitter.request`. The first call emits :attr:`Quitter.shutting_down`
(the window and the tray react: a notice, the icon goes) and runs the
shutdown steps each service registered with :meth:`Quitter.add_step`, once,
in the order they were registered, each one even when an earlier one failed.
Then :attr:`Quitter.finished` fires and ``app.py`` leaves the event loop.

Signals:
    shutting_down(): quitting began.
    finished(): every shutdown step has run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from PySide6.QtCore import QObject, Signal

from gemma_desktop.ui.tasks import spawn

log = logging.getLogger(__name__)

ShutdownStep = Callable[[], Awaitable[object]]


class Quitter(QObject):
    """Runs the registered shutdown steps once (see the module docstring)."""

    shutting_down = Signal()
    finished = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._steps: list[tuple[str, ShutdownStep]] = []
        self._task: asyncio.Future[None] | None = None
        self.done = False

    def add_step(self, name: str, step: ShutdownStep) -> None:
        """Run ``step`` when the app quits, after the steps registered before it."""
        self._steps.append((name, step))

    def request(self) -> asyncio.Future[None]:
        """Quit (idempotent); returns the task that runs the shutdown."""
        if self._task is None:
            self._task = spawn(self._run(), "Quitting")
        return self._task

    async def _run(self) -> None:
        log.info("quitting")
        self.shutting_down.emit()
        for name, step in self._steps:
            log.debug("stopping %s", name)
            try:
                await step()
            except Exception:  # quitting must go on; each service cleans up after itself
                log.exception("shutdown step %r failed", name)
        self.done = True
        self.finished.emit()
