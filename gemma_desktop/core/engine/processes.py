"""The engine's child processes: finding them, ending them, and making them die with the app.

(Filled in by the reliability work: the parent-death signal in every vLLM
process and the record of the processes this app started.)
"""

from __future__ import annotations


def arm_parent_death_signal() -> None:
    """In a vLLM child process: die when the app that started it dies (no-op elsewhere)."""
