"""``gemma-desktop chat``: one answer from the local engine, streamed to the terminal.

Text goes to stdout as it arrives, figures to stderr. With ``--json`` stdout
gets one JSON object per line: ``{"type": "delta", "text": ...}`` for each
step (``{"type": "thinking", "text": ...}`` for the model's thinking), then one
``{"type": "stats", ...}``. Without ``--json`` the thinking goes to stderr
(dimmed on a terminal), the answer to stdout. Ctrl-C stops the answer inside
the engine, shuts the engine down and exits with 130.

``--image FILE`` and ``--audio FILE`` (each repeatable) attach files to the
message; ``--think`` asks a model that can think (Gemma 4 ``-it``) to think
first. A model that cannot take an attachment refuses it before anything is
sent (exit 1, with the reason).

Without ``--variant`` it runs the model the window would start here (the same
probe and rule, :func:`gemma_desktop.core.machine.probe.decide_startup`): the
configured one, or the bundled Gemma 3 270M when nothing was chosen and the
default Gemma 4 cannot run (provisioned on first use, progress on stderr). The
engine is built by :mod:`gemma_desktop.core.engine.assembly`, as the window's is.
Runs on a plain asyncio loop; no Qt is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from gemma_desktop.core.engine.assembly import MachineFacts
    from gemma_desktop.core.machine.probe import ProbeReport, ProbeService
    from gemma_desktop.core.settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("prompt", nargs="+", metavar="PROMPT", help="the message to answer")
    parser.add_argument(
        "--variant",
        metavar="ID",
        help="model to run (default: the one the app would start on this machine)",
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
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="FILE",
        help="attach an image (PNG, JPEG, WEBP...); repeatable",
    )
    parser.add_argument(
        "--audio",
        action="append",
        default=[],
        metavar="FILE",
        help="attach a recording (WAV, FLAC, MP3, OGG); repeatable",
    )
    parser.add_argument(
        "--think", action="store_true", help="let the model think before it answers"
    )


def _error(exc: Exception, err: TextIO) -> int:
    from gemma_desktop.core.errors import GemmaDesktopError

    if isinstance(exc, GemmaDesktopError):
        print(f"error: {exc.reason}", file=err)
        if exc.hint:
            print(f"hint: {exc.hint}", file=err)
    else:
        print(f"error: {type(exc).__name__}: {exc}", file=err)
    return EXIT_ERROR


def run(args: argparse.Namespace, probe: ProbeService | None = None) -> int:
    """``probe`` replaces the machine's probe (tests inject GPU readings in-process)."""
    from gemma_desktop.core.engine.vllm_local import preload_vllm

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
        return loop.run_until_complete(_chat(args, loop, probe))
    except GemmaDesktopError as exc:
        return _error(exc, sys.stderr)
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def choose_machine(
    settings: Settings, variant_id: str | None, probe: ProbeService | None = None
) -> tuple[ProbeReport, str, MachineFacts]:
    """The probe's report, the model and the machine facts the chat runs with: the same
    probe and start-up rule as the window (blocking: it reads NVML and the disk)."""
    from gemma_desktop.core.engine.assembly import MachineFacts
    from gemma_desktop.core.machine.probe import ProbeService, decide_startup

    report = (probe or ProbeService()).run(settings, variant_id)
    chosen = variant_id or decide_startup(settings, report).variant_id
    return report, chosen, MachineFacts.from_report(report)


async def _chat(
    args: argparse.Namespace, loop: asyncio.AbstractEventLoop, probe: ProbeService | None = None
) -> int:
    from gemma_desktop.core.engine.assembly import EngineAssembly
    from gemma_desktop.core.engine.protocol import (
        ChatMessage,
        SamplingOptions,
        StartProgress,
        StreamEnd,
        TextDelta,
        ThinkingDelta,
    )
    from gemma_desktop.core.models.catalog import VariantCatalog
    from gemma_desktop.core.settings import load_settings

    out, err = sys.stdout, sys.stderr
    settings = load_settings()
    for warning in settings.warnings:
        print(f"warning: {warning.message}", file=err)
    catalog = VariantCatalog()
    # The same probe and the same start-up rule as the window.
    _report, chosen, machine = await loop.run_in_executor(
        None, choose_machine, settings, args.variant, probe
    )
    variant = catalog.get(chosen)

    def on_progress(step: StartProgress) -> None:
        fraction = f" ({step.fraction:.0%})" if step.fraction is not None else ""
        print(f"[{step.message}]{fraction}", file=err, flush=True)

    engine = await EngineAssembly(catalog).local(variant.id, settings, machine, on_progress)
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
        message = ChatMessage("user", " ".join(args.prompt), attachments(args))
        engine.check_attachments([message])  # before a start that could not help
        print(f"[starting {variant.label}]", file=err, flush=True)
        await engine.start()
        options = SamplingOptions(
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            seed=args.seed,
            thinking=args.think,
        )
        end: StreamEnd | None = None
        request_id = f"cli-{id(engine):x}"
        dim = err.isatty()
        thought = False  # thinking was shown on stderr: end its line before the answer
        async for item in engine.chat([message], options, request_id):
            if isinstance(item, ThinkingDelta):
                if args.json:
                    out.write(json.dumps({"type": "thinking", "text": item.text}) + "\n")
                    out.flush()
                else:
                    err.write(f"\x1b[2m{item.text}\x1b[0m" if dim else item.text)
                    err.flush()
                    thought = True
            elif isinstance(item, TextDelta):
                if thought:
                    err.write("\n")
                    thought = False
                if args.json:
                    out.write(json.dumps({"type": "delta", "text": item.text}) + "\n")
                else:
                    out.write(item.text)
                out.flush()
            elif isinstance(item, StreamEnd):
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


def attachments(args: argparse.Namespace) -> tuple[Any, ...]:
    """The ``--image`` and ``--audio`` files as message attachments (images first)."""
    import mimetypes
    from pathlib import Path

    from gemma_desktop.core.engine.protocol import AudioPart, ImagePart

    parts: list[Any] = []
    for name in args.image:
        path = Path(name).expanduser().resolve()
        parts.append(ImagePart(path, mimetypes.guess_type(path.name)[0] or "image/png"))
    for name in args.audio:
        path = Path(name).expanduser().resolve()
        parts.append(AudioPart(path, mimetypes.guess_type(path.name)[0] or "audio/wav"))
    return tuple(parts)


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
            "thinking_tokens": stats.thinking_tokens,
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
