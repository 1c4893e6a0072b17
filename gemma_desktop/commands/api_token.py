"""``gemma-desktop api-token``: print the local API's token, for scripts.

``OPENAI_API_KEY=$(gemma-desktop api-token)``. The token is the one the window's
local API and ``gemma-desktop serve`` use, read from the OS keyring, or from the
file the app keeps when no keyring works
(:class:`~gemma_desktop.core.engine.local_api.LocalApiTokenStore`).
When there is none yet, one is made and kept, so a script can be set up before the
first ``serve``. Only the token goes to stdout; ``--where`` prints where it is kept
instead. ``--new`` replaces it (running servers keep the old one until restarted).
"""

from __future__ import annotations

import argparse

from gemma_desktop.commands import print_error


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--where", action="store_true", help="say where the token is kept")
    group.add_argument(
        "--new", action="store_true", help="replace the token (restart servers to use it)"
    )


def run(args: argparse.Namespace) -> int:
    from gemma_desktop.core.engine.local_api import LocalApiTokenStore
    from gemma_desktop.core.errors import GemmaDesktopError

    store = LocalApiTokenStore()
    try:
        token = store.regenerate() if args.new else store.get_or_create()
    except (GemmaDesktopError, OSError) as exc:
        return print_error(exc)
    print(token.describe() if args.where else token.value)
    return 0
