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
sent (exit 1, with the reason). ``--json-schema FILE`` makes the answer JSON
that validates against the schema in FILE (vLLM's structured outputs; the
answer is checked to parse, and an answer cut off by ``--max-tokens`` is an
error).

It uses the engine the saved settings choose, built by
:meth:`gemma_desktop.core.engine.assembly.EngineAssembly.build` as the window's
is: this computer's vLLM, or the remote vLLM server the Connections page saved
(the model, and what it takes, are then the server's). ``--remote URL
[--remote-model NAME]`` picks a server for this run (its key: the keyring entry
the Connections page saved for it, else ``GEMMA_DESKTOP_REMOTE_API_KEY``), and
``--local`` this computer. Locally, without ``--variant`` it runs the model the
window would start here (the same probe and rule,
:func:`gemma_desktop.core.machine.probe.decide_startup`): the configured one, or
the bundled Gemma 3 270M when nothing was chosen and the default Gemma 4 cannot
run (provisioned on first use, progress on stderr). Runs on a plain asyncio loop;
no Qt is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, TextIO

from gemma_desktop.commands import print_error

if TYPE_CHECKING:
    from gemma_desktop.core.engine.assembly import MachineFacts
    from gemma_desktop.core.machine.probe import ProbeReport, ProbeService
    from gemma_desktop.core.settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: The remote server's API key for ``--remote`` (when the keyring has none for it).
REMOTE_KEY_ENV = "GEMMA_DESKTOP_REMOTE_API_KEY"


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
    parser.add_argument(
        "--json-schema",
        metavar="FILE",
        help="answer with JSON that validates against the JSON Schema in FILE",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--remote",
        metavar="URL",
        help=f"use the vLLM server at URL for this run (key: keyring, else ${REMOTE_KEY_ENV})",
    )
    where.add_argument(
        "--local",
        action="store_true",
        help="use this computer's engine even when the app is set to a remote server",
    )
    parser.add_argument(
        "--remote-model", metavar="NAME", help="the server's model (default: its first)"
    )


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
    if args.remote_model and not args.remote:
        print("error: --remote-model needs --remote URL", file=sys.stderr)
        return EXIT_USAGE
    if args.json_schema and args.think:
        print("error: --json-schema answers without thinking; leave out --think", file=sys.stderr)
        return EXIT_USAGE
    try:
        schema = read_json_schema(args.json_schema) if args.json_schema else None
    except GemmaDesktopError as exc:
        return print_error(exc)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_chat(args, loop, probe, schema))
    except GemmaDesktopError as exc:
        return print_error(exc)
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


def read_json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema in the file ``name`` (a JSON object), or a clear error."""
    from pathlib import Path

    from gemma_desktop.core.errors import GemmaDesktopError

    path = Path(name).expanduser()
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GemmaDesktopError(
            f"Cannot read the JSON Schema {path}: {exc.strerror}", "Check the file name."
        ) from None
    except ValueError as exc:
        raise GemmaDesktopError(
            f"{path} is not JSON: {exc}", "A JSON Schema is a JSON object."
        ) from None
    if not isinstance(schema, dict):
        raise GemmaDesktopError(f"{path} is not a JSON object.", "A JSON Schema is an object.")
    return schema


async def _chat(
    args: argparse.Namespace,
    loop: asyncio.AbstractEventLoop,
    probe: ProbeService | None = None,
    schema: dict[str, Any] | None = None,
) -> int:
    from gemma_desktop.core.engine.assembly import EngineAssembly, chosen_engine
    from gemma_desktop.core.engine.protocol import (
        ChatMessage,
        SamplingOptions,
        StartProgress,
        StreamEnd,
        TextDelta,
        ThinkingDelta,
    )
    from gemma_desktop.core.engine.remote import RemoteTarget, normalize_base_url
    from gemma_desktop.core.engine.vllm_local import VllmEngine
    from gemma_desktop.core.models.catalog import VariantCatalog
    from gemma_desktop.core.settings import load_settings

    out, err = sys.stdout, sys.stderr
    settings = load_settings()
    for warning in settings.warnings:
        print(f"warning: {warning.message}", file=err)
    catalog = VariantCatalog()
    kind = "local" if args.local else "remote" if args.remote else chosen_engine(settings)
    target = None
    if args.remote:
        target = RemoteTarget(normalize_base_url(args.remote), args.remote_model)
    if kind == "remote" and args.variant:
        print(
            "error: --variant picks a model on this computer, but this run uses a remote "
            "server; pick its model with --remote-model, or add --local",
            file=err,
        )
        return EXIT_USAGE
    # The same probe and the same start-up rule as the window.
    report, chosen, _machine = await loop.run_in_executor(
        None, choose_machine, settings, args.variant, probe
    )
    variant = catalog.get(chosen)

    def on_progress(step: StartProgress) -> None:
        fraction = f" ({step.fraction:.0%})" if step.fraction is not None else ""
        print(f"[{step.message}]{fraction}", file=err, flush=True)

    session_keys: dict[str, str] = {}
    env_key = os.environ.get(REMOTE_KEY_ENV, "").strip()
    if kind == "remote" and env_key:
        remote = target or RemoteTarget.from_saved(settings.saved)
        if remote is not None:
            session_keys[remote.base_url] = env_key
    engine = await EngineAssembly(catalog, session_keys=session_keys).build(
        variant.id, settings, report, on_progress, engine=kind, target=target
    )
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
        if isinstance(engine, VllmEngine):
            engine.check_attachments([message])  # before a start that could not help
            print(f"[starting {variant.label}]", file=err, flush=True)
        await engine.start(on_progress)  # a remote engine learns its model's abilities here
        options = SamplingOptions(
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            seed=args.seed,
            thinking=args.think,
            json_schema=schema,
        )
        end: StreamEnd | None = None
        answer: list[str] = []
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
                answer.append(item.text)
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
        if end.stats.finish_reason == "error":
            return EXIT_ERROR
        if schema is not None and not _answer_is_json(answer, end, args.max_tokens, err):
            return EXIT_ERROR
        return EXIT_OK
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


def _answer_is_json(answer: list[str], end: Any, max_tokens: int, err: TextIO) -> bool:
    """Whether a ``--json-schema`` answer parses (the grammar made it valid as far as it
    went); says why not on stderr."""
    try:
        json.loads("".join(answer))
    except ValueError as exc:
        if end.stats.finish_reason == "length":
            print(
                f"error: the answer was cut off at --max-tokens {max_tokens}, before its JSON "
                "was complete",
                file=err,
            )
            print("hint: raise --max-tokens", file=err)
        else:
            print(f"error: the answer is not JSON: {exc}", file=err)
        return False
    return True


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
