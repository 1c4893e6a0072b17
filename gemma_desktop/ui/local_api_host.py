"""The local OpenAI-compatible endpoint's life: on while the user wants it and a local engine runs.

:class:`LocalApiHost` owns the :class:`~gemma_desktop.core.engine.local_api.LocalApiServer`.
The Connections page shows its state and flips :meth:`LocalApiHost.set_enabled`;
it never starts or stops a server itself. The wish is saved
(``local_api_enabled``); the server runs only over a running local vLLM engine
and follows it: stopped when the engine stops or changes, started again over
the new one when it is READY.

Signals:
    changed(): the server started or stopped, or whether it can run changed.
    failed(str): starting failed (reason and hint, for the page's error line).
"""

from __future__ import annotations

import asyncio
import logging

from PySide6.QtCore import QObject, Signal

from gemma_desktop.core.engine.local_api import DEFAULT_PORT, LocalApiServer, server_for
from gemma_desktop.core.engine.protocol import Engine, EngineState, EngineStatus
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.settings import SettingsStore
from gemma_desktop.ui.engine_host import RUNNING_STATES, EngineHost
from gemma_desktop.ui.tasks import run_blocking, spawn

log = logging.getLogger(__name__)

SETTING = "local_api_enabled"


class LocalApiHost(QObject):
    """Owns the local API server (see the module docstring)."""

    changed = Signal()
    failed = Signal(str)

    def __init__(
        self,
        host: EngineHost,
        store: SettingsStore,
        deployment_name: str,
        *,
        port: int = DEFAULT_PORT,
        enabled: bool = False,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.host = host
        self.store = store
        self.deployment_name = deployment_name
        self.port = port
        self._enabled = enabled
        self.server: LocalApiServer | None = None
        self._server_engine: Engine | None = None
        self._lock = asyncio.Lock()
        host.status_changed.connect(self._on_engine_status)

    # --- state --------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether the user wants the endpoint (saved as ``local_api_enabled``)."""
        return self._enabled

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.running

    def local_engine(self) -> Engine | None:
        """The host's engine when it runs and the endpoint can serve it."""
        engine = self.host.engine
        if engine is None or self.host.status.state not in RUNNING_STATES:
            return None
        return engine if self.can_serve(engine) else None

    def can_serve(self, engine: Engine) -> bool:
        return server_for(engine, self.deployment_name) is not None

    # --- what the page does -------------------------------------------------------------

    async def set_enabled(self, enabled: bool) -> None:
        """Save the wish, then start or stop the endpoint to match it."""
        self._enabled = enabled
        try:
            await run_blocking(lambda: self.store.update(**{SETTING: enabled or None}))
        except GemmaDesktopError as exc:
            self.failed.emit(f"{exc.reason} {exc.hint}".strip())
        if enabled:
            if self.host.status.state == EngineState.READY:
                await self.start()  # serves the local engine, if there is one
        else:
            await self.stop()
        self.changed.emit()

    def _on_engine_status(self, status: EngineStatus) -> None:
        engine = self.local_engine()
        gone = self.server is not None and self._server_engine is not engine
        if gone:
            spawn(self.stop(), "Stopping the local API")
        wanted = self._enabled and status.state == EngineState.READY
        if engine is not None and wanted and (self.server is None or gone):
            spawn(self.start(), "Starting the local API")
        self.changed.emit()

    async def start(self) -> bool:
        """Serve the running local engine; ``True`` when it serves."""
        async with self._lock:
            engine = self.local_engine()
            if engine is None:
                return False
            if self.running and self._server_engine is engine:
                return True
            await self._stop_locked()
            server = server_for(engine, self.deployment_name, port=self.port)
            if server is None:
                self.failed.emit("This engine cannot serve the local API.")
                return False
            try:
                await server.start()
            except GemmaDesktopError as exc:
                self.failed.emit(f"{exc.reason}\n{exc.hint}" if exc.hint else exc.reason)
                self.changed.emit()
                return False
            self.server, self._server_engine = server, engine
            log.info("local API serving at %s", server.address)
        self.failed.emit("")
        self.changed.emit()
        return True

    async def stop(self) -> None:
        async with self._lock:
            stopped = await self._stop_locked()
        if stopped:
            self.changed.emit()

    async def _stop_locked(self) -> bool:
        server, self.server, self._server_engine = self.server, None, None
        if server is None:
            return False
        try:
            await server.stop()
        except GemmaDesktopError as exc:
            log.warning("local API did not stop cleanly: %s", exc.reason)
        return True

    async def shutdown(self) -> None:
        """Stop serving (at quit, before the engine stops)."""
        await self.stop()
