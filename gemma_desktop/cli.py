"""The ``gemma-desktop`` command line.

Each subcommand lives in ``gemma_desktop.commands.<module>`` with
``add_arguments(parser)`` and ``run(args) -> int``; only the module of the
command being run is imported, so ``gemma-desktop probe`` starts fast.
Without a subcommand the desktop app starts.

Exit codes: 0 success (probe: ready), 1 error, 2 usage, 3 probe skipped,
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gemma_desktop import APP_ID, __version__

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "probe": ("gemma_desktop.commands.probe", "check this machine and print the report"),
    "chat": ("gemma_desktop.commands.chat", "chat with the local engine in the terminal"),
    "serve": (
        "gemma_desktop.commands.serve",
        "serve the model on the local API without a window (OpenAI and Anthropic APIs)",
    ),
    "api-token": ("gemma_desktop.commands.api_token", "print the local API's token"),
    "download": ("gemma_desktop.commands.download", "download a model from the Hugging Face Hub"),
    "models": (
        "gemma_desktop.commands.models",
        "list the models on disk; delete or verify one",
    ),
    "install-desktop-entry": (
        "gemma_desktop.commands.desktop_entry",
        "add Gemma Desktop to the desktop's application menu",
    ),
    "uninstall-desktop-entry": (
        "gemma_desktop.commands.desktop_entry",
        "remove Gemma Desktop from the application menu",
    ),
    "gui": ("gemma_desktop.commands.gui", "start the desktop app (the default)"),
}

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=APP_ID,
        description="Run Google's Gemma models locally through vLLM.",
        epilog="commands:\n"
        + "\n".join(f"  {name:<24} {text}" for name, (_, text) in COMMANDS.items())
        + f"\n\nRun '{APP_ID} COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{APP_ID} {__version__}")
    parser.add_argument("command", nargs="?", default="gui", metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    try:
        ns = top.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if ns.command not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"{APP_ID}: error: unknown command {ns.command!r}", file=sys.stderr)
        return EXIT_USAGE
    module_name, help_text = COMMANDS[ns.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"{APP_ID} {ns.command}", description=help_text)
    module.add_arguments(parser, ns.command)
    try:
        args = parser.parse_args(ns.args)
    except SystemExit as exc:
        return int(exc.code or 0)
    args.command = ns.command
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
