"""``gemma-desktop download``: fetch a model into the Hugging Face cache, with a progress bar.

Exit codes: 0 downloaded (or already there), 1 error (with a hint), 130 cancelled
(Ctrl-C). Finished files are kept, so running the command again resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from gemma_desktop.core.models.downloads import DownloadProgress

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--variant",
        metavar="ID",
        help="the model to download (default: the model in your settings)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per line: progress events, then the result or the error",
    )


class _TerminalBar:
    """A one-line progress bar on a terminal; a line every few seconds elsewhere."""

    WIDTH = 28

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_line = 0.0
        self._last_file: str | None = None
        self._last_message = ""
        self._drawn = False

    def __call__(self, p: DownloadProgress) -> None:
        from gemma_desktop.core.models.downloads import format_bytes, format_eta

        if p.message and p.message != self._last_message and p.phase != "verifying":
            self._print_line(p.message)
        self._last_message = p.message
        if p.phase not in ("downloading", "verifying", "retrying"):
            return
        filled = int(self.WIDTH * p.fraction)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        rate = f"{format_bytes(p.rate_bps)}/s" if p.rate_bps else "--/s"
        name = (p.file or "")[-32:]
        line = (
            f"[{bar}] {p.fraction * 100:5.1f}%  "
            f"{format_bytes(p.done_bytes)}/{format_bytes(p.total_bytes)}  {rate}  "
            f"ETA {format_eta(p.eta_s)}  "
            f"{p.files_done}/{p.files_total} files  {name}"
        )
        if p.phase == "verifying":
            line += " (checking)"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(120))
            self.stream.flush()
            self._drawn = True
        else:
            now = time.monotonic()
            if p.file != self._last_file or now - self._last_line >= 2.0:
                self.stream.write(line + "\n")
                self.stream.flush()
                self._last_line = now
        self._last_file = p.file

    def _print_line(self, text: str) -> None:
        self.end()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False


def _json_line(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def _progress_json(p: DownloadProgress) -> None:
    _json_line(
        {
            "event": "progress",
            "phase": p.phase,
            "done_bytes": p.done_bytes,
            "total_bytes": p.total_bytes,
            "rate_bps": p.rate_bps,
            "eta_s": p.eta_s,
            "file": p.file,
            "file_done": p.file_done,
            "file_bytes": p.file_bytes,
            "files_done": p.files_done,
            "files_total": p.files_total,
            "message": p.message,
        }
    )


def _drop_resume_warnings(record: Any) -> bool:
    return "resume download" not in record.getMessage()


def run(args: argparse.Namespace) -> int:
    import logging

    from huggingface_hub.utils import logging as hf_logging

    from gemma_desktop.core.errors import GemmaDesktopError
    from gemma_desktop.core.models.downloads import (
        DownloadCancelledError,
        DownloadManager,
        DownloadResult,
        format_bytes,
        wait_for_transfers,
    )
    from gemma_desktop.core.settings import load_settings

    # huggingface_hub's "Trying to resume download..." warning becomes a progress
    # message; its raw log line (with the URL) would only repeat it.
    hf_logging.get_logger()  # makes sure the library's handler exists
    for handler in logging.getLogger("huggingface_hub").handlers:
        handler.addFilter(_drop_resume_warnings)

    def fail(error: GemmaDesktopError, code: int = EXIT_ERROR) -> int:
        if args.json:
            _json_line(
                {
                    "event": "error",
                    "type": type(error).__name__,
                    "reason": error.reason,
                    "hint": error.hint,
                }
            )
        else:
            print(f"error: {error.reason}", file=sys.stderr)
            if error.hint:
                print(f"hint: {error.hint}", file=sys.stderr)
        return code

    try:
        variant_id = args.variant or load_settings().model_id.value
        manager = DownloadManager()
        manager.catalog.get(variant_id)
    except GemmaDesktopError as exc:
        return fail(exc)

    bar = _TerminalBar(sys.stderr)
    if not args.json:
        where = "the cache only (offline)" if manager.is_offline() else manager.resolved_endpoint()
        print(
            f"Downloading {variant_id} from {where} into {manager.resolved_cache_dir()}",
            file=sys.stderr,
        )

    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = manager.download(
                variant_id,
                on_progress=_progress_json if args.json else bar,
                cancel=cancel,
            )
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="download", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        cancel.set()
        bar.end()
        if not args.json:
            print("Cancelling…", file=sys.stderr)
        worker.join(15)
        # Let huggingface_hub delete its temporary file before the process ends.
        wait_for_transfers(15)
        return fail(
            DownloadCancelledError(
                f"Download of {variant_id} cancelled.",
                "Run the same command again to resume: finished files are kept.",
            ),
            EXIT_INTERRUPTED,
        )
    bar.end()
    wait_for_transfers(15)

    error = outcome.get("error")
    if isinstance(error, DownloadCancelledError):
        return fail(error, EXIT_INTERRUPTED)
    if isinstance(error, GemmaDesktopError):
        return fail(error)
    if error is not None:
        raise error
    result: DownloadResult = outcome["result"]
    if args.json:
        _json_line(
            {
                "event": "done",
                "variant": result.variant_id,
                "snapshot": str(result.snapshot),
                "commit": result.commit,
                "fetched": list(result.fetched),
                "reused": list(result.reused),
                "transferred_bytes": result.transferred_bytes,
                "resumes": result.resumes,
                "offline": result.offline,
            }
        )
    else:
        if result.offline:
            print(f"{variant_id} is in the cache (not checked against the Hub).", file=sys.stderr)
        elif not result.fetched:
            print(f"{variant_id} is already downloaded and verified.", file=sys.stderr)
        else:
            print(
                f"Done: {len(result.fetched)} file(s), {format_bytes(result.transferred_bytes)} "
                f"downloaded and verified; {len(result.reused)} already in the cache.",
                file=sys.stderr,
            )
        print(result.snapshot)
    return EXIT_OK
