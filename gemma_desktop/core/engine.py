"""The engine protocol: what the UI, the CLI and the local API talk to.

vLLM's in-process ``AsyncLLMEngine`` is one implementation
(:mod:`gemma_desktop.core.vllm_engine`); a remote ``vllm serve`` is another
(:mod:`gemma_desktop.core.remote_engine`). Nothing outside those modules
knows which one answers.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, TypeVar, runtime_checkable

from gemma_desktop.core.errors import GemmaDesktopError

log = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "abort", "error"]


class EngineState(enum.Enum):
    """Lifecycle of an engine, as shown by the state indicator and the tray."""

    NOT_STARTED = "not started"
    STARTING = "starting"
    READY = "ready"
    GENERATING = "generating"
    CRASHED = "crashed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling parameters of one answer; ``seed`` makes sampling repeatable."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None


@dataclass
class ResponseStats:
    """Figures for one answer, filled in as it streams."""

    request_id: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_s: float | None = None
    total_time_s: float = 0.0
    finish_reason: FinishReason | None = None
    error: str | None = None

    @property
    def tokens_per_second(self) -> float:
        if self.time_to_first_token_s is None or self.completion_tokens < 2:
            return 0.0
        decode_time = self.total_time_s - self.time_to_first_token_s
        return (self.completion_tokens - 1) / decode_time if decode_time > 0 else 0.0


@dataclass(frozen=True)
class TextDelta:
    """New text of one step of a streaming answer."""

    text: str
    token_count: int = 1


@dataclass(frozen=True)
class StreamEnd:
    """The last item of every stream: why it finished, and its figures."""

    stats: ResponseStats


StreamItem = TextDelta | StreamEnd


@dataclass(frozen=True)
class StartProgress:
    """A step of engine start-up, for the state indicator (``fraction`` may be unknown)."""

    message: str
    fraction: float | None = None


@dataclass
class EngineStatus:
    state: EngineState
    detail: str = ""
    model_id: str | None = None
    hint: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class EngineError(GemmaDesktopError):
    """An engine failure with a reason and a hint (out of memory, model missing...)."""


class PromptTooLongError(EngineError):
    """The prompt does not fit in ``max_model_len``; nothing is truncated silently."""


class EngineDeadError(EngineError):
    """The engine process died; the state is CRASHED and ``restart`` may work."""


StateListener = Callable[[EngineStatus], None]
ProgressListener = Callable[[StartProgress], None]


@runtime_checkable
class Engine(Protocol):
    """An LLM engine the app can chat with.

    Implementations announce state changes to listeners added with
    :meth:`add_state_listener`; listeners are called on the event loop's thread.
    """

    @property
    def status(self) -> EngineStatus: ...

    @property
    def model_id(self) -> str: ...

    def add_state_listener(self, listener: StateListener) -> None: ...

    async def start(self, progress: ProgressListener | None = None) -> None:
        """Load the model; raises :class:`EngineError` with a hint on failure."""

    def chat(
        self,
        messages: Sequence[ChatMessage],
        options: SamplingOptions,
        request_id: str | None = None,
    ) -> AsyncIterator[StreamItem]:
        """Stream an answer: :class:`TextDelta` items, then one :class:`StreamEnd`."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a running request inside the engine; the engine stays usable."""

    async def check_health(self) -> bool: ...

    async def restart(self) -> None: ...

    async def shutdown(self) -> None:
        """Stop the engine and every process it started. Safe to call twice."""


_E = TypeVar("_E", bound="EngineBase")


class EngineBase:
    """State listeners and the ``async with`` lifetime, shared by the implementations.

    Subclasses implement ``start`` and ``shutdown`` and announce each state
    change with :meth:`_publish`.
    """

    def __init__(self, status: EngineStatus) -> None:
        self._status = status
        self._listeners: list[StateListener] = []

    @property
    def status(self) -> EngineStatus:
        return self._status

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

    async def start(self, progress: ProgressListener | None = None) -> None:
        raise NotImplementedError

    async def shutdown(self) -> None:
        raise NotImplementedError

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
