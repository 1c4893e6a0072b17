"""``gemma-desktop probe``: check this machine and print the report.

Exit codes: 0 ready, 3 skipped, 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gemma_desktop.core.machine.probe import ProbeReport, ProbeService

_MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skipped": "skip"}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--variant", metavar="ID", help="probe for this model instead")


def run(args: argparse.Namespace, probe: ProbeService | None = None) -> int:
    """Print the report; ``probe`` replaces the machine's (tests inject GPU readings)."""
    from gemma_desktop.core.machine.probe import Outcome, ProbeService

    # Unreadable settings or an unsupported ATOMR_INFER_GEMMA_MODEL come back
    # as an ``error`` report rather than an exception.
    report = (probe or ProbeService()).run(None, args.variant)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(report)
    if report.outcome is Outcome.ERROR:
        if not args.json:
            print(f"\nerror: {report.reason}", file=sys.stderr)
            if report.hint:
                print(f"hint: {report.hint}", file=sys.stderr)
        return 1
    return 0 if report.outcome is Outcome.READY else 3


def _print_table(report: ProbeReport) -> None:
    out = sys.stdout
    out.write(f"Gemma Desktop probe — {report.variant}\n\n")
    title_width = max((len(c.title) for c in report.checks), default=10)
    for check in report.checks:
        out.write(
            f"  {_MARK[check.status.value]:<4}  {check.title:<{title_width}}  {check.reason}\n"
        )
        if check.hint:
            out.write(f"  {'':<4}  {'':<{title_width}}  → {check.hint}\n")
    out.write(f"\nOutcome: {report.outcome.value.upper()} — {report.reason}\n")
    if report.hint:
        out.write(f"Hint: {report.hint}\n")
