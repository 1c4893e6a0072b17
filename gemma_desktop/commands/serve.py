"""``gemma-desktop serve``: the engine and the local API without a window.

For a server under the desk or an SSH session. It runs what the window would run
(the same settings, probe, memory verdict and engine assembly, through
:mod:`gemma_desktop.core.engine.headless`) and serves it on the local API
(:mod:`gemma_desktop.core.engine.local_api`: OpenAI's chat and completions,
Anthropic's Messages, tools, JSON-schema answers). Once ready it prints, on stdout,
the model, the addresses and where the token is kept, then nothing else; start-up
progress and errors go to stderr, everything else to the app's logs
(``gemma-desktop.log`` and vLLM's ``engine.log`` in the state dir).

Ctrl+C or SIGTERM stops it cleanly (exit 0), with no engine process left. It
refuses to run beside the desktop app or another ``serve`` (exit 1), on a saved
remote engine unless ``--local`` (exit 1), and with a model this machine cannot run
(the probe's reason and hint, exit 3). ``--host`` other than loopback prints a
warning: anyone on the network with the token can use the model.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING, TextIO

from gemma_desktop.commands import print_error

if TYPE_CHECKING:
    from gemma_desktop.core.engine.headless import HeadlessServer
    from gemma_desktop.core.machine.probe import ProbeService

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    from gemma_desktop.core.engine.local_api import DEFAULT_PORT, HOST

    parser.add_argument(
        "--variant",
        metavar="ID",
        help="model to serve (default: the one the app would start on this machine)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        metavar="N",
        help=f"port to listen on ({DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--host",
        default=HOST,
        metavar="HOST",
        help=f"address to listen on ({HOST}; anything else opens it to the network)",
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="serve this computer's model even when the app is set to a remote server",
    )


def run(args: argparse.Namespace, probe: ProbeService | None = None) -> int:
    """``probe`` replaces the machine's probe (tests inject GPU readings in-process)."""
    from gemma_desktop.core.engine.vllm_local import preload_vllm

    # Request errors reach the client (a 400, say); the console stays for the addresses.
    preload_vllm("CRITICAL")  # the import overlaps with settings and the probe
    if not 0 <= args.port <= 65535:
        print("error: --port must be between 0 and 65535", file=sys.stderr)
        return EXIT_USAGE
    from gemma_desktop.core import paths
    from gemma_desktop.core.logs import REDACTOR
    from gemma_desktop.crash import setup_logging

    setup_logging(paths.state_dir(), REDACTOR)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(args, loop, probe))
    finally:
        loop.close()
        asyncio.set_event_loop(None)


async def _serve(
    args: argparse.Namespace, loop: asyncio.AbstractEventLoop, probe: ProbeService | None
) -> int:
    from gemma_desktop.core.engine.headless import HeadlessServer, ServeOptions, ServeRefused
    from gemma_desktop.core.engine.local_api import exposure_warning
    from gemma_desktop.core.engine.protocol import StartProgress
    from gemma_desktop.core.errors import GemmaDesktopError
    from gemma_desktop.core.settings import load_settings

    err = sys.stderr
    try:
        settings = await loop.run_in_executor(None, load_settings)
    except GemmaDesktopError as exc:
        return print_error(exc, err)
    for warning in settings.warnings:
        print(f"warning: {warning.message}", file=err)
    options = ServeOptions(args.variant, args.port, args.host, args.local)
    server = HeadlessServer(options, settings, probe=probe)

    def on_progress(step: StartProgress) -> None:
        fraction = f" ({step.fraction:.0%})" if step.fraction is not None else ""
        print(f"[{step.message}]{fraction}", file=err, flush=True)

    starting = asyncio.ensure_future(server.start(on_progress))
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if not starting.done():
            interrupted = True
            starting.cancel()
        else:
            server.request_stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        try:
            await starting
        except asyncio.CancelledError:
            if interrupted:
                print("interrupted", file=err)
                return EXIT_INTERRUPTED
            raise
        except ServeRefused as exc:
            print_error(exc, err)
            return exc.exit_code
        except GemmaDesktopError as exc:
            return print_error(exc, err)
        exposure = exposure_warning(args.host)
        if exposure:
            print(f"warning: {exposure}", file=err, flush=True)
        _print_ready(server, sys.stdout)
        failure = await server.wait_stopped()
        print("stopping", file=err, flush=True)
        await asyncio.shield(server.stop())
        if failure is not None:
            return print_error(failure, err)
        print("stopped", file=err, flush=True)
        return EXIT_OK
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await asyncio.shield(server.stop())


def _print_ready(server: HeadlessServer, out: TextIO) -> None:
    token = server.token
    where = token.describe() if token is not None else "unknown"
    variant = server.variant.id if server.variant is not None else "?"
    out.write(
        f"Serving {variant} as model {server.served_model_name!r}\n"
        f"  OpenAI API:     {server.address}\n"
        f"  Anthropic API:  {server.root_address}\n"
        f"  Token:          {where}; print it with: gemma-desktop api-token\n"
        "Stop with Ctrl+C.\n"
    )
    out.flush()
