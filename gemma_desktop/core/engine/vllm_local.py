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
* refuse an attachment the model cannot take (:attr:`VllmEngine.abilities`)
  or cannot be decoded with :class:`UnsupportedInputError`, before anything is
  sent;
* send the conversation rendered by the model's chat template and tokenized
  here (``TokensPrompt``, with the decoded images and 16 kHz audio clips as
  ``multi_modal_data``), so ``<bos>`` is never doubled, in any mode;
* then yield :class:`ThinkingDelta` items (a model that thinks, split by vLLM's
  Gemma 4 reasoning parser, :mod:`gemma_desktop.core.engine.thinking`) and
  :class:`TextDelta` items (``RequestOutputKind.DELTA``; the local engine's
  carry vLLM's token ids, :class:`VllmTextDelta`) and end with
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
import gc
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import replace as _replace
from pathlib import Path
from typing import Any, TypeVar

from gemma_desktop.core import logs, paths
from gemma_desktop.core.engine import processes, vllm_compat
from gemma_desktop.core.engine.base import EngineBase
from gemma_desktop.core.engine.config import EngineConfig
from gemma_desktop.core.engine.processes import EngineRegistry, ProcessWatch
from gemma_desktop.core.engine.prompt import (
    BuiltPrompt,
    Placeholders,
    build_prompt,
    max_new_tokens,
)
from gemma_desktop.core.engine.protocol import (
    SLEEPING,
    ChatMessage,
    EngineAbilities,
    EngineDeadError,
    EngineError,
    EngineState,
    EngineStatus,
    ProgressListener,
    SamplingOptions,
    StartProgress,
    StreamEnd,
    StreamItem,
    TextDelta,
    ThinkingDelta,
)
from gemma_desktop.core.engine.start_errors import exception_text, explain_start_failure
from gemma_desktop.core.engine.thinking import ThinkingSplitter
from gemma_desktop.core.machine.gpu import device_environment
from gemma_desktop.core.media import (
    AUDIO_SAMPLE_RATE,
    DecodedMessage,
    SoftTokenBudget,
    decode_attachments,
    refuse_unsupported,
)
from gemma_desktop.core.models.model_use import ModelBeingDeletedError, ModelUse

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
#: The status detail while :meth:`VllmEngine.sleep` has freed the GPU.
SLEEPING_DETAIL = "Sleeping: GPU memory freed; the next message wakes it"


# --- importing vLLM off the UI thread -------------------------------------------


def engine_log_path() -> Path:
    """The file that receives vLLM's full log (parent and EngineCore process)."""
    return _engine_log or paths.state_dir() / "engine.log"


def _configure_vllm_logging(console_level: str, log_dir: Path | None = None) -> None:
    """Send vLLM's log to stderr (``console_level`` and up) and, in full, to a file.

    Must run before vLLM is imported; the EngineCore child inherits the
    setting through the environment, so its errors land in the same file.
    Every record goes through the app's redaction (:mod:`gemma_desktop.core.logs`),
    in the engine's processes too; the file is rotated before each engine start
    once it has grown past the app log's size (:func:`rotate_engine_log`).
    """
    global _engine_log
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        return
    log_file = (log_dir or paths.state_dir()) / "engine.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logs.rotate_if_large(log_file)
    fmt = "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s %(message)s"
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": fmt, "datefmt": "%m-%d %H:%M:%S"}},
        "filters": {"redact": {"()": "gemma_desktop.core.logs.RedactingFilter"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "level": console_level,
                "stream": "ext://sys.stderr",
                "filters": ["redact"],
            },
            "file": {
                "class": "logging.FileHandler",
                "formatter": "plain",
                "level": "INFO",
                "filename": str(log_file),
                "encoding": "utf-8",
                "filters": ["redact"],
            },
        },
        "loggers": {"vllm": {"handlers": ["console", "file"], "level": "INFO", "propagate": False}},
    }
    config_file = log_file.parent / "engine-logging.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(config_file)
    _engine_log = log_file


def rotate_engine_log() -> bool:
    """Before an engine start: roll ``engine.log`` over once it has grown past the limit.

    Several processes append to it (the app's and the engine's), so it is not
    rotated while an engine runs; the app's own handler is reopened on the
    new file, and the engine about to start opens it fresh.
    """
    path = engine_log_path()
    if not logs.rotate_if_large(path):
        return False
    for handler in logging.getLogger("vllm").handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path:
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()
    return True


def _import_vllm() -> None:
    global _import_error, import_finished_at
    # Importing torch and vLLM creates hundreds of thousands of objects: the
    # collector's full passes during it hold the GIL, and freeze the window,
    # for up to 0.2 s each. They are not collected at all: once imported they
    # live as long as the app, so they are frozen (moved out of the collector's
    # sight) before it runs again; else its first pass walks them all (0.4 s).
    try:
        with _collector_paused():
            for name in vllm_compat.MODULES_TO_PRELOAD:
                importlib.import_module(name)
    except BaseException as exc:
        _import_error = exc
    import_finished_at = time.perf_counter()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No collection during a burst of long-lived objects (vLLM's modules, an engine's
    tokenizer); after it they are frozen, so that no collection walks them while the
    window waits."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


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

    def __init__(self, config: EngineConfig, registry: EngineRegistry | None = None) -> None:
        super().__init__(EngineStatus(EngineState.NOT_STARTED, model_id=config.model_id))
        self.config = config
        self._registry = registry if registry is not None else EngineRegistry()
        self._llm: Any = None
        self._tokenizer: Any = None
        self._max_model_len: int | None = config.max_model_len
        self._owner: _EngineOwner | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self.start_time_s: float | None = None
        #: The vLLM engine :meth:`sleep` put to sleep (a restarted engine is awake).
        self._sleeping_llm: Any = None
        #: The model is running: a delete is refused until shutdown (core.models.model_use).
        self._model_use: ModelUse | None = None

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
        """Process ids of the engine processes (EngineCore, its workers) this engine started."""
        owner = self._owner
        return (
            frozenset(p.pid for p in owner.watch.processes()) if owner is not None else frozenset()
        )

    @property
    def abilities(self) -> EngineAbilities:
        """What the model takes besides text (the catalog's variant) and text-only mode;
        ``sleep`` where the engine starts with vLLM's sleep mode (CUDA)."""
        return _replace(local_abilities(self.config), sleep=bool(self.config.enable_sleep_mode))

    def _set_state(self, state: EngineState, detail: str = "", hint: str = "") -> None:
        self._publish(EngineStatus(state, detail, self.config.model_id, hint))

    def _ready_detail(self) -> str:
        """The context, where the app chose a shorter one than the model's own so that it
        fits the card (``32,768 tokens of context, the longest that fits this card``)."""
        return self.config.context_note

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
                self._hold_model()
                report("Loading vLLM", 0.05)
                await loop.run_in_executor(None, _wait_for_vllm)
                report(f"Loading {self.config.model_id}", 0.2)
                rotate_engine_log()
                log_offset = _log_size()
                owner = _EngineOwner(self._construct, self._registry)
                self._owner = owner
                try:
                    llm = await owner.start(loop)
                except asyncio.CancelledError:
                    owner.cancel()  # end its processes now; the thread winds down by itself
                    self._owner = None
                    raise
                except Exception as exc:
                    self._owner = None
                    raise self._explain_start_failure(exc, log_offset) from exc
                self._llm = llm
                self._tokenizer = llm.get_tokenizer()
                self._max_model_len = int(llm.model_config.max_model_len)
                # compile the chat template and warm the tokenizer now, not on the first Send
                await loop.run_in_executor(None, self._warm_prompt_path)
            except EngineError as exc:
                self._release_model()
                self._set_state(EngineState.CRASHED, exc.reason, exc.hint)
                raise
            except Exception as exc:
                self._release_model()
                error = EngineError(
                    f"The engine failed to start {self.config.model_id}: {exc}",
                    f"See the engine log for details: {engine_log_path()}",
                )
                self._set_state(EngineState.CRASHED, error.reason, error.hint)
                raise error from exc
            except asyncio.CancelledError:
                self._release_model()
                self._set_state(EngineState.STOPPED, "Start cancelled")
                raise
            self.start_time_s = time.perf_counter() - began
            report("Ready", 1.0)
            started = f"Started in {self.start_time_s:.0f} s"
            note = self._ready_detail()
            self._set_state(EngineState.READY, f"{started} · {note}" if note else started)
            self._monitor = asyncio.ensure_future(self._watch())

    def _warm_prompt_path(self) -> None:
        build_prompt(self._tokenizer, [ChatMessage("user", "Hello")], None)
        from vllm.sampling_params import SamplingParams

        SamplingParams(temperature=0.0, max_tokens=1)
        if self.abilities.thinking:  # the parser's first import takes a moment
            ThinkingSplitter(self._tokenizer, thinking=False)

    def _construct(self) -> Any:
        """Build vLLM's engine (on the owner thread: its processes are tied to it)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.engine.async_llm_engine import AsyncLLMEngine

        processes.mark_app_process()
        vllm_compat.cheapen_tokenizer_copies()
        # vLLM's plugin entry point applies these in its processes; this process
        # needs them before vLLM inspects a Gemma 4 model, whatever VLLM_PLUGINS says.
        # The engine's processes learn the model's type from the environment.
        model_type = vllm_compat.model_type_of(self.config.model)
        vllm_compat.apply_engine_process_adjustments(model_type)
        environment = self.config.device_env + (
            ((vllm_compat.MODEL_TYPE_ENV, model_type),) if model_type else ()
        )
        kwargs = self.config.to_engine_args_kwargs()
        if "structured_outputs_config" in kwargs:
            from vllm.config import StructuredOutputsConfig

            # vLLM writes the reasoning parser into it: its config object, not a dict.
            kwargs["structured_outputs_config"] = StructuredOutputsConfig(
                **kwargs["structured_outputs_config"]
            )
        args = AsyncEngineArgs(**kwargs)
        # The start allocates millions of small objects (the tokenizer's vocabulary):
        # a full collection in the middle holds the GIL, and the window, for 0.1-0.3 s.
        # The engine's processes inherit the chosen GPU (CUDA_VISIBLE_DEVICES) at spawn.
        with _collector_paused(), device_environment(environment):
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

    def _hold_model(self) -> None:
        """Mark the model as running (a delete is refused until shutdown) and note its use."""
        use = ModelUse(self.config.model_id, "running")
        try:
            use.acquire()
        except ModelBeingDeletedError as exc:
            raise EngineError(exc.reason, exc.hint) from exc
        self._model_use = use

    def _release_model(self) -> None:
        use, self._model_use = self._model_use, None
        if use is not None:
            use.release()

    def _explain_start_failure(self, exc: BaseException, log_offset: int) -> EngineError:
        return explain_start_failure(exc, self.config, _log_errors_since(log_offset))

    async def shutdown(self) -> None:
        """Stop the engine, abort what is running and make sure no child process remains."""
        llm, self._llm = self._llm, None
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        if llm is None:
            self._release_model()
            if self._status.state not in (EngineState.NOT_STARTED, EngineState.CRASHED):
                self._set_state(EngineState.STOPPED)
            return
        if self._active:
            with contextlib.suppress(Exception):  # the engine may be dead already
                await asyncio.wait_for(llm.abort(list(self._active)), timeout=2.0)
        # Stop reading first, or vLLM logs the engine's exit as an error.
        vllm_compat.stop_output_handler(llm)
        owner, self._owner = self._owner, None
        if owner is not None:
            await owner.shutdown()
        self._release_model()
        self._tokenizer = None
        if self._status.state != EngineState.CRASHED:
            self._set_state(EngineState.STOPPED)

    # -- sleep mode: Free GPU memory (CUDA) --------------------------------------------

    @property
    def is_sleeping(self) -> bool:
        """Whether :meth:`sleep` freed the GPU and no :meth:`wake_up` followed yet."""
        return self._sleeping_llm is not None and self._sleeping_llm is self._llm

    async def sleep(self) -> None:
        """Free the GPU's memory without stopping: vLLM's sleep level 1 (the weights go
        to RAM, the KV cache is dropped). Running answers are aborted. Only where
        :attr:`abilities` says ``sleep`` (the CUDA build)."""
        if not self.abilities.sleep:
            return await super().sleep()  # refuses
        llm = self._require_running()
        if self.is_sleeping:
            return
        await llm.sleep(level=1)
        self._sleeping_llm = llm
        self._publish(
            EngineStatus(
                EngineState.READY,
                SLEEPING_DETAIL,
                self.config.model_id,
                extra={SLEEPING: "1"},
            )
        )

    async def wake_up(self) -> None:
        """Bring the weights back to the GPU after :meth:`sleep` (a few seconds)."""
        if not self.is_sleeping:
            return
        llm = self._require_running()
        self._set_state(EngineState.STARTING, "Waking up")
        try:
            await llm.wake_up()
        except Exception as exc:
            self._mark_crashed()
            raise EngineError(
                f"The engine could not take the GPU back: {exception_text(exc).strip()}",
                "Restart the engine.",
            ) from exc
        self._sleeping_llm = None
        self._set_state(EngineState.READY, "Awake again")

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

    def build_prompt(
        self,
        messages: Sequence[ChatMessage],
        *,
        thinking: bool = False,
        media: Sequence[DecodedMessage] = (),
    ) -> BuiltPrompt:
        """The prompt :meth:`chat` would send; raises :class:`PromptTooLongError`.

        ``media`` is the messages' decoded attachments (:func:`decode_attachments`).
        The length check counts each attachment at the most vLLM's processor can
        expand it to (:class:`~gemma_desktop.core.media.SoftTokenBudget`, read from
        the model's ``processor_config.json``), so a prompt that passes always
        fits; the answer's stats carry vLLM's exact count.
        """
        if self._tokenizer is None:
            raise EngineError("The engine is not running.", "Start the engine first.")
        return build_prompt(
            self._tokenizer,
            messages,
            self._max_model_len,
            thinking=thinking and self.abilities.thinking,
            placeholders=self._placeholders(media),
        )

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """How many tokens the conversation takes as a prompt (without the length check;
        attachments at their upper bound, decoded here: blocking)."""
        if self._tokenizer is None:
            raise EngineError("The engine is not running.", "Start the engine first.")
        media = decode_attachments(messages) if _has_attachments(messages) else []
        return build_prompt(
            self._tokenizer, messages, None, placeholders=self._placeholders(media)
        ).token_count

    def _placeholders(self, media: Sequence[DecodedMessage]) -> Placeholders:
        if not any(m.images or m.clips for m in media):
            return Placeholders()
        budget = SoftTokenBudget.from_model_folder(self.config.model)
        extra = 0
        for message in media:
            # the template already wrote one placeholder token for each attachment
            extra += len(message.images) * (budget.image_tokens - 1)
            extra += sum(budget.audio_tokens(len(clip)) - 1 for clip in message.clips)
        return Placeholders(tuple((len(m.images), len(m.clips)) for m in media), extra)

    def check_attachments(self, messages: Sequence[ChatMessage]) -> None:
        """Raise :class:`UnsupportedInputError` for an attachment this engine cannot take
        (known from its config: callable before :meth:`start`)."""
        if self.config.text_only:
            hint = (
                "Turn text-only mode off (unset ATOMR_INFER_GEMMA_TEXT_ONLY, or switch "
                "text_only off in the settings) and restart the engine; or remove the attachment."
            )
        else:
            hint = "Remove the attachment, or pick a Gemma 4 model (E2B or E4B), which reads both."
        refuse_unsupported(messages, self.abilities, self.config.model_id, hint)

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
        if not messages:
            raise ValueError("a chat needs at least one message")
        if _has_attachments(messages):  # known from the config, whatever the state
            self.check_attachments(messages)
        llm = self._require_running()
        media: list[DecodedMessage] = []
        if _has_attachments(messages):
            loop = asyncio.get_running_loop()
            media = await loop.run_in_executor(None, decode_attachments, messages)
        prompt = self.build_prompt(messages, thinking=options.thinking, media=media)
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import (
            RequestOutputKind,
            SamplingParams,
            StructuredOutputsParams,
        )
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDeadError

        # A model that thinks streams through vLLM's reasoning parser, which needs
        # the special tokens in the text; the splitter hides them afterwards.
        splitter = (
            ThinkingSplitter(self._tokenizer, prompt.thinking) if self.abilities.thinking else None
        )
        params = SamplingParams(
            temperature=options.temperature,
            top_p=options.top_p if options.temperature > 0 else 1.0,
            max_tokens=max_new_tokens(options.max_tokens, prompt.token_count, self._max_model_len),
            seed=options.seed,
            stop=list(prompt.stop) or None,
            output_kind=RequestOutputKind.DELTA,
            skip_special_tokens=splitter is None,
            structured_outputs=None
            if options.json_schema is None
            else StructuredOutputsParams(json=dict(options.json_schema)),
        )
        request = self._begin_request(request_id, prompt.token_count)
        rid, stats = request.request_id, request.stats
        engine_prompt = TokensPrompt(prompt_token_ids=prompt.token_ids)
        multi_modal_data = _multi_modal_data(media)
        if multi_modal_data:
            engine_prompt["multi_modal_data"] = multi_modal_data
        stream = llm.generate(engine_prompt, params, rid)
        prompt_ids: tuple[int, ...] = ()
        output_ids: list[int] = []
        try:
            async for output in stream:
                if not prompt_ids and output.prompt_token_ids is not None:
                    # vLLM's own count: the attachments' soft tokens expanded
                    prompt_ids = tuple(output.prompt_token_ids)
                    stats.prompt_tokens = len(prompt_ids)
                completion = output.outputs[0] if output.outputs else None
                if completion is not None and (completion.text or completion.token_ids):
                    ids = tuple(completion.token_ids)
                    output_ids.extend(ids)
                    if splitter is None:
                        request.delta(completion.text, len(ids))
                        yield VllmTextDelta(completion.text, len(ids), ids)
                    else:
                        for item in _split_step(request, splitter.feed(completion.text, ids), ids):
                            yield item
                if output.finished:
                    reason = completion.finish_reason if completion is not None else None
                    request.finish = reason if reason in ("stop", "length", "abort") else "stop"
                    if splitter is not None:
                        for item in _split_step(request, splitter.finish(), ()):
                            yield item
                        stats.thinking_tokens = splitter.thinking_tokens
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
        yield VllmStreamEnd(request.end().stats, prompt_ids, tuple(output_ids))

    async def abort(self, request_id: str) -> None:
        """Abort ``request_id`` inside the engine; its stream ends with ``abort``."""
        llm = self._llm
        if llm is None or request_id not in self._active:
            return
        await llm.abort(request_id)


# --- what the local engine streams and takes ------------------------------------------------


@dataclass(frozen=True)
class VllmTextDelta(TextDelta):
    """A :class:`TextDelta` of the local engine, with the token ids vLLM generated."""

    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class VllmThinkingDelta(ThinkingDelta):
    """A :class:`ThinkingDelta` of the local engine, with the token ids vLLM generated."""

    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class VllmStreamEnd(StreamEnd):
    """The local engine's :class:`StreamEnd`, with vLLM's prompt ids (attachments expanded)
    and every token id it generated, shown or not (markers, thinking), for comparisons."""

    prompt_token_ids: tuple[int, ...] = ()
    output_token_ids: tuple[int, ...] = ()


def local_abilities(config: EngineConfig) -> EngineAbilities:
    """What a local engine on ``config`` takes: the catalog variant's inputs and thinking,
    less what text-only mode (``ATOMR_INFER_GEMMA_TEXT_ONLY``) switches off. Thinking
    needs vLLM's Gemma 4 reasoning parser, reached on the supported vLLM line only."""
    from gemma_desktop.core.models.catalog import VariantCatalog

    catalog = VariantCatalog()
    if config.model_id not in catalog:
        return EngineAbilities(why_not=f"{config.model_id} is not a model the app knows.")
    variant = catalog.get(config.model_id)
    thinking = variant.thinking and vllm_compat.on_supported_line()
    if not variant.inputs:
        why = (
            "The bundled Gemma 3 270M reads text only."
            if variant.is_bundled
            else f"{variant.label} reads text only."
        )
        return EngineAbilities(thinking=thinking, why_not=why)
    if config.text_only:
        return EngineAbilities(
            thinking=thinking,
            why_not=(
                "Text-only mode is on (ATOMR_INFER_GEMMA_TEXT_ONLY): images and audio are "
                "switched off to save memory and start faster."
            ),
        )
    return EngineAbilities(
        images="image" in variant.inputs,
        audio="audio" in variant.inputs,
        thinking=thinking,
    )


def _has_attachments(messages: Sequence[ChatMessage]) -> bool:
    return any(message.attachments for message in messages)


def _multi_modal_data(media: Sequence[DecodedMessage]) -> dict[str, Any]:
    """vLLM's ``multi_modal_data``: every image and clip in prompt order (16 kHz clips)."""
    images = [image for message in media for image in message.images]
    clips = [(clip, AUDIO_SAMPLE_RATE) for message in media for clip in message.clips]
    data: dict[str, Any] = {}
    if images:
        data["image"] = images
    if clips:
        data["audio"] = clips
    return data


def _split_step(
    request: Any, parts: tuple[str, str], ids: tuple[int, ...]
) -> list[VllmThinkingDelta | VllmTextDelta]:
    """One step's items: its thinking, then its answer. The step's tokens count once,
    toward what came first; a step of markers only counts, and shows nothing."""
    thinking, answer = parts
    items: list[VllmThinkingDelta | VllmTextDelta] = []
    tokens = len(ids)
    if thinking:
        request.delta(thinking, tokens)
        items.append(VllmThinkingDelta(thinking, tokens, ids))
        tokens, ids = 0, ()
    if answer:
        request.delta(answer, tokens)
        items.append(VllmTextDelta(answer, tokens, ids))
    elif tokens:
        request.delta("", tokens)
    return items


# --- helpers ----------------------------------------------------------------------------


class _EngineOwner:
    """The one thread that builds vLLM's engine, lives as long as it, and shuts it down.

    The kernel's parent-death signal (:mod:`gemma_desktop.core.engine.processes`)
    follows the *thread* that started a child process, so the thread that calls
    ``from_engine_args`` must outlive the engine: it builds it, waits, and runs
    ``shutdown()`` itself. While it builds, a :class:`ProcessWatch` records each
    engine process as it appears, so a cancelled start (Quit, Stop, switching
    the model while it loads) kills them at once: ``from_engine_args`` then
    fails within a fraction of a second, and nothing waits for it.
    """

    def __init__(self, build: Callable[[], Any], registry: EngineRegistry | None) -> None:
        self._build = build
        self.watch = ProcessWatch(registry)
        self._registry = registry
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self.cancelled = False
        self._thread = threading.Thread(target=self._run, name="vllm-engine-owner", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._built: asyncio.Future[Any] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        self._loop = loop
        self._built = loop.create_future()
        self.watch.start()
        self._thread.start()
        return self._built

    def _deliver(self, result: Any, error: BaseException | None) -> None:
        future = self._built
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _report(self, result: Any, error: BaseException | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._deliver, result, error)

    def _run(self) -> None:
        llm: Any = None
        try:
            llm = self._build()
        except BaseException as exc:
            self.watch.stop()
            processes.kill_now(self.watch.processes())
            processes.reap(self.watch.pids)
            self._report(None, exc)
            self._stopped.set()
            return
        self.watch.stop()
        processes.collect_when_ended(self.watch.pids)  # whenever they end: stop, crash
        if self.cancelled:
            self._stop.set()
        else:
            self._report(llm, None)
        self._stop.wait()
        try:
            llm.shutdown()
        except Exception:
            log.exception("vLLM shutdown failed; ending its processes")
        processes.end_processes(self.watch.processes())
        processes.reap(self.watch.pids)
        if self._registry is not None:
            self._registry.clear()
        self._stopped.set()

    def cancel(self) -> None:
        """Abandon the start: kill the engine's processes, now and as they appear."""
        self.cancelled = True
        self.watch.cancel()
        self._stop.set()

    async def shutdown(self, timeout_s: float = 60.0) -> None:
        """Ask the owner thread to shut the engine down and wait until it has."""
        self._stop.set()
        loop = asyncio.get_running_loop()
        finished = await loop.run_in_executor(None, self._stopped.wait, timeout_s)
        if not finished:
            log.warning("vLLM did not shut down in %.0f s; killing its processes", timeout_s)
            processes.kill_now(self.watch.processes())


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
