"""The :class:`~gemma_desktop.core.engine.protocol.Engine` on vLLM's in-process ``AsyncLLMEngine``.

vLLM is imported lazily, on a worker thread (:func:`preload_vllm`), and the
engine is built on a worker thread too: ``AsyncLLMEngine.from_engine_args``
blocks for 35-55 s on a CPU. The engine itself runs in an EngineCore child
process that vLLM starts with the *spawn* method, so every program that
starts one needs an import-safe main module.

Lifetime: ``async with VllmEngine(config) as engine:`` starts the engine and
always shuts it down, also when the body fails; :meth:`VllmEngine.shutdown`
leaves no child process behind (checked with psutil).

Streams (:meth:`VllmEngine.chat`):

* fail before the first item with :class:`EngineError` when the engine is not
  ready, and with :class:`PromptTooLongError` when the prompt does not fit;
* then yield :class:`TextDelta` items (``RequestOutputKind.DELTA``) and end with
  one :class:`StreamEnd` whose ``stats.finish_reason`` is ``stop``, ``length``,
  ``abort`` (:meth:`abort`, or the consumer closing the stream) or ``error``
  (``stats.error`` says why; when the engine process died the state becomes
  CRASHED and :meth:`restart` brings it back).

vLLM's logs go to stderr (warnings and up) and, in full, to
``state_dir()/engine.log``; start-up failures are explained from that log.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gemma_desktop.core import paths
from gemma_desktop.core.engine import vllm_compat
from gemma_desktop.core.engine.base import EngineBase
from gemma_desktop.core.engine.config import EngineConfig
from gemma_desktop.core.engine.prompt import BuiltPrompt, build_prompt, max_new_tokens
from gemma_desktop.core.engine.protocol import (
    ChatMessage,
    EngineDeadError,
    EngineError,
    EngineState,
    EngineStatus,
    ProgressListener,
    SamplingOptions,
    StartProgress,
    StreamItem,
)
from gemma_desktop.core.engine.start_errors import exception_text, explain_start_failure

log = logging.getLogger(__name__)
T = TypeVar("T")

_import_lock = threading.Lock()
_import_thread: threading.Thread | None = None
_import_error: BaseException | None = None
_engine_log: Path | None = None
#: ``time.perf_counter()`` when the vLLM import finished (for benchmarks).
import_finished_at: float | None = None

#: Seconds between checks that an idle engine's process is still alive.
HEALTH_POLL_S = 1.0


# --- importing vLLM off the UI thread -------------------------------------------


def engine_log_path() -> Path:
    """The file that receives vLLM's full log (parent and EngineCore process)."""
    return _engine_log or paths.state_dir() / "engine.log"


def _configure_vllm_logging(console_level: str, log_dir: Path | None = None) -> None:
    """Send vLLM's log to stderr (``console_level`` and up) and, in full, to a file.

    Must run before vLLM is imported; the EngineCore child inherits the
    setting through the environment, so its errors land in the same file.
    """
    global _engine_log
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        return
    log_file = (log_dir or paths.state_dir()) / "engine.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fmt = "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s %(message)s"
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": fmt, "datefmt": "%m-%d %H:%M:%S"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "level": console_level,
                "stream": "ext://sys.stderr",
            },
            "file": {
                "class": "logging.FileHandler",
                "formatter": "plain",
                "level": "INFO",
                "filename": str(log_file),
                "encoding": "utf-8",
            },
        },
        "loggers": {"vllm": {"handlers": ["console", "file"], "level": "INFO", "propagate": False}},
    }
    config_file = log_file.parent / "engine-logging.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(config_file)
    _engine_log = log_file


def _import_vllm() -> None:
    global _import_error, import_finished_at
    try:
        for name in vllm_compat.MODULES_TO_PRELOAD:
            importlib.import_module(name)
    except BaseException as exc:
        _import_error = exc
    import_finished_at = time.perf_counter()


def preload_vllm(
    console_log_level: str = "WARNING", log_dir: Path | None = None
) -> threading.Thread:
    """Start importing vLLM on a daemon thread (idempotent); returns the thread.

    Importing vLLM takes about 8 s on a CPU. Calling this as early as possible
    (when the window appears, or before parsing a CLI prompt) hides that time
    behind whatever the user does first. ``console_log_level`` and ``log_dir``
    (default: the state dir) only count on the first call.
    """
    global _import_thread
    with _import_lock:
        if _import_thread is None:
            _configure_vllm_logging(console_log_level, log_dir)
            _import_thread = threading.Thread(target=_import_vllm, name="vllm-import", daemon=True)
            _import_thread.start()
        return _import_thread


def _wait_for_vllm() -> None:
    preload_vllm().join()
    if _import_error is not None:
        raise EngineError(
            f"vLLM could not be imported: {_import_error}",
            "Install the engine: pip install 'gemma-desktop[cpu]' without a GPU, "
            "'gemma-desktop[cuda]' with an NVIDIA GPU (see README).",
        ) from _import_error


# --- the engine -------------------------------------------------------------------


class VllmEngine(EngineBase):
    """An :class:`~gemma_desktop.core.engine.protocol.Engine` running vLLM in this process.

    State listeners are called on the event loop's thread.
    """

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(EngineStatus(EngineState.NOT_STARTED, model_id=config.model_id))
        self.config = config
        self._llm: Any = None
        self._tokenizer: Any = None
        self._max_model_len: int | None = config.max_model_len
        self._engine_pids: set[int] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self.start_time_s: float | None = None

    # -- protocol: state ---------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def max_model_len(self) -> int | None:
        """The context length the running engine uses (known once started)."""
        return self._max_model_len

    @property
    def engine_client(self) -> Any:
        """vLLM's in-process engine client while the engine runs (``None`` otherwise):
        what the local OpenAI-compatible endpoint serves."""
        llm = self._llm
        if llm is None or llm.errored:
            return None
        return llm

    @property
    def engine_pids(self) -> frozenset[int]:
        """Process ids of the EngineCore processes this engine started."""
        return frozenset(self._engine_pids)

    def _set_state(self, state: EngineState, detail: str = "", hint: str = "") -> None:
        self._publish(EngineStatus(state, detail, self.config.model_id, hint))

    # -- lifetime ------------------------------------------------------------------

    async def start(self, progress: ProgressListener | None = None) -> None:
        """Import vLLM and build the engine on worker threads; the loop stays free."""
        async with self._start_lock:
            if self._llm is not None:
                return
            self._set_state(EngineState.STARTING, "Loading the engine")
            loop = asyncio.get_running_loop()

            def report(message: str, fraction: float | None) -> None:
                if progress is not None:
                    loop.call_soon_threadsafe(progress, StartProgress(message, fraction))

            began = time.perf_counter()
            try:
                self._check_model_present()
                report("Loading vLLM", 0.05)
                await loop.run_in_executor(None, _wait_for_vllm)
                report(f"Loading {self.config.model_id}", 0.2)
                log_offset = _log_size()
                before = _child_pids()
                try:
                    llm = await _in_thread(self._construct, on_abandoned=_shutdown_quietly)
                except Exception as exc:
                    self._reap(_child_pids() - before)
                    raise self._explain_start_failure(exc, log_offset) from exc
                self._engine_pids = _child_pids() - before
                self._llm = llm
                self._tokenizer = llm.get_tokenizer()
                self._max_model_len = int(llm.model_config.max_model_len)
                # compile the chat template and warm the tokenizer now, not on the first Send
                await loop.run_in_executor(None, self._warm_prompt_path)
            except EngineError as exc:
                self._set_state(EngineState.CRASHED, exc.reason, exc.hint)
                raise
            except Exception as exc:
                error = EngineError(
                    f"The engine failed to start {self.config.model_id}: {exc}",
                    f"See the engine log for details: {engine_log_path()}",
                )
                self._set_state(EngineState.CRASHED, error.reason, error.hint)
                raise error from exc
            except asyncio.CancelledError:
                self._set_state(EngineState.STOPPED, "Start cancelled")
                raise
            self.start_time_s = time.perf_counter() - began
            report("Ready", 1.0)
            self._set_state(EngineState.READY, f"Started in {self.start_time_s:.0f} s")
            self._monitor = asyncio.ensure_future(self._watch())

    def _warm_prompt_path(self) -> None:
        build_prompt(self._tokenizer, [ChatMessage("user", "Hello")], None)
        from vllm.sampling_params import SamplingParams

        SamplingParams(temperature=0.0, max_tokens=1)

    def _construct(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.engine.async_llm_engine import AsyncLLMEngine

        vllm_compat.cheapen_tokenizer_copies()
        args = AsyncEngineArgs(**self.config.to_engine_args_kwargs())
        return AsyncLLMEngine.from_engine_args(args)

    def _check_model_present(self) -> None:
        model = self.config.model
        if os.path.isabs(model) or model.startswith(".") or Path(model).is_dir():
            if not (Path(model) / "config.json").is_file():
                raise EngineError(
                    f"The model folder {model} is missing or incomplete.",
                    "Provision the bundled model again (delete the folder and restart), "
                    "or download the model.",
                )
            return
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json", cache_dir=self.config.download_dir)
        if not isinstance(cached, str):
            raise EngineError(
                f"{model} is not downloaded yet.",
                f"Download it first: gemma-desktop download {model} (or use the Download "
                "button); gated Gemma models need an accepted license and a token.",
            )

    def _explain_start_failure(self, exc: BaseException, log_offset: int) -> EngineError:
        return explain_start_failure(exc, self.config, _log_errors_since(log_offset))

    async def shutdown(self) -> None:
        """Stop the engine, abort what is running and make sure no child process remains."""
        llm, self._llm = self._llm, None
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        if llm is None:
            if self._status.state not in (EngineState.NOT_STARTED, EngineState.CRASHED):
                self._set_state(EngineState.STOPPED)
            return
        if self._active:
            with contextlib.suppress(Exception):  # the engine may be dead already
                await asyncio.wait_for(llm.abort(list(self._active)), timeout=2.0)
        pids = set(self._engine_pids)
        loop = asyncio.get_running_loop()
        # Stop reading first, or vLLM logs the engine's exit as an error.
        vllm_compat.stop_output_handler(llm)
        try:
            await loop.run_in_executor(None, llm.shutdown)
        except Exception:
            log.exception("vLLM shutdown failed; terminating its processes")
        await loop.run_in_executor(None, self._reap, pids)
        self._engine_pids.clear()
        self._tokenizer = None
        if self._status.state != EngineState.CRASHED:
            self._set_state(EngineState.STOPPED)

    @staticmethod
    def _reap(pids: set[int]) -> None:
        """Wait for ``pids`` (and their children) to exit; kill what lingers."""
        import psutil

        procs: list[psutil.Process] = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                procs.extend([proc, *proc.children(recursive=True)])
            except psutil.NoSuchProcess:
                continue
        _, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)

    async def check_health(self) -> bool:
        """Whether the engine answers; a dead engine moves to CRASHED."""
        llm = self._llm
        if llm is None:
            return False
        try:
            await llm.check_health()
        except Exception:
            self._mark_crashed()
            return False
        return True

    def _mark_crashed(self) -> None:
        if self._status.state != EngineState.CRASHED:
            self._set_state(
                EngineState.CRASHED,
                "The engine process stopped unexpectedly.",
                "Restart the engine; if it keeps crashing, see " + str(engine_log_path()),
            )

    async def _watch(self) -> None:
        """Notice an engine process that dies while idle (vLLM only tells requests)."""
        while self._llm is not None:
            await asyncio.sleep(HEALTH_POLL_S)
            llm = self._llm
            if llm is not None and llm.errored:
                self._mark_crashed()
                return

    # -- chatting ----------------------------------------------------------------------

    def build_prompt(self, messages: Sequence[ChatMessage]) -> BuiltPrompt:
        """The prompt :meth:`chat` would send; raises :class:`PromptTooLongError`."""
        if self._tokenizer is None:
            raise EngineError("The engine is not running.", "Start the engine first.")
        return build_prompt(self._tokenizer, messages, self._max_model_len)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """How many tokens the conversation takes as a prompt (without the length check)."""
        if self._tokenizer is None:
            raise EngineError("The engine is not running.", "Start the engine first.")
        return build_prompt(self._tokenizer, messages, None).token_count

    def _require_running(self) -> Any:
        if self._llm is None or self._status.state == EngineState.CRASHED:
            state = self._status.state
            if state == EngineState.CRASHED:
                raise EngineDeadError(
                    "The engine has crashed.", "Restart the engine to continue chatting."
                )
            raise EngineError(
                f"The engine is not running ({state.value}).", "Start the engine first."
            )
        return self._llm

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        options: SamplingOptions,
        request_id: str | None = None,
    ) -> AsyncIterator[StreamItem]:
        """Stream an answer (see the module docstring for the contract)."""
        llm = self._require_running()
        prompt = self.build_prompt(messages)
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDeadError

        params = SamplingParams(
            temperature=options.temperature,
            top_p=options.top_p if options.temperature > 0 else 1.0,
            max_tokens=max_new_tokens(options.max_tokens, prompt.token_count, self._max_model_len),
            seed=options.seed,
            stop=list(prompt.stop) or None,
            output_kind=RequestOutputKind.DELTA,
        )
        request = self._begin_request(request_id, prompt.token_count)
        rid, stats = request.request_id, request.stats
        stream = llm.generate(TokensPrompt(prompt_token_ids=prompt.token_ids), params, rid)
        try:
            async for output in stream:
                completion = output.outputs[0] if output.outputs else None
                if completion is not None and (completion.text or completion.token_ids):
                    yield request.delta(completion.text, len(completion.token_ids))
                if output.finished:
                    reason = completion.finish_reason if completion is not None else None
                    request.finish = reason if reason in ("stop", "length", "abort") else "stop"
        except VllmDeadError:
            self._mark_crashed()
            request.finish = "error"
            stats.error = "The engine process stopped unexpectedly; restart the engine."
        except asyncio.CancelledError:
            request.finish = "abort"
            raise
        except Exception as exc:  # a failed request; the engine itself may be fine
            request.finish = "error"
            stats.error = f"The request failed: {exception_text(exc).strip() or exc!r}"
            if llm.errored:
                self._mark_crashed()
        finally:
            self._end_request(request)
            if request.finish is None:  # the consumer closed the stream: Stop
                await stream.aclose()
        yield request.end()

    async def abort(self, request_id: str) -> None:
        """Abort ``request_id`` inside the engine; its stream ends with ``abort``."""
        llm = self._llm
        if llm is None or request_id not in self._active:
            return
        await llm.abort(request_id)


# --- helpers ----------------------------------------------------------------------------


async def _in_thread(func: Callable[[], T], on_abandoned: Callable[[T], None]) -> T:
    """Run ``func`` on a daemon thread; the loop only waits for its result.

    If the awaiting task is cancelled (the app quits while the engine starts),
    ``on_abandoned`` receives the result once ``func`` finishes, so a late
    engine is shut down instead of leaking its processes.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    abandoned = threading.Event()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():  # cancelled between the thread finishing and now
            if result is not None:
                threading.Thread(target=on_abandoned, args=(result,), daemon=True).start()
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = func()
        except BaseException as exc:
            if not abandoned.is_set():
                loop.call_soon_threadsafe(deliver, None, exc)
            return
        if abandoned.is_set():
            on_abandoned(result)
            return
        try:
            loop.call_soon_threadsafe(deliver, result, None)
        except RuntimeError:  # the loop is closed
            on_abandoned(result)

    threading.Thread(target=work, name="vllm-engine-start", daemon=True).start()
    try:
        return await future
    except asyncio.CancelledError:
        abandoned.set()
        raise


def _shutdown_quietly(llm: Any) -> None:
    try:
        llm.shutdown()
    except Exception:
        log.exception("shutting down an abandoned engine failed")


def _child_pids() -> set[int]:
    """This process's descendants, except multiprocessing's resource tracker.

    The tracker is shared by everything in the process that uses
    multiprocessing and exits by itself when this process does.
    """
    import psutil

    pids = set()
    try:
        for child in psutil.Process().children(recursive=True):
            try:
                if "resource_tracker" in " ".join(child.cmdline()):
                    continue
            except psutil.Error:
                continue
            pids.add(child.pid)
    except psutil.Error:
        pass
    return pids


def living(pids: set[int] | frozenset[int]) -> set[int]:
    """Those of ``pids`` that still run (zombies waiting to be reaped do not count)."""
    import psutil

    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.Error:
            continue
    return alive


def _log_size() -> int:
    try:
        return engine_log_path().stat().st_size
    except OSError:
        return 0


def _log_errors_since(offset: int) -> str:
    """ERROR lines and tracebacks the engine logged since ``offset`` (last 8 KB)."""
    try:
        with open(engine_log_path(), "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text[-8192:]
