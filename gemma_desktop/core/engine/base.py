"""What both engines share: state listeners, the ``async with`` lifetime and the
bookkeeping of each streaming answer.

An implementation subclasses :class:`EngineBase`, implements ``start``,
``shutdown`` and its own transport, and streams each answer through an
:class:`ActiveRequest` (:meth:`EngineBase._begin_request`): that one place
gives the request its id (refusing a duplicate), moves the state to
GENERATING while any answer streams and back to READY after the last one,
and times the answer (time to first token, total time, tokens) into the
:class:`~gemma_desktop.core.engine.protocol.ResponseStats` its
:class:`~gemma_desktop.core.engine.protocol.StreamEnd` carries.
"""

from __future__ import annotations

import logging
import time
import uuid
from types import TracebackType
from typing import TypeVar

from gemma_desktop.core.engine.protocol import (
    TEXT_ONLY,
    EngineAbilities,
    EngineError,
    EngineState,
    EngineStatus,
    FinishReason,
    ProgressListener,
    ResponseStats,
    StateListener,
    StreamEnd,
    TextDelta,
)

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound="EngineBase")


class ActiveRequest:
    """The bookkeeping of one streaming answer (see the module docstring)."""

    def __init__(self, request_id: str, prompt_tokens: int = 0) -> None:
        self.request_id = request_id
        self.began = time.perf_counter()
        self.stats = ResponseStats(request_id=request_id, prompt_tokens=prompt_tokens)
        self.finish: FinishReason | None = None

    def delta(self, text: str, tokens: int) -> TextDelta:
        """New answer text worth ``tokens`` tokens, timed."""
        now = time.perf_counter()
        if self.stats.time_to_first_token_s is None:
            self.stats.time_to_first_token_s = now - self.began
        self.stats.completion_tokens += tokens
        self.stats.total_time_s = now - self.began
        return TextDelta(text, tokens)

    def end(self) -> StreamEnd:
        """The stream's last item (``abort`` when nothing else set a finish reason)."""
        self.stats.total_time_s = time.perf_counter() - self.began
        self.stats.finish_reason = self.finish or "abort"
        return StreamEnd(self.stats)


class EngineBase:
    """State listeners, the ``async with`` lifetime and request bookkeeping.

    Subclasses implement ``start`` and ``shutdown`` and announce each state
    change with :meth:`_publish` (or their ``_set_state``).
    """

    def __init__(self, status: EngineStatus) -> None:
        self._status = status
        self._listeners: list[StateListener] = []
        self._active: dict[str, ActiveRequest] = {}

    @property
    def status(self) -> EngineStatus:
        return self._status

    @property
    def abilities(self) -> EngineAbilities:
        return TEXT_ONLY

    def add_state_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _publish(self, status: EngineStatus) -> None:
        self._status = status
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:  # a broken listener must not break the engine
                log.exception("engine state listener failed")

    def _set_state(self, state: EngineState, detail: str = "", hint: str = "") -> None:
        raise NotImplementedError

    def _ready_detail(self) -> str:
        """The READY status line after the last answer ends."""
        return ""

    # -- requests ------------------------------------------------------------------------

    def _begin_request(self, request_id: str | None, prompt_tokens: int = 0) -> ActiveRequest:
        """Register a new answer; raises :class:`EngineError` for a duplicate id."""
        rid = request_id or f"chat-{uuid.uuid4().hex}"
        if rid in self._active:
            raise EngineError(f"Request id {rid} is already running.", "Use a new request id.")
        request = ActiveRequest(rid, prompt_tokens)
        self._active[rid] = request
        if self._status.state == EngineState.READY:
            self._set_state(EngineState.GENERATING)
        return request

    def _end_request(self, request: ActiveRequest) -> None:
        self._active.pop(request.request_id, None)
        if not self._active and self._status.state == EngineState.GENERATING:
            self._set_state(EngineState.READY, self._ready_detail())

    # -- lifetime ------------------------------------------------------------------------

    async def start(self, progress: ProgressListener | None = None) -> None:
        raise NotImplementedError

    async def shutdown(self) -> None:
        raise NotImplementedError

    async def sleep(self) -> None:
        """Engines without sleep mode refuse (:attr:`abilities` says ``sleep=False``)."""
        raise EngineError(
            "This engine cannot free its memory and keep running.",
            "Stop the engine instead; the next message starts it again.",
        )

    async def wake_up(self) -> None:
        """Nothing to wake: an engine without sleep mode never sleeps."""

    async def restart(self) -> None:
        """Shut down (whatever state the engine is in) and start again: after a crash,
        a new key, a server restart."""
        await self.shutdown()
        await self.start()

    async def __aenter__(self: _E) -> _E:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
