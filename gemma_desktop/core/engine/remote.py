"""The :class:`~gemma_desktop.core.engine.protocol.Engine` on a remote vLLM server (``vllm serve``).

A team's GPU server or cluster already runs vLLM's OpenAI-compatible server;
this engine talks to it over HTTP instead of starting a model in the app:

* :meth:`RemoteEngine.start` connects: it lists ``/v1/models`` (with the API
  key, when the server was started with ``--api-key``) and picks the model;
  nothing is loaded locally and vLLM need not be installed.
* :meth:`RemoteEngine.chat` streams ``/v1/chat/completions`` (Server-Sent
  Events) with ``stream_options.include_usage`` and vLLM's
  ``continuous_usage_stats`` for exact token counts. The server applies the
  model's own chat template. A model without one (vLLM then answers 400)
  is prompted through ``/v1/completions`` with the app's documented base-model
  format (:data:`gemma_desktop.core.engine.prompt.BASE_CHAT_TEMPLATE`), the same
  text the local engine builds, so a greedy answer is the same on both.
* Attachments go as OpenAI content parts, decoded and sized by
  :mod:`gemma_desktop.core.media` as the local engine does them: images as
  ``image_url`` PNG data URLs, audio as ``input_audio`` 16 kHz WAV clips of at
  most 30 s (vLLM's server decodes WAV without torchaudio, and needs no
  resampling).
* What the model takes (:attr:`RemoteEngine.abilities`): vLLM's ``/v1/models``
  says nothing about modalities, so the rule is the model's name: the served
  name, else the ``root`` the server loaded it from (a Hub id, or a path whose
  folder is named after one: ``.../models--google--gemma-4-E2B-it/snapshots/...``),
  matched against the catalog's Gemma 4 variants, which declare their inputs and
  thinking. Any other model is taken to read text only. Nothing is sent to
  find out.
* Thinking (:attr:`SamplingOptions.thinking` on a model that can think) sets
  the template's ``enable_thinking``; a server started with
  ``--reasoning-parser gemma4`` streams the thinking apart (``reasoning``, or
  ``reasoning_content`` on older servers), which arrives as
  :class:`~gemma_desktop.core.engine.protocol.ThinkingDelta` items.
* Stop (:meth:`RemoteEngine.abort`, or closing the stream) closes the HTTP
  stream; vLLM aborts a request whose client disconnects, so the server stops
  generating at once.
* Streams end with one :class:`~gemma_desktop.core.engine.protocol.StreamEnd` whose
  stats carry time to first token, tokens, tokens/s and the finish reason, as
  the local engine's do.

Expected failures raise :class:`RemoteEngineError` subclasses with a hint:
an unreachable server, a rejected key (401), a model the server does not serve
(404), a prompt longer than the server's ``max_model_len``
(:class:`~gemma_desktop.core.engine.protocol.PromptTooLongError`). A server that goes
away mid-answer ends the stream with ``error`` and moves the state to CRASHED;
the health watch brings it back to READY when the server answers again.

The API key lives in the OS keyring (:class:`ApiKeyStore`, like the HF token);
it is sent only in the ``Authorization`` header and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from gemma_desktop.core.engine.base import EngineBase
from gemma_desktop.core.engine.prompt import render_base_prompt
from gemma_desktop.core.engine.protocol import (
    ChatMessage,
    EngineAbilities,
    EngineDeadError,
    EngineError,
    EngineState,
    EngineStatus,
    FinishReason,
    ProgressListener,
    PromptTooLongError,
    ResponseStats,
    SamplingOptions,
    StartProgress,
    StreamItem,
    ThinkingDelta,
    UnsupportedInputError,
)
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.logs import REDACTOR
from gemma_desktop.core.media import (
    decode_attachments,
    image_data_url,
    refuse_unsupported,
    wav_bytes,
)
from gemma_desktop.core.models.catalog import Variant, VariantCatalog
from gemma_desktop.core.secrets import KEYRING_SERVICE, TokenStore

log = logging.getLogger(__name__)

#: Seconds between ``/health`` checks while connected.
HEALTH_POLL_S = 5.0
#: Connecting gives up after this long; a busy server may take far longer to
#: send the first token, so reading has its own, generous limit.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0

ApiMode = Literal["chat", "completion"]


# --- errors -------------------------------------------------------------------------


class RemoteEngineError(EngineError):
    """A remote server failed a request in a way the user can act on."""


class RemoteUnreachableError(RemoteEngineError, EngineDeadError):
    """Nothing answers at the base URL (down, wrong address, firewall)."""


class RemoteAuthError(RemoteEngineError):
    """The server rejected the API key (401)."""


class RemoteModelNotFoundError(RemoteEngineError):
    """The server does not serve the requested model (404)."""


# --- the API key in the keyring ---------------------------------------------------------


def normalize_base_url(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing ``/`` or ``/v1``.

    Users paste either the server root or the OpenAI base URL (ending in
    ``/v1``); both name the same server.
    """
    text = url.strip().rstrip("/")
    if text.endswith("/v1"):
        text = text[: -len("/v1")]
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RemoteEngineError(
            f"{url.strip()!r} is not a server address.",
            "Enter the address of the vLLM server, for example http://gpu-server:8000.",
        )
    return text


class ApiKeyStore:
    """The API key of one server, in the OS keyring next to the HF token.

    Keyring entry: service ``gemma-desktop``, user ``remote-api:<base URL>``,
    so each server keeps its own key. ``session_key`` holds a key kept for this
    session only (when no keyring works). Methods may block on D-Bus: call them
    off the UI thread.
    """

    USER_PREFIX = "remote-api:"

    def __init__(self, base_url: str) -> None:
        self.base_url = normalize_base_url(base_url)
        self._store = TokenStore(KEYRING_SERVICE, self.USER_PREFIX + self.base_url)
        self.session_key: str | None = None

    @property
    def keyring_user(self) -> str:
        return self._store.user

    def get(self) -> str | None:
        """The saved key (keyring, else this session's); raises
        :class:`~gemma_desktop.core.secrets.KeyringUnavailableError` only when
        the keyring fails and no session key is set."""
        if self.session_key:
            REDACTOR.add_secret(self.session_key)
            return self.session_key
        return self._store.keyring_get() or None

    def save(self, key: str) -> None:
        """Store ``key`` in the keyring; raises ``KeyringUnavailableError``."""
        key = key.strip()
        if not key:
            raise GemmaDesktopError(
                "The API key is empty.", "Paste the key the server was started with."
            )
        self._store.save(key)

    def delete(self) -> bool:
        """Forget the key (keyring and session); ``True`` if the keyring had one."""
        self.session_key = None
        return self._store.delete()


# --- what the server serves ---------------------------------------------------------------


@dataclass(frozen=True)
class RemoteModel:
    """One entry of ``/v1/models``."""

    id: str
    max_model_len: int | None = None
    root: str | None = None


@dataclass(frozen=True)
class RemoteTarget:
    """Which server and model the user chose (saved settings keys ``remote_*``).

    The key is not part of it: it stays in the keyring.
    """

    base_url: str
    model: str | None = None

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> RemoteTarget | None:
        """The target in the saved settings, or ``None`` when none is configured."""
        url = saved.get("remote_base_url")
        if not isinstance(url, str) or not url.strip():
            return None
        model = saved.get("remote_model")
        return cls(normalize_base_url(url), model if isinstance(model, str) and model else None)

    def to_saved(self) -> dict[str, Any]:
        """Keys to merge into the saved settings (``SettingsStore.update(**...)``)."""
        return {"remote_base_url": self.base_url, "remote_model": self.model}


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _unreachable(base_url: str, exc: BaseException) -> RemoteUnreachableError:
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        what = "did not answer in time"
    elif isinstance(exc, httpx.ConnectError):
        what = "cannot be reached (connection refused or unknown host)"
    else:
        what = f"cannot be reached ({kind})"
    return RemoteUnreachableError(
        f"The vLLM server at {base_url} {what}.",
        "Check that `vllm serve` is running there, that the address and port are "
        "right, and that no firewall blocks it; then reconnect.",
    )


def _error_message(body: bytes) -> str:
    """The human part of a vLLM / OpenAI error body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)[:500]
        if isinstance(error, str):
            return error[:500]
        detail = data.get("detail") or data.get("message")
        if detail:
            return str(detail)[:500]
    return str(data)[:500]


class _ChatTemplateMissing(Exception):
    """The server's tokenizer has no chat template; use ``/v1/completions``."""


def _http_error(
    status: int, body: bytes, base_url: str, model: str | None
) -> GemmaDesktopError | _ChatTemplateMissing:
    message = _error_message(body)
    lowered = message.lower()
    if status == 401:
        return RemoteAuthError(
            f"The server at {base_url} rejected the API key (401 Unauthorized).",
            "Enter the key the server was started with (`vllm serve --api-key ...` or "
            "VLLM_API_KEY on the server).",
        )
    if status == 404 and ("model" in lowered or "does not exist" in lowered):
        return RemoteModelNotFoundError(
            f"The server at {base_url} does not serve the model {model!r}.",
            "Pick one of the models the server lists, or start the server with "
            "--served-model-name set to this name.",
        )
    if status == 400 and "chat template" in lowered:
        return _ChatTemplateMissing(message)
    if status == 400 and (
        "maximum context length" in lowered
        or "exceeds model's maximum context" in lowered
        or "max_model_len" in lowered
    ):
        return PromptTooLongError(
            f"The conversation does not fit in the model's context on the server: {message}",
            "Start a new conversation or shorten the message; the server's limit is set "
            "with `vllm serve --max-model-len`.",
        )
    if status == 404:
        return RemoteEngineError(
            f"The server at {base_url} has no OpenAI-compatible API here (404).",
            "Check the address: it should be the root of a `vllm serve` server, "
            "e.g. http://gpu-server:8000.",
        )
    return RemoteEngineError(
        f"The server at {base_url} answered {status}: {message}",
        "See the server's log for details.",
    )


async def fetch_models(
    base_url: str,
    api_key: str | None = None,
    *,
    client: httpx.AsyncClient | None = None,
) -> list[RemoteModel]:
    """The models a server serves (``GET /v1/models``), for the wizard's model list.

    Raises :class:`RemoteUnreachableError`, :class:`RemoteAuthError` or
    :class:`RemoteEngineError`.
    """
    base_url = normalize_base_url(base_url)
    own = client is None
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=CONNECT_TIMEOUT_S))
    try:
        try:
            response = await http.get(f"{base_url}/v1/models", headers=_auth_headers(api_key))
        except httpx.TransportError as exc:
            raise _unreachable(base_url, exc) from None
        if response.status_code != 200:
            error = _http_error(response.status_code, response.content, base_url, None)
            if isinstance(error, GemmaDesktopError):
                raise error
            raise RemoteEngineError(str(error))
        try:
            entries = response.json()["data"]
            return [
                RemoteModel(
                    id=str(entry["id"]),
                    max_model_len=(
                        int(entry["max_model_len"])
                        if entry.get("max_model_len") is not None
                        else None
                    ),
                    root=entry.get("root"),
                )
                for entry in entries
            ]
        except (ValueError, KeyError, TypeError):
            raise RemoteEngineError(
                f"The server at {base_url} did not answer /v1/models like an "
                "OpenAI-compatible server.",
                "Check the address: it should point at `vllm serve`.",
            ) from None
    finally:
        if own:
            await http.aclose()


# --- streaming ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Opened:
    pass


@dataclass(frozen=True)
class _Chunk:
    data: dict[str, Any]


@dataclass(frozen=True)
class _Done:
    pass


@dataclass(frozen=True)
class _Failed:
    error: BaseException


@dataclass(frozen=True)
class _Broken:
    """The connection broke after the answer began."""

    error: BaseException


@dataclass(frozen=True)
class _Aborted:
    pass


_Event = _Opened | _Chunk | _Done | _Failed | _Broken | _Aborted


class RemoteEngine(EngineBase):
    """An :class:`~gemma_desktop.core.engine.protocol.Engine` backed by a ``vllm serve`` server.

    ``model`` may be left out: the server's first model is used. State
    listeners are called on the event loop's thread.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        health_poll_s: float = HEALTH_POLL_S,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self._requested_model = model
        self._model: str | None = model
        self._api_key = api_key.strip() if api_key else None
        REDACTOR.add_secret(self._api_key)
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._health_poll_s = health_poll_s
        self._client: httpx.AsyncClient | None = None
        self._models: list[RemoteModel] = []
        self._mode: ApiMode = "chat"
        super().__init__(EngineStatus(EngineState.NOT_STARTED, model_id=model))
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()

    # -- protocol: state ------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._model or self._requested_model or ""

    @property
    def models(self) -> list[RemoteModel]:
        """What the server listed at the last connect."""
        return list(self._models)

    @property
    def max_model_len(self) -> int | None:
        """The server's context length for the model (from ``/v1/models``)."""
        for entry in self._models:
            if entry.id == self._model:
                return entry.max_model_len
        return None

    @property
    def abilities(self) -> EngineAbilities:
        """What the server's model takes, by its name (see the module docstring)."""
        entry = next((m for m in self._models if m.id == self._model), None)
        if entry is None:
            return EngineAbilities(why_not="Not connected to a server yet.")
        return remote_abilities(entry)

    @property
    def api_mode(self) -> ApiMode:
        """``chat`` (the server's chat template) or ``completion`` (base-model format)."""
        return self._mode

    def set_api_key(self, api_key: str | None) -> None:
        """Use another key from the next request on (after a 401, say)."""
        self._api_key = api_key.strip() if api_key else None
        REDACTOR.add_secret(self._api_key)

    def _set_state(self, state: EngineState, detail: str = "", hint: str = "") -> None:
        self._publish(
            EngineStatus(state, detail, self.model_id or None, hint, {"base_url": self.base_url})
        )

    def _mark_unreachable(self, error: GemmaDesktopError) -> None:
        if self._status.state not in (EngineState.CRASHED, EngineState.STOPPED):
            self._set_state(EngineState.CRASHED, error.reason, error.hint)

    # -- lifetime -------------------------------------------------------------------------

    async def start(self, progress: ProgressListener | None = None) -> None:
        """Connect: list the server's models and pick ours; nothing loads locally."""
        async with self._start_lock:
            if self._client is not None and self._status.state in (
                EngineState.READY,
                EngineState.GENERATING,
            ):
                return
            self._set_state(EngineState.STARTING, f"Connecting to {self.base_url}")
            if progress is not None:
                progress(StartProgress(f"Connecting to {self.base_url}", 0.1))
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=self._timeout)
            try:
                self._models = await fetch_models(self.base_url, self._api_key, client=self._client)
                self._model = self._choose_model()
            except GemmaDesktopError as exc:
                self._set_state(EngineState.CRASHED, exc.reason, exc.hint)
                raise
            except asyncio.CancelledError:
                self._set_state(EngineState.STOPPED, "Connecting cancelled")
                raise
            if progress is not None:
                progress(StartProgress("Connected", 1.0))
            self._set_state(EngineState.READY, self._ready_detail())
            if self._monitor is None or self._monitor.done():
                self._monitor = asyncio.ensure_future(self._watch())

    def _choose_model(self) -> str:
        names = [entry.id for entry in self._models]
        if not names:
            raise RemoteModelNotFoundError(
                f"The server at {self.base_url} serves no model.",
                "Start the server with a model: vllm serve <model>.",
            )
        wanted = self._requested_model
        if wanted is None:
            return names[0]
        if wanted not in names:
            raise RemoteModelNotFoundError(
                f"The server at {self.base_url} does not serve the model {wanted!r}.",
                f"Pick one it serves: {', '.join(names)}.",
            )
        return wanted

    async def shutdown(self) -> None:
        """Stop every running request and close the connection. Safe to call twice."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._monitor
            self._monitor = None
        pumps = list(self._pumps.values())
        for pump in pumps:
            pump.cancel()
        for pump in pumps:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        if self._status.state != EngineState.NOT_STARTED:
            self._set_state(EngineState.STOPPED)

    async def check_health(self) -> bool:
        """Whether the server answers ``/health``; updates CRASHED / READY."""
        client = self._client
        if client is None:
            return False
        try:
            response = await client.get(f"{self.base_url}/health", timeout=CONNECT_TIMEOUT_S)
            healthy = response.status_code == 200
        except httpx.TransportError as exc:
            self._mark_unreachable(_unreachable(self.base_url, exc))
            return False
        if not healthy:
            self._mark_unreachable(
                RemoteUnreachableError(
                    f"The vLLM server at {self.base_url} reports it is not healthy "
                    f"({response.status_code}).",
                    "See the server's log; vLLM answers 503 when its engine died.",
                )
            )
        elif self._status.state == EngineState.CRASHED and self._model is not None:
            self._set_state(EngineState.READY, self._ready_detail())
        return healthy

    async def _watch(self) -> None:
        """Notice a server that goes away (or comes back) while idle."""
        while self._client is not None:
            await asyncio.sleep(self._health_poll_s)
            if not self._pumps:
                await self.check_health()

    # -- chatting ---------------------------------------------------------------------------

    def _request(
        self,
        messages: Sequence[ChatMessage],
        options: SamplingOptions,
        contents: Sequence[str | list[dict[str, Any]]] = (),
    ) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self._model,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            # Greedy decoding ignores top_p; the local engine sends 1.0 too.
            "top_p": options.top_p if options.temperature > 0 else 1.0,
        }
        if options.seed is not None:
            body["seed"] = options.seed
        if options.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": dict(options.json_schema)},
            }
        if self._mode == "chat":
            body["messages"] = [
                {"role": m.role, "content": contents[i] if i < len(contents) else m.content}
                for i, m in enumerate(messages)
            ]
            if options.thinking and self.abilities.thinking:
                body["chat_template_kwargs"] = {"enable_thinking": True}
            return "/v1/chat/completions", body
        if any(message.attachments for message in messages):
            raise UnsupportedInputError(
                f"{self._model} on {self.base_url} has no chat template, so it cannot "
                "take images or audio (vLLM's completions API reads text only).",
                "Remove the attachments, or serve an instruction-tuned model (its chat "
                "template places them).",
            )
        prompt, stop = render_base_prompt(messages)
        body["prompt"] = prompt
        if stop:
            body["stop"] = list(stop)
        return "/v1/completions", body

    async def _pump(
        self, rid: str, path: str, body: dict[str, Any], queue: asyncio.Queue[_Event]
    ) -> None:
        """Run one HTTP stream, turning it into events; cancelling it closes the stream."""
        client = self._client
        if client is None:
            queue.put_nowait(_Failed(EngineError("The engine is not connected.", "Connect.")))
            return
        opened = False
        try:
            async with client.stream(
                "POST",
                self.base_url + path,
                json=body,
                # vLLM names the request after X-Request-Id (``chatcmpl-<id>``
                # in its log), so both sides speak of the same request.
                headers={**_auth_headers(self._api_key), "X-Request-Id": rid},
            ) as response:
                if response.status_code != 200:
                    content = await response.aread()
                    queue.put_nowait(
                        _Failed(
                            _http_error(response.status_code, content, self.base_url, self._model)
                        )
                    )
                    return
                opened = True
                queue.put_nowait(_Opened())
                # Read to the end of the body, also after [DONE]: leaving
                # httpx's nested async generators to the garbage collector
                # would close them from another task, which anyio refuses.
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[len("data:") :].strip()
                    if payload == "[DONE]":
                        continue
                    try:
                        data = json.loads(payload)
                    except ValueError:
                        continue
                    if isinstance(data, dict):
                        queue.put_nowait(_Chunk(data))
            queue.put_nowait(_Done())
        except asyncio.CancelledError:
            queue.put_nowait(_Aborted())
            raise
        except httpx.TransportError as exc:
            if opened:
                queue.put_nowait(_Broken(exc))
            else:
                queue.put_nowait(_Failed(_unreachable(self.base_url, exc)))
        except Exception as exc:
            queue.put_nowait(_Failed(exc))

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        options: SamplingOptions,
        request_id: str | None = None,
    ) -> AsyncIterator[StreamItem]:
        """Stream an answer: :class:`TextDelta` items, then one :class:`StreamEnd`.

        Raises before the first item for a failed request (unreachable, 401,
        404, prompt too long); a failure mid-answer ends the stream with
        ``error``.
        """
        if self._client is None or self._model is None:
            raise EngineError(
                f"Not connected to a server ({self._status.state.value}).",
                "Connect to the server first.",
            )
        if not messages:
            raise ValueError("a chat needs at least one message")
        contents: list[str | list[dict[str, Any]]] = []
        if any(message.attachments for message in messages):
            refuse_unsupported(
                messages,
                self.abilities,
                self.model_id,
                "Remove the attachment, or connect to a server running a Gemma 4 model "
                "(E2B or E4B), which reads both.",
            )
            loop = asyncio.get_running_loop()
            contents = await loop.run_in_executor(None, content_parts, messages)
        request = self._begin_request(request_id)
        rid, stats = request.request_id, request.stats
        queue: asyncio.Queue[_Event] = asyncio.Queue()
        pump: asyncio.Task[None] | None = None
        try:
            event: _Event
            while True:  # at most twice: the chat API, then the completion API
                path, body = self._request(messages, options, contents)
                pump = asyncio.ensure_future(self._pump(rid, path, body, queue))
                self._pumps[rid] = pump
                event = await queue.get()
                if isinstance(event, _Failed) and isinstance(event.error, _ChatTemplateMissing):
                    await pump
                    if self._mode == "chat":
                        log.info("%s has no chat template; using /v1/completions", self._model)
                        self._mode = "completion"
                        continue
                    raise RemoteEngineError(str(event.error), "See the server's log.")
                break
            if isinstance(event, _Failed):
                error = event.error
                if isinstance(error, RemoteUnreachableError):
                    self._mark_unreachable(error)
                if isinstance(error, GemmaDesktopError):
                    raise error
                raise RemoteEngineError(
                    f"The request to {self.base_url} failed: {error}",
                    "See the server's log for details.",
                ) from error
            if isinstance(event, _Aborted):
                request.finish = "abort"
            if self._status.state == EngineState.CRASHED:
                self._set_state(EngineState.READY, self._ready_detail())
            if self._status.state == EngineState.READY:
                self._set_state(EngineState.GENERATING)
            reported = 0  # tokens already attributed to a TextDelta
            while request.finish is None:
                event = await queue.get()
                if isinstance(event, _Chunk):
                    thinking = self._read_reasoning(event.data, stats)
                    text, usage_tokens = self._read_chunk(event.data, stats)
                    if thinking or text:
                        tokens = 1 if usage_tokens is None else max(usage_tokens - reported, 0)
                        if thinking:
                            request.delta(thinking, tokens)
                            yield ThinkingDelta(thinking, tokens)
                            tokens = 0
                        if text:
                            yield request.delta(text, tokens)
                        if usage_tokens is not None:
                            stats.completion_tokens = usage_tokens
                        reported = stats.completion_tokens
                    elif usage_tokens is not None:
                        stats.completion_tokens = usage_tokens
                elif isinstance(event, _Done):  # the usage chunk follows the finish reason
                    request.finish = "error" if stats.error else stats.finish_reason or "stop"
                elif isinstance(event, _Aborted):
                    request.finish = "abort"
                elif isinstance(event, (_Broken, _Failed)):
                    request.finish = "error"
                    stats.error = (
                        f"The connection to {self.base_url} broke in the middle of the "
                        f"answer ({type(event.error).__name__})."
                    )
                    if not await self.check_health():
                        stats.error += " The server is not reachable any more."
        finally:
            if pump is not None and not pump.done():  # Stop: the consumer closed the stream
                request.finish = request.finish or "abort"
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            self._pumps.pop(rid, None)
            self._end_request(request)
        yield request.end()

    def _ready_detail(self) -> str:
        return f"Connected to {self.base_url}"

    @staticmethod
    def _read_reasoning(data: dict[str, Any], stats: ResponseStats) -> str:
        """The thinking text of one SSE chunk (a server with a reasoning parser), and the
        server's count of thinking tokens into ``stats``."""
        usage = data.get("usage")
        details = usage.get("completion_tokens_details") if isinstance(usage, dict) else None
        if isinstance(details, dict) and details.get("reasoning_tokens") is not None:
            stats.thinking_tokens = int(details["reasoning_tokens"])
        choices = data.get("choices") or []
        delta = choices[0].get("delta") if choices else None
        if not isinstance(delta, dict):
            return ""
        return str(delta.get("reasoning") or delta.get("reasoning_content") or "")

    @staticmethod
    def _read_chunk(data: dict[str, Any], stats: ResponseStats) -> tuple[str, int | None]:
        """Fold one SSE chunk into ``stats``: its new text (maybe empty) and the
        server's running completion-token count (``None`` without usage stats)."""
        error = data.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else str(error)
            stats.error = f"The server failed the request: {message}"
            return "", None
        usage = data.get("usage")
        completion_tokens: int | None = None
        if isinstance(usage, dict):
            stats.prompt_tokens = int(usage.get("prompt_tokens") or stats.prompt_tokens)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        text = ""
        choices = data.get("choices") or []
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                text = delta.get("content") or ""
            else:
                text = choice.get("text") or ""
            reason = choice.get("finish_reason")
            if reason:
                stats.finish_reason = _finish_reason(reason)
        return str(text), completion_tokens

    async def abort(self, request_id: str) -> None:
        """Stop ``request_id``: close its HTTP stream, which makes vLLM abort it."""
        pump = self._pumps.get(request_id)
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


def catalog_variant_for(model: RemoteModel) -> Variant | None:
    """The catalog's Gemma 4 variant a server's model is, by its served name or its
    ``root`` (a Hub id, or a path with a folder named after one), else ``None``."""
    by_name = {v.id.lower(): v for v in VariantCatalog() if not v.is_bundled}
    by_short = {v.id.rsplit("/", 1)[-1].lower(): v for v in by_name.values()}
    for name in (model.id, model.root):
        if not name:
            continue
        lowered = name.strip().rstrip("/").lower()
        if lowered in by_name:
            return by_name[lowered]
        parts = [p for p in lowered.replace("\\", "/").split("/") if p]
        for part in reversed(parts):
            if part.startswith("models--"):  # a Hugging Face cache folder
                repo = part[len("models--") :].replace("--", "/", 1)
                if repo in by_name:
                    return by_name[repo]
            if part in by_short:
                return by_short[part]
    return None


def remote_abilities(model: RemoteModel) -> EngineAbilities:
    """What a server's model takes: its catalog variant's inputs and thinking, else text."""
    variant = catalog_variant_for(model)
    if variant is None:
        return EngineAbilities(
            why_not=(
                f"The server's model {model.id} is not a Gemma 4 model the app knows, "
                "so it is sent text only."
            )
        )
    return EngineAbilities(
        images="image" in variant.inputs,
        audio="audio" in variant.inputs,
        thinking=variant.thinking,
        why_not="" if variant.inputs else f"{variant.label} reads text only.",
    )


def content_parts(messages: Sequence[ChatMessage]) -> list[str | list[dict[str, Any]]]:
    """Each message's OpenAI ``content``: its text alone, or its attachments' parts (images,
    then audio clips) then the text. Blocking (decoding): run it off the loop's thread."""
    decoded = decode_attachments(messages)
    contents: list[str | list[dict[str, Any]]] = []
    for message, media in zip(messages, decoded, strict=True):
        if not media.images and not media.clips:
            contents.append(message.content)
            continue
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(image)}}
            for image in media.images
        ]
        parts.extend(
            {
                "type": "input_audio",
                "input_audio": {
                    "data": base64.b64encode(wav_bytes(clip)).decode("ascii"),
                    "format": "wav",
                },
            }
            for clip in media.clips
        )
        parts.append({"type": "text", "text": message.content})
        contents.append(parts)
    return contents


def _finish_reason(reason: str) -> FinishReason:
    if reason in ("stop", "length", "abort", "error"):
        return reason  # type: ignore[return-value]
    return "stop"  # tool_calls, repetition...
