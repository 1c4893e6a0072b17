"""The local API: OpenAI- and Anthropic-compatible endpoints over the app's own engine.

Served by the window while the user has it on (the Connections page, off by
default) and by ``gemma-desktop serve`` without a window. Editors, agents and
scripts use the running model through ``/v1/models``, ``/v1/chat/completions``
and ``/v1/completions`` (OpenAI's API, streaming or not) and ``/v1/messages``
(Anthropic's Messages API, streaming or not, with ``/v1/messages/count_tokens``),
all served by vLLM's own server components (``vllm.entrypoints.openai`` and
``vllm.entrypoints.anthropic``: their routers, request models and serving
classes, initialised with ``init_app_state`` over the in-process engine
client). Nothing of either protocol is written here except ``/v1/models``;
this module decides who may talk to it and what vLLM is told about the model.

What a Gemma 4 chat model gets, as ``vllm serve`` gives it with
``--reasoning-parser gemma4 --enable-auto-tool-choice --tool-call-parser gemma4``:

* images (``image_url``, Anthropic ``image`` blocks) and audio (``input_audio``
  or ``audio_url``), taken as vLLM's server takes them (audio at any rate:
  vllm_compat makes vLLM resample with soxr where it would need torchaudio);
* thinking, streamed apart as ``reasoning`` (OpenAI) or ``thinking`` blocks
  (Anthropic), turned on with ``chat_template_kwargs: {"enable_thinking": true}``
  or Anthropic's ``thinking``;
* tools: OpenAI ``tools`` / ``tool_choice`` and Anthropic ``tools`` parsed by
  vLLM's ``gemma4`` tool parser into ``tool_calls`` / ``tool_use`` blocks,
  streamed too;
* structured outputs for every model: ``response_format`` ``json_object`` and
  ``json_schema``, through the engine's grammar backend
  (:data:`gemma_desktop.core.engine.config.STRUCTURED_OUTPUTS`).

``/v1/models`` lists the one model under the deployment name
(``settings.deployment_name``, ``ATOMR_INFER_GEMMA_DEPLOYMENT``, default
``gemma-local``) with its context length (``max_model_len``), what it takes
(``input_modalities``: ``text``, ``image``, ``audio``) and ``capabilities``
(``tools``, ``thinking``, ``json_schema``). A request longer than the context
gets vLLM's 400.

Defences (local LLM servers have been attacked from web pages through
DNS rebinding and permissive CORS):

* it listens on ``127.0.0.1`` only, unless the caller passes another host
  (``serve --host``: :func:`exposure_warning` says what that means);
* every ``/v1`` request needs the token, as ``Authorization: Bearer <token>``
  (OpenAI clients) or ``x-api-key: <token>`` (Anthropic clients); it is
  generated on first use and kept in the OS keyring (service
  ``gemma-desktop``, user ``local-api``), or, when no keyring works, in a
  ``0600`` file in the config dir (:attr:`LocalApiToken.source` says which).
  It is never written to ``settings.json`` or a log;
* on loopback, a request whose ``Host`` header is not ``127.0.0.1:<port>`` or
  ``localhost:<port>`` is refused (403): a rebound DNS name carries its own
  host name. Listening on another host, any ``Host`` is taken (the server
  cannot know every name it is reached by) and the token is the guard;
* a request from a browser page of another origin (an ``Origin`` header not
  explicitly allowed, or ``Sec-Fetch-Site: cross-site``) is refused (403),
  preflights included; no CORS headers are ever sent.

The server runs as a task on the caller's asyncio loop (uvicorn with
``loop="none"``, its signal handlers disabled so Ctrl-C still reaches the
caller) and :meth:`LocalApiServer.stop` ends it. While the engine is not
running (starting, crashed, stopped) requests get 503; after an engine restart
the serving state is rebuilt for the new engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gemma_desktop.core import paths
from gemma_desktop.core.engine import vllm_compat
from gemma_desktop.core.engine.protocol import Engine, EngineAbilities
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.fsutil import atomic_write
from gemma_desktop.core.logs import REDACTOR
from gemma_desktop.core.secrets import KEYRING_SERVICE, KeyringUnavailableError, TokenStore

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: Host names that keep the endpoint on this machine (no warning, ``Host`` checked).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: The port editors are configured with; ``0`` picks a free one (tests).
DEFAULT_PORT = 11435
KEYRING_USER = "local-api"
TOKEN_FILE_NAME = "local-api-token"
TOKEN_PREFIX = "gd-local-"

TokenSource = Literal["keyring", "file"]
EngineClientProvider = Callable[[], Any]
AbilitiesProvider = Callable[[], EngineAbilities]


class LocalApiError(GemmaDesktopError):
    """The local endpoint could not start (port taken, engine not vLLM...)."""


# --- the bearer token ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalApiToken:
    """The endpoint's bearer token and where it is kept."""

    value: str
    source: TokenSource
    file: Path | None = None

    def describe(self) -> str:
        if self.source == "keyring":
            return "OS keyring"
        return f"file {self.file} (readable only by you)"


class LocalApiTokenStore:
    """Generates the token on first use and keeps it (keyring, else a 0600 file).

    Every method may block (D-Bus, disk): call them off the UI thread.
    """

    def __init__(self, token_file: Path | None = None) -> None:
        self._keyring = TokenStore(KEYRING_SERVICE, KEYRING_USER)
        self.token_file = token_file or paths.config_dir() / TOKEN_FILE_NAME

    def load(self) -> LocalApiToken | None:
        """The saved token, or ``None`` when there is none yet."""
        with contextlib.suppress(KeyringUnavailableError):
            value = self._keyring.keyring_get()
            if value:
                return LocalApiToken(value, "keyring")
        try:
            value = self.token_file.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        REDACTOR.add_secret(value)
        return LocalApiToken(value, "file", self.token_file) if value else None

    def get_or_create(self) -> LocalApiToken:
        return self.load() or self.regenerate()

    def regenerate(self) -> LocalApiToken:
        """A new token (the old one stops working at the next start)."""
        value = TOKEN_PREFIX + secrets.token_urlsafe(32)
        REDACTOR.add_secret(value)
        try:
            self._keyring.save(value)
        except KeyringUnavailableError as exc:
            log.info("no keyring for the local API token (%s); using a file", exc.reason)
            self._write_file(value)
            return LocalApiToken(value, "file", self.token_file)
        self.token_file.unlink(missing_ok=True)  # an older plaintext copy
        return LocalApiToken(value, "keyring")

    def _write_file(self, value: str) -> None:
        self.token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.token_file, value + "\n", mode=0o600)


# --- request guards ----------------------------------------------------------------------------


def _json_response(status: int, message: str, kind: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status}}, status_code=status
    )


class LoopbackGuard:
    """Pure ASGI middleware: refuse foreign ``Host`` headers and cross-origin browsers.

    ``any_host`` (listening beyond loopback) takes every ``Host``; browsers from
    other origins are refused either way.
    """

    def __init__(
        self, app: Any, port: int, allowed_origins: Sequence[str] = (), any_host: bool = False
    ) -> None:
        self.app = app
        self.allowed_hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
        self.any_host = any_host
        self.allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        host = headers.get("host", "").strip().lower()
        if not self.any_host and host not in self.allowed_hosts:
            response = _json_response(
                403, "Host not allowed: this endpoint answers 127.0.0.1 only.", "Forbidden"
            )
            await response(scope, receive, send)
            return
        origin = headers.get("origin")
        cross_site = headers.get("sec-fetch-site", "").lower() == "cross-site"
        if (origin is not None and origin.rstrip("/").lower() not in self.allowed_origins) or (
            cross_site and origin is None
        ):
            response = _json_response(
                403, "Cross-origin browser requests are not allowed.", "Forbidden"
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class TokenGuard:
    """Pure ASGI middleware: ``/v1`` requests need the token, as ``Authorization: Bearer``
    (OpenAI clients) or ``x-api-key`` (Anthropic clients); compared in constant time."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.encode()).digest()

    def _valid(self, value: str | None) -> bool:
        if not value:
            return False
        digest = hashlib.sha256(value.strip().encode()).digest()
        return hmac.compare_digest(digest, self._digest)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        if (scheme.lower() == "bearer" and self._valid(bearer)) or self._valid(
            headers.get("x-api-key")
        ):
            await self.app(scope, receive, send)
            return
        message = (
            "Missing or wrong token: send it as 'Authorization: Bearer <token>' or "
            "'x-api-key: <token>' (gemma-desktop api-token prints it)."
        )
        if scope["path"].startswith("/v1/messages"):  # Anthropic's error shape
            from starlette.responses import JSONResponse

            response: Any = JSONResponse(
                {
                    "type": "error",
                    "error": {"type": "authentication_error", "message": message},
                },
                status_code=401,
            )
        else:
            response = _json_response(401, message, "Unauthorized")
        await response(scope, receive, send)


class _EngineGate:
    """ASGI middleware: 503 while no engine runs; vLLM's serving state for the current one."""

    def __init__(self, app: Any, server: LocalApiServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = self.server.current_engine_client()
        if client is None:
            response = _json_response(
                503,
                "The Gemma Desktop engine is not running; start it in the app.",
                "ServiceUnavailable",
            )
            await response(scope, receive, send)
            return
        await self.server.ensure_state(client)
        await self.app(scope, receive, send)


# --- the server --------------------------------------------------------------------------------


def server_for(engine: Engine, served_model_name: str, **kwargs: Any) -> LocalApiServer | None:
    """An endpoint over ``engine`` under the deployment name; ``None`` for an engine it
    cannot serve (only the in-process vLLM engine has an engine client to serve)."""
    from gemma_desktop.core.engine.vllm_local import VllmEngine

    if not isinstance(engine, VllmEngine):
        return None
    return LocalApiServer(
        lambda: engine.engine_client,
        served_model_name,
        abilities=lambda: engine.abilities,
        **kwargs,
    )


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the endpoint on this machine."""
    return host.strip().lower().strip("[]") in LOOPBACK_HOSTS or host.startswith("127.")


def exposure_warning(host: str) -> str | None:
    """What listening on ``host`` exposes (``None`` on loopback)."""
    if is_loopback(host):
        return None
    return (
        f"Listening on {host}: anyone on the network who has the token can use this "
        "computer's model (and its GPU). Keep the token secret, and prefer an SSH tunnel "
        "or a VPN to an open network."
    )


class LocalApiServer:
    """The local API: OpenAI and Anthropic endpoints (see the module docstring).

    ``engine_client`` returns vLLM's engine client of the running engine, or
    ``None`` while none runs, and ``abilities`` what the engine declares it takes;
    :func:`server_for` builds both from a
    :class:`~gemma_desktop.core.engine.vllm_local.VllmEngine`. ``host`` is where it
    listens (loopback unless the caller chooses otherwise: :func:`exposure_warning`).
    """

    def __init__(
        self,
        engine_client: EngineClientProvider,
        served_model_name: str,
        *,
        port: int = DEFAULT_PORT,
        host: str = HOST,
        token_store: LocalApiTokenStore | None = None,
        allowed_origins: Sequence[str] = (),
        abilities: AbilitiesProvider | None = None,
    ) -> None:
        self._engine_client = engine_client
        self.served_model_name = served_model_name
        self.requested_port = port
        self.host = host
        self._abilities = abilities or (lambda: EngineAbilities())
        self._tools = False
        self._created = 0
        self.token_store = token_store or LocalApiTokenStore()
        self.allowed_origins = tuple(allowed_origins)
        self._token: LocalApiToken | None = None
        self._port: int | None = None
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._app: Any = None
        self._args: Any = None
        self._state_client: Any = None
        self._state_lock = asyncio.Lock()

    # -- what the UI shows ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and self._port is not None

    @property
    def port(self) -> int | None:
        return self._port if self.running else None

    @property
    def address(self) -> str | None:
        """The OpenAI base URL (``http://127.0.0.1:<port>/v1``) while running."""
        root = self.root_address
        return f"{root}/v1" if root is not None else None

    @property
    def root_address(self) -> str | None:
        """The server's root (``http://127.0.0.1:<port>``: Anthropic clients' base URL)."""
        if not self.running:
            return None
        host = self.host if not is_loopback(self.host) else HOST
        if ":" in host:  # an IPv6 address
            host = f"[{host.strip('[]')}]"
        return f"http://{host}:{self._port}"

    @property
    def token(self) -> LocalApiToken | None:
        """The bearer token (known once started)."""
        return self._token

    def current_engine_client(self) -> Any:
        return self._engine_client()

    # -- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load or create the token, bind 127.0.0.1 and serve on the running loop."""
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._token = await loop.run_in_executor(None, self.token_store.get_or_create)
        try:
            self._args = await loop.run_in_executor(
                None, vllm_compat.openai_server_args, self.served_model_name
            )
        except ImportError as exc:
            raise LocalApiError(
                "The local API needs vLLM, which is not installed.",
                "Install the engine: pip install 'gemma-desktop[cpu]' (or [cuda]).",
            ) from exc
        sock = _bind(self.host, self.requested_port)
        self._port = int(sock.getsockname()[1])
        self._app = self._build_app(self._token.value, self._port)
        self._state_client = None

        import uvicorn

        config = uvicorn.Config(
            self._app,
            loop="none",
            lifespan="off",
            ws="none",
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=3,
        )
        server = _embedded_server(config)
        self._server = server
        self._task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not self._task.done():
            await asyncio.sleep(0.02)
        if self._task.done():
            sock.close()
            error = self._task.exception()
            self._task = None
            raise LocalApiError(
                f"The local API did not start: {error}", "See the app's log for details."
            )
        self._created = int(time.time())
        log.info("local API listening on %s", self.address)
        warning = exposure_warning(self.host)
        if warning:
            log.warning("%s", warning)

    async def stop(self) -> None:
        """Stop serving: close the socket, end open streams (aborting them in the engine)."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=10)
        except asyncio.TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            log.exception("local API server failed while stopping")
        self._port = None
        self._state_client = None

    # -- vLLM's app ------------------------------------------------------------------------------

    def _build_app(self, token: str, port: int) -> Any:
        app = vllm_compat.openai_app(self._args)
        app.add_api_route("/v1/models", self._list_models, methods=["GET"])
        # Starlette runs the middleware added last first: host/origin checks,
        # then the token, then the engine gate.
        app.add_middleware(_EngineGate, server=self)
        app.add_middleware(TokenGuard, token=token)
        app.add_middleware(
            LoopbackGuard,
            port=port,
            allowed_origins=self.allowed_origins,
            any_host=not is_loopback(self.host),
        )
        return app

    async def _list_models(self) -> dict[str, Any]:
        """``/v1/models``: OpenAI's list, with the context length and what the model takes."""
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict[str, Any]:
        """The served model, as ``/v1/models`` lists it (vLLM's fields and the app's)."""
        config = self.current_engine_client().model_config
        abilities = self._abilities()
        inputs = (("image", abilities.images), ("audio", abilities.audio))
        modalities = ["text", *(name for name, on in inputs if on)]
        capabilities = [
            name
            for name, on in (
                ("tools", self._tools),
                ("thinking", abilities.thinking),
                ("json_schema", True),
            )
            if on
        ]
        return {
            "id": self.served_model_name,
            "object": "model",
            "created": self._created,
            "owned_by": "gemma-desktop",
            "root": str(config.model),
            "max_model_len": config.max_model_len,
            "input_modalities": modalities,
            "capabilities": capabilities,
        }

    async def ensure_state(self, client: Any) -> None:
        """vLLM's serving objects for ``client``; rebuilt when the engine was restarted."""
        if client is self._state_client:
            return
        async with self._state_lock:
            if client is self._state_client:
                return
            from gemma_desktop.core.engine.prompt import BASE_CHAT_TEMPLATE, has_own_template

            tokenizer = client.get_tokenizer() if hasattr(client, "get_tokenizer") else None
            # The local engine prompts a model without a chat template with the
            # documented base format; the endpoint does the same.
            own_template = has_own_template(tokenizer)
            # A Gemma 4 chat model streams its thinking apart and calls tools, as
            # ``vllm serve --reasoning-parser gemma4 --tool-call-parser gemma4`` does.
            model_type = getattr(getattr(client.model_config, "hf_config", None), "model_type", "")
            gemma4_chat = own_template and model_type in vllm_compat.GEMMA4_MODEL_TYPES
            args = self._args
            vllm_compat.serve_model_with(
                args,
                model=str(client.model_config.model),
                chat_template=None if own_template else BASE_CHAT_TEMPLATE,
                reasoning_parser=vllm_compat.GEMMA4_REASONING_PARSER if gemma4_chat else None,
                tool_parser=vllm_compat.GEMMA4_TOOL_PARSER if gemma4_chat else None,
            )
            self._tools = gemma4_chat
            await vllm_compat.init_openai_state(client, self._app.state, args)
            self._state_client = client


def _embedded_server(config: Any) -> Any:
    """uvicorn's Server without its signal handlers: the app owns SIGINT and SIGTERM."""
    import uvicorn

    class EmbeddedServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return EmbeddedServer(config)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    host = host.strip("[]")
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise LocalApiError(
                f"Port {port} on {host} is already in use.",
                "Stop the program that uses it (another Gemma Desktop or gemma-desktop "
                "serve?), or choose another port (gemma-desktop serve --port N).",
            ) from None
        raise LocalApiError(f"Could not listen on {host}:{port}: {exc.strerror}", "") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock
