"""``gemma-desktop models``: the models on disk; ``models delete ID``, ``models verify ID``.

``models [--json]`` lists every catalog variant: whether it is downloaded, its bytes on
disk as huggingface_hub's cache scan counts them, when it was last used, its folder, and
whether it runs or downloads right now. ``--json`` prints one object,
``{"hub_cache": ..., "models": [{"id", "downloaded", "size_on_disk", ...}]}``.

``models delete ID`` asks on a terminal (``--yes`` skips the question; without a
terminal ``--yes`` is required) and deletes through huggingface_hub's own cache
functions. A model that is running or being downloaded is refused with the reason.

``models verify ID`` re-hashes the model's files against the Hub's published hashes
(``--offline``: against the cache's own record).

Exit codes: 0 done, 1 error, refusal, declined or a file that fails its hash.
All of them read the Hugging Face cache of the settings (``HF_HUB_CACHE`` / ``HF_HOME``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma_desktop.commands import EXIT_ERROR, print_error

if TYPE_CHECKING:
    from gemma_desktop.core.models.local_models import LocalModel, VerifyReport

EXIT_OK = 0


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", parents=[common], help="list the models (the default)")
    delete = actions.add_parser(
        "delete", parents=[common], help="delete a model from the Hugging Face cache"
    )
    delete.add_argument("id", metavar="ID", help="the model to delete")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask")
    verify = actions.add_parser(
        "verify", parents=[common], help="check the model's files against their hashes"
    )
    verify.add_argument("id", metavar="ID", help="the model to verify")
    verify.add_argument(
        "--offline",
        action="store_true",
        help="compare with the cache's own hashes instead of asking the Hub",
    )


def run(args: argparse.Namespace) -> int:
    from gemma_desktop.core.errors import GemmaDesktopError
    from gemma_desktop.core.settings import load_settings

    try:
        hub_cache = Path(load_settings().hf_hub_cache.value).expanduser()
        action = args.action or "list"
        if action == "delete":
            return _delete(args, hub_cache)
        if action == "verify":
            return _verify(args, hub_cache)
        return _list(args, hub_cache)
    except GemmaDesktopError as exc:
        if args.json:
            _json(
                {
                    "error": {
                        "type": type(exc).__name__,
                        "reason": exc.reason,
                        "hint": exc.hint,
                    }
                }
            )
        return print_error(exc)


def _json(payload: dict[str, Any]) -> None:
    json.dump(payload, sys.stdout, indent=2)
    sys.stdout.write("\n")


# --- list --------------------------------------------------------------------------------


def _model_json(model: LocalModel, in_use: str | None) -> dict[str, Any]:
    return {
        "id": model.id,
        "label": model.variant.label,
        "downloaded": model.downloaded,
        "size_on_disk": model.size_on_disk,
        "path": str(model.path) if model.path is not None else None,
        "last_used": model.last_used,
        "last_used_source": model.last_used_source,
        "in_use": in_use,
        "problem": model.problem or None,
    }


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def _state(model: LocalModel, in_use: str | None) -> str:
    if in_use is not None:
        return in_use
    if model.downloaded:
        return "downloaded"
    if model.problem:
        return "damaged"
    return "partial" if model.on_disk else "-"


def _list(args: argparse.Namespace, hub_cache: Path) -> int:
    from gemma_desktop.core.models.downloads import format_bytes
    from gemma_desktop.core.models.local_models import list_models
    from gemma_desktop.core.models.model_use import in_use

    models = list_models(hub_cache)
    uses = {m.id: in_use(m.id) if m.on_disk else None for m in models}
    if args.json:
        _json(
            {
                "hub_cache": str(hub_cache),
                "models": [_model_json(m, uses[m.id]) for m in models],
            }
        )
        return EXIT_OK
    width = max(len(m.id) for m in models)
    out = sys.stdout
    out.write(f"{'MODEL':<{width}}  {'STATE':<11}  {'SIZE':>9}  {'LAST USED':<16}  PATH\n")
    for m in models:
        size = format_bytes(m.size_on_disk) if m.on_disk else "-"
        last = _when(m.last_used)
        if m.last_used_source == "cache-access":
            last += "*"
        path = str(m.path) if m.path is not None else ""
        out.write(f"{m.id:<{width}}  {_state(m, uses[m.id]):<11}  {size:>9}  {last:<16}  {path}\n")
    if any(m.last_used_source == "cache-access" for m in models):
        out.write("\n* last access of its files; not yet started by Gemma Desktop\n")
    out.write(f"\nHugging Face cache: {hub_cache}\n")
    return EXIT_OK


# --- delete ------------------------------------------------------------------------------


def _ask(question: str) -> bool:
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in {"y", "yes"}


def _delete(args: argparse.Namespace, hub_cache: Path) -> int:
    from gemma_desktop.core.errors import GemmaDesktopError
    from gemma_desktop.core.models.downloads import format_bytes
    from gemma_desktop.core.models.local_models import (
        ModelNotOnDiskError,
        delete_model,
        get_model,
    )
    from gemma_desktop.core.models.model_use import exclusive_use

    model = get_model(args.id, hub_cache)
    if not model.on_disk and not model.variant.is_bundled:
        raise ModelNotOnDiskError(
            f"{model.id} is not in the Hugging Face cache at {hub_cache}.",
            "Nothing to delete. `gemma-desktop models` lists what is on disk.",
        )
    with exclusive_use(model.id):  # refuse before asking; delete_model checks again
        pass
    if not args.yes and not model.variant.is_bundled:
        if not sys.stdin.isatty():
            raise GemmaDesktopError(
                f"Not deleting {model.id}: there is no terminal to ask for confirmation.",
                f"Pass --yes to delete without asking: gemma-desktop models delete "
                f"{model.id} --yes",
            )
        where = f" in {model.path}" if model.path is not None else ""
        if not _ask(f"Delete {model.id} ({format_bytes(model.size_on_disk)}{where})? [y/N] "):
            print("Not deleted.", file=sys.stderr)
            return EXIT_ERROR
    result = delete_model(model.id, hub_cache)
    if args.json:
        _json(
            {
                "deleted": result.variant_id,
                "freed_bytes": result.freed_bytes,
                "revisions": list(result.revisions),
            }
        )
    else:
        print(f"Deleted {result.variant_id}: {format_bytes(result.freed_bytes)} freed.")
    return EXIT_OK


# --- verify ------------------------------------------------------------------------------


def _verify(args: argparse.Namespace, hub_cache: Path) -> int:
    from gemma_desktop.core.models.downloads import DownloadManager
    from gemma_desktop.core.models.local_models import verify_model

    report = verify_model(
        args.id, online=not args.offline, manager=DownloadManager(cache_dir=hub_cache)
    )
    if args.json:
        _json(_report_json(report))
    else:
        _print_report(report)
    return EXIT_OK if report.ok else EXIT_ERROR


def _report_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "id": report.variant_id,
        "ok": report.ok,
        "against": report.against,
        "commit": report.commit,
        "snapshot": str(report.snapshot),
        "note": report.note or None,
        "files": [
            {
                "path": f.path,
                "ok": f.ok,
                "expected": f.expected,
                "actual": f.actual,
                "detail": f.detail or None,
            }
            for f in report.files
        ],
    }


def _print_report(report: VerifyReport) -> None:
    against = "the Hub's published hashes" if report.against == "hub" else "the cache's hashes"
    print(f"{report.variant_id} at {report.commit[:12]}, against {against}:")
    if report.note:
        print(f"  note: {report.note}")
    for f in report.files:
        mark = "ok  " if f.ok else "FAIL"
        detail = f" ({f.detail})" if f.detail else ""
        print(f"  {mark}  {f.path}{detail}")
    if report.ok:
        print(f"All {len(report.files)} file(s) match.")
    else:
        print(
            f"{len(report.failed)} file(s) do not match. Delete the model and download it "
            f"again: gemma-desktop models delete {report.variant_id} && gemma-desktop "
            f"download --variant {report.variant_id}",
            file=sys.stderr,
        )
