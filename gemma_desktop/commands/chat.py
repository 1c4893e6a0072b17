"""``gemma-desktop chat``: one answer from the local engine, streamed to the terminal.

Text goes to stdout as it arrives, figures to stderr. With ``--json`` stdout
gets one JSON object per line: ``{"type": "delta", "text": ...}`` for each
step, then one ``{"type": "stats", ...}``. Ctrl-C stops the answer inside the
engine, shuts the engine down and exits with 130.

Without ``--variant`` the bundled Gemma 3 270M is used on a machine without an
NVIDIA GPU (provisioned on first use, progress on stderr) and the configured
model otherwise. Runs on a plain asyncio loop; no Qt is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any, TextIO

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("prompt", nargs="+", metavar="PROMPT", help="the message to answer")
    parser.add_argument(
        "--variant",
        metavar="ID",
        help="model to run (default: the bundled model without a GPU, else the configured one)",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=256, metavar="N", help="longest answer (256)"
    )
    parser.add_argument(
        "--temperature", type=float, default=0.7, metavar="T", help="0 = greedy (0.7)"
    )
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="repeatable sampling")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per line: deltas, then stats"
    )


def _gpu_total_vram_gb() -> float | None:
    """Total memory of the first NVIDIA GPU in GB, or ``None`` without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: no CUDA GPU
        return None
    try:
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return float(info.total) / 1e9
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _error(exc: Exception, err: TextIO) -> int:
    from gemma_desktop.core.errors import GemmaDesktopError

    if isinstance(exc, GemmaDesktopError):
        print(f"error: {exc.reason}", file=err)
        if exc.hint:
            print(f"hint: {exc.hint}", file=err)
    else:
        print(f"error: {type(exc).__name__}: {exc}", file=err)
    return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    from gemma_desktop.core.vllm_engine import preload_vllm

    preload_vllm("ERROR")  # the import overlaps with settings, probe and provisioning
    from gemma_desktop.core.errors import GemmaDesktopError

    if args.max_tokens < 1:
        print("error: --max-tokens must be at least 1", file=sys.stderr)
        return 2
    if args.temperature < 0:
        print("error: --temperature cannot be negative", file=sys.stderr)
        return 2
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_chat(args, loop))
    except GemmaDesktopError as exc:
        return _error(exc, sys.stderr)
    finally:
        loop.close()
        asyncio.set_event_loop(None)


async def _chat(args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> int:
    from gemma_desktop.core.bundled import provision_bundled_model_async
    from gemma_desktop.core.catalog import VariantCatalog
    from gemma_desktop.core.engine import ChatMessage, SamplingOptions, StreamEnd, TextDelta
    from gemma_desktop.core.engine_config import EngineConfig
    from gemma_desktop.core.settings import load_settings
    from gemma_desktop.core.vllm_engine import VllmEngine

    out, err = sys.stdout, sys.stderr
    settings = load_settings()
    for warning in settings.warnings:
        print(f"warning: {warning.message}", file=err)
    catalog = VariantCatalog()
    vram = await loop.run_in_executor(None, _gpu_total_vram_gb)
    if args.variant:
        variant = catalog.get(args.variant)
    elif vram is None:
        variant = catalog.bundled
    else:
        variant = catalog.get(settings.model_id.value)

    model_path = None
    if variant.is_bundled:
        model_path = await provision_bundled_model_async(
            lambda step: print(
                f"[provisioning bundled model] {step.message} ({step.fraction:.0%})",
                file=err,
                flush=True,
            )
        )
    config = EngineConfig.build(settings, variant, total_vram_gb=vram, model_path=model_path)
    engine = VllmEngine(config)
    interrupted = False
    request_id: str | None = None
    main_task = asyncio.current_task()

    def on_sigint() -> None:
        nonlocal interrupted
        if interrupted or request_id is None:
            interrupted = True
            if main_task is not None:
                main_task.cancel()  # still starting, or a second Ctrl-C
            return
        interrupted = True
        loop.create_task(engine.abort(request_id))

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        print(f"[starting {variant.label}]", file=err, flush=True)
        await engine.start()
        options = SamplingOptions(
            temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed
        )
        end: StreamEnd | None = None
        request_id = f"cli-{id(engine):x}"
        async for item in engine.chat(
            [ChatMessage("user", " ".join(args.prompt))], options, request_id
        ):
            if isinstance(item, TextDelta):
                if args.json:
                    out.write(json.dumps({"type": "delta", "text": item.text}) + "\n")
                else:
                    out.write(item.text)
                out.flush()
            else:
                end = item
        assert end is not None
        _print_stats(end, args.json, out, err)
        if interrupted:
            return EXIT_INTERRUPTED
        return EXIT_ERROR if end.stats.finish_reason == "error" else EXIT_OK
    except asyncio.CancelledError:
        if interrupted:
            print("\ninterrupted", file=err)
            return EXIT_INTERRUPTED
        raise
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        return EXIT_OK
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await asyncio.shield(engine.shutdown())


def _print_stats(end: Any, as_json: bool, out: TextIO, err: TextIO) -> None:
    stats = end.stats
    ttft = stats.time_to_first_token_s
    if as_json:
        record = {
            "type": "stats",
            "request_id": stats.request_id,
            "finish_reason": stats.finish_reason,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "time_to_first_token_s": ttft,
            "total_time_s": stats.total_time_s,
            "tokens_per_second": stats.tokens_per_second,
            "error": stats.error,
        }
        out.write(json.dumps(record) + "\n")
        out.flush()
        return
    out.write("\n")
    out.flush()
    first = f"{ttft * 1000:.0f} ms" if ttft is not None else "-"
    print(
        f"[{stats.completion_tokens} tokens, {stats.tokens_per_second:.1f} tok/s, "
        f"first token {first}, prompt {stats.prompt_tokens} tokens, "
        f"finish: {stats.finish_reason}]",
        file=err,
    )
    if stats.error:
        print(f"error: {stats.error}", file=err)
