"""The engine protocol: what the UI, the CLI and the local API talk to.

vLLM's in-process ``AsyncLLMEngine`` is one implementation
(:mod:`gemma_desktop.core.engine.vllm_local`); a remote ``vllm serve`` is another
(:mod:`gemma_desktop.core.engine.remote`). Nothing outside those modules
knows which one answers. What an engine can do beyond streaming text it
declares in :attr:`Engine.abilities`, as vLLM's ``EngineClient`` does, so
nothing has to probe an engine with ``getattr``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from gemma_desktop.core.errors import GemmaDesktopError

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
class EngineAbilities:
    """What a running engine can do besides streaming text.

    ``images`` / ``audio``: messages may carry :class:`ImagePart` / :class:`AudioPart`
    attachments (``why_not`` says why not, for a control's tooltip: the bundled
    model, text-only mode, a remote model that declared none).
    ``thinking``: :attr:`SamplingOptions.thinking` turns on the model's thinking,
    which streams as :class:`ThinkingDelta` items.
    ``sleep``: :meth:`Engine.sleep` frees the accelerator's memory and
    :meth:`Engine.wake_up` brings the model back without a restart.
    """

    images: bool = False
    audio: bool = False
    thinking: bool = False
    sleep: bool = False
    why_not: str = ""


TEXT_ONLY = EngineAbilities(why_not="This model takes text only.")


@dataclass(frozen=True)
class ImagePart:
    """An image attached to a message: a file on disk (the history's attachment store,
    or a file the user named), decoded and sized by the engine that sends it."""

    path: Path
    mime: str = "image/png"


@dataclass(frozen=True)
class AudioPart:
    """A sound clip attached to a message: a file on disk (WAV, FLAC, MP3, OGG)."""

    path: Path
    mime: str = "audio/wav"


Attachment = ImagePart | AudioPart


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation: its text, and the images and audio it carries.

    Attachments come before the text when the message is rendered, as in every
    chat app. An assistant message never carries its thinking: that is never
    sent back to the model.
    """

    role: Role
    content: str
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling parameters of one answer; ``seed`` makes sampling repeatable;
    ``thinking`` asks a model that can think to think first (see :class:`ThinkingDelta`).

    ``json_schema`` (a JSON Schema, as a mapping) constrains the answer to JSON that
    validates against it, through vLLM's structured outputs (a grammar applied while
    sampling; both engines). The grammar holds from the first token, so such an answer
    has no thinking. An answer cut off by ``max_tokens`` is still incomplete JSON.
    """

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None
    thinking: bool = False
    json_schema: Mapping[str, Any] | None = None


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
    #: Of ``completion_tokens``, how many were thinking (before the answer began).
    thinking_tokens: int = 0

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
class ThinkingDelta:
    """New thinking text: what the model reasons before it answers (not part of the answer)."""

    text: str
    token_count: int = 1


@dataclass(frozen=True)
class StreamEnd:
    """The last item of every stream: why it finished, and its figures."""

    stats: ResponseStats


StreamItem = TextDelta | ThinkingDelta | StreamEnd


@dataclass(frozen=True)
class StartProgress:
    """A step of engine start-up, for the state indicator (``fraction`` may be unknown)."""

    message: str
    fraction: float | None = None


#: :attr:`EngineStatus.extra` key set (to ``"1"``) while the engine's memory is freed
#: (:meth:`Engine.sleep`, or the CPU build's stop for Free GPU memory).
SLEEPING = "sleeping"


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


class UnsupportedInputError(EngineError):
    """A message carries what the running model cannot take (an image for a text-only
    model, audio too long, a file that cannot be decoded); nothing was sent."""


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

    @property
    def abilities(self) -> EngineAbilities:
        """What this engine can do besides text (known once started)."""
        ...

    def add_state_listener(self, listener: StateListener) -> None: ...

    async def start(self, progress: ProgressListener | None = None) -> None:
        """Load the model; raises :class:`EngineError` with a hint on failure."""

    def chat(
        self,
        messages: Sequence[ChatMessage],
        options: SamplingOptions,
        request_id: str | None = None,
    ) -> AsyncIterator[StreamItem]:
        """Stream an answer: :class:`ThinkingDelta` items (when thinking), :class:`TextDelta`
        items, then one :class:`StreamEnd`. A message carrying an attachment the engine
        cannot take is refused before anything is sent (:class:`UnsupportedInputError`)."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a running request inside the engine; the engine stays usable."""

    async def check_health(self) -> bool: ...

    async def restart(self) -> None: ...

    async def sleep(self) -> None:
        """Free the accelerator's memory and keep the engine (only where
        :attr:`abilities` says ``sleep``; otherwise :class:`EngineError`)."""

    async def wake_up(self) -> None:
        """Take the memory back after :meth:`sleep` (nothing to do when awake)."""

    async def shutdown(self) -> None:
        """Stop the engine and every process it started. Safe to call twice."""
