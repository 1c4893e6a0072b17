"""``gemma-desktop gui`` (the default command): start the desktop app."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    from gemma_desktop.app import add_arguments as app_arguments

    app_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from gemma_desktop.app import run_app
    from gemma_desktop.launch import guarded

    # Started from a terminal too, a failure before the window shows a dialog.
    return guarded(lambda: run_app(no_auto_start=bool(args.no_auto_start)))
