"""The engine the window talks to, and its life: start, restart, switch model, stop.

:class:`EngineHost` holds at most one :class:`~gemma_desktop.core.engine.protocol.Engine`.
It never builds one itself: ``app.py`` passes an *engine factory* (an async
callable ``(variant_id, progress) -> Engine``; the app's waits for the probe's
report, then asks :mod:`gemma_desktop.core.engine.assembly`) that may first
prepare the model (the bundled model is converted on first use) and reports
what it is doing.

Signals:
    status_changed(EngineStatus): the engine's state, also while none exists yet
        (preparing the model) and after a failed start (CRASHED with reason and hint).
    progress(StartProgress): a start-up step, for the state indicator.
    variant_changed(str): the model the next start uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from PySide6.QtCore import QObject, Signal

from gemma_desktop.core.engine.protocol import (
    SLEEPING,
    Engine,
    EngineError,
    EngineState,
    EngineStatus,
    ProgressListener,
    StartProgress,
)
from gemma_desktop.core.errors import GemmaDesktopError

log = logging.getLogger(__name__)

EngineFactory = Callable[[str, ProgressListener], Awaitable[Engine]]

RUNNING_STATES = frozenset({EngineState.READY, EngineState.GENERATING})
#: The status detail after Free GPU memory stopped an engine that cannot sleep.
FREED_BY_STOP_DETAIL = "Memory freed: the engine is stopped; the next message starts it again"


class EngineHost(QObject):
    """Owns the running engine and serialises start/stop/switch requests."""

    status_changed = Signal(object)
    progress = Signal(object)
    variant_changed = Signal(str)

    def __init__(
        self,
        factory: EngineFactory | None,
        variant_id: str,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._factory = factory
        self._variant_id = variant_id
        self._engine: Engine | None = None
        self._owns_engine = True
        self._status = EngineStatus(EngineState.NOT_STARTED, model_id=variant_id)
        self._lock = asyncio.Lock()
        self._starting: asyncio.Future[None] | None = None

    # --- state -------------------------------------------------------------------

    @property
    def engine(self) -> Engine | None:
        return self._engine

    @property
    def variant_id(self) -> str:
        return self._variant_id

    @property
    def status(self) -> EngineStatus:
        return self._status

    @property
    def is_running(self) -> bool:
        return self._status.state in RUNNING_STATES

    @property
    def is_busy(self) -> bool:
        """A start, stop or switch is under way."""
        return self._lock.locked() or self.is_starting

    def set_variant(self, variant_id: str) -> None:
        """The model for the next start (the running engine is left alone)."""
        if variant_id != self._variant_id:
            self._variant_id = variant_id
            self.variant_changed.emit(variant_id)
            if self._engine is None:
                self._set_status(EngineStatus(EngineState.NOT_STARTED, model_id=variant_id))

    def adopt(self, engine: Engine, *, owned: bool = False) -> None:
        """Use an engine built elsewhere (already started or not).

        With ``owned=False`` :meth:`shutdown` leaves it running (a test's shared engine).
        """
        self._engine = engine
        self._owns_engine = owned
        self._variant_id = engine.model_id
        engine.add_state_listener(self._on_engine_state)
        self._set_status(engine.status)

    def _set_status(self, status: EngineStatus) -> None:
        previous, self._status = self._status, status
        if (previous.state, previous.model_id) != (status.state, status.model_id):
            log.info("engine %s: %s %s", status.state.value, status.model_id, status.detail)
        self.status_changed.emit(status)

    def _on_engine_state(self, status: EngineStatus) -> None:
        # Listeners are called on the loop's thread, which is the UI thread.
        if self._engine is not None and status.model_id in (None, self._engine.model_id):
            self._set_status(status)

    def _on_progress(self, step: StartProgress) -> None:
        self.progress.emit(step)
        if self._status.state == EngineState.STARTING:
            self._set_status(
                EngineStatus(EngineState.STARTING, step.message, model_id=self._variant_id)
            )

    # --- actions (each returns when done; the UI schedules them as tasks) ----------
    #
    # A start (preparing the model, vLLM's 10-60 s engine build) runs as its own
    # task, outside the lock: Stop, Quit, Restart and switching the model cancel
    # it first, which ends the engine's processes at once (the engine and the
    # bundled model's converter handle the cancellation), so they act within a
    # second or two in every state, starting included.

    @property
    def is_starting(self) -> bool:
        return self._starting is not None and not self._starting.done()

    async def start(self) -> None:
        """Build the engine for the current variant (if needed) and start it."""
        if self.is_starting:
            assert self._starting is not None
            await asyncio.shield(self._starting)  # one start at a time: join it
            return
        async with self._lock:
            if self._engine is not None and self.is_running:
                return
            task = asyncio.ensure_future(self._start_engine())
            self._starting = task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():  # our caller was cancelled, not the start: cancel it too
                task.cancel()
            raise
        finally:
            if self._starting is task and task.done():
                self._starting = None

    async def _start_engine(self) -> None:
        try:
            await self._run_start()
        except asyncio.CancelledError:
            self._set_status(
                EngineStatus(EngineState.STOPPED, "Start cancelled", model_id=self._variant_id)
            )
            raise

    async def _run_start(self) -> None:
        if self._engine is None:
            if self._factory is None:
                self._set_status(
                    EngineStatus(
                        EngineState.CRASHED,
                        "No engine is available in this installation.",
                        self._variant_id,
                        "Install vLLM (see README) and restart the app.",
                    )
                )
                return
            self._set_status(
                EngineStatus(EngineState.STARTING, "Preparing the model", self._variant_id)
            )
            try:
                engine = await self._factory(self._variant_id, self._on_progress)
            except GemmaDesktopError as exc:
                self._set_status(
                    EngineStatus(EngineState.CRASHED, exc.reason, self._variant_id, exc.hint)
                )
                return
            self._engine = engine
            self._owns_engine = True
            engine.add_state_listener(self._on_engine_state)
        try:
            await self._engine.start(self._on_progress)
        except EngineError:
            # The engine has set CRASHED with its reason and hint.
            self._set_status(self._engine.status)

    async def _cancel_start(self) -> None:
        """End a start under way (its processes included) and wait until it has."""
        task = self._starting
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._starting is task:
            self._starting = None

    async def restart(self) -> None:
        await self._cancel_start()
        async with self._lock:
            engine = self._engine
            if engine is not None and not self._owns_engine:
                try:
                    await engine.restart()
                except EngineError:
                    self._set_status(engine.status)
                return
            await self._stop_locked()
        await self.start()

    async def stop(self) -> None:
        """Stop the engine, or the start under way."""
        await self._cancel_start()
        async with self._lock:
            await self._stop_locked()

    async def _stop_locked(self) -> None:
        engine, owned = self._engine, self._owns_engine
        if engine is None:
            return
        self._engine = None
        if owned:
            await engine.shutdown()
        self._set_status(EngineStatus(EngineState.STOPPED, model_id=self._variant_id))

    async def switch(self, variant_id: str) -> None:
        """Stop the running engine (or its start) and start ``variant_id``."""
        await self._cancel_start()
        async with self._lock:
            await self._stop_locked()
            self.set_variant(variant_id)
        await self.start()

    async def shutdown(self) -> None:
        """Stop the engine the host owns (at quit, also while it starts); an adopted one
        keeps running."""
        await self._cancel_start()
        async with self._lock:
            if self._engine is not None and self._owns_engine:
                await self._engine.shutdown()
            self._engine = None

    # --- Free GPU memory, and waking for the next message ---------------------------------
    #
    # On the CUDA build the engine sleeps (vLLM sleep level 1: weights to RAM, KV cache
    # dropped) and wakes in seconds; where it cannot sleep (the CPU build) Free GPU memory
    # stops it, and the next message starts it again. The chat asks ensure_awake() before
    # it sends.

    @property
    def is_sleeping(self) -> bool:
        """Free GPU memory freed the engine's memory; the next message brings it back.
        (Any later state, such as a Start or Stop, clears the mark.)"""
        return self._status.extra.get(SLEEPING) == "1"

    @property
    def can_free_memory(self) -> bool:
        return self._engine is not None and self.is_running and not self.is_sleeping

    async def free_memory(self) -> None:
        """Free the memory the model holds without quitting (see the section comment)."""
        if not self.can_free_memory:
            return
        engine = self._engine
        assert engine is not None
        if engine.abilities.sleep:
            async with self._lock:
                try:
                    await engine.sleep()
                except EngineError:
                    self._set_status(engine.status)
            return
        await self.stop()
        self._set_status(
            EngineStatus(
                EngineState.STOPPED,
                FREED_BY_STOP_DETAIL,
                self._variant_id,
                extra={SLEEPING: "1"},
            )
        )

    async def ensure_awake(self) -> None:
        """Before a message is sent: wake a sleeping engine, or start the one Free GPU
        memory stopped. Returns at once when the engine is awake."""
        if not self.is_sleeping:
            return
        engine = self._engine
        if engine is None:
            await self.start()
            return
        async with self._lock:
            try:
                await engine.wake_up()
            except EngineError:
                self._set_status(engine.status)
