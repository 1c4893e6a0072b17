"""Which Gemma Desktop process runs the local engine for this user: the window or ``serve``.

Two engines on one machine would fight over the same GPU memory, so one process per
user owns the right to run the local engine: the desktop app (taken at launch, kept
until it quits) or ``gemma-desktop serve`` (for its whole run). The other one refuses
with a message naming the owner: ``serve`` says that the app is running and exits; the
window opens, but its engine start fails with the reason and a hint (stop ``serve``,
or connect to it as a remote server).

The lock is ``engine-owner.lock`` in :func:`~gemma_desktop.core.paths.runtime_dir`, held
with ``fcntl.flock``: the kernel releases it when the process ends, however it ends, so
a crash never leaves a stale lock. The file says who holds it (JSON: ``kind``, ``pid``,
``address``) for the refusal messages. ``gemma-desktop chat`` takes no part (a one-off
answer, as before). Without ``fcntl`` (Windows, where vLLM does not run) the lock is
always granted. Blocking file I/O: cheap, but call it off a UI loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from gemma_desktop import APP_NAME
from gemma_desktop.core import paths
from gemma_desktop.core.errors import GemmaDesktopError

log = logging.getLogger(__name__)

LOCK_FILE_NAME = "engine-owner.lock"
OwnerKind = Literal["window", "serve"]


@dataclass(frozen=True)
class OwnerInfo:
    """Who holds the lock: the window or ``serve``, its pid, and ``serve``'s address."""

    kind: OwnerKind
    pid: int
    address: str | None = None

    def describe(self) -> str:
        if self.kind == "serve":
            where = f" at {self.address}" if self.address else ""
            return f"gemma-desktop serve (pid {self.pid}){where}"
        return f"{APP_NAME} (pid {self.pid})"


class EngineOwnedError(GemmaDesktopError):
    """Another Gemma Desktop process runs the local engine for this user."""

    def __init__(self, reason: str, hint: str, holder: OwnerInfo | None) -> None:
        super().__init__(reason, hint)
        self.holder = holder


class EngineOwner:
    """This process's claim on the local engine (see the module docstring)."""

    def __init__(self, kind: OwnerKind, directory: Path | None = None) -> None:
        self.kind = kind
        self.directory = directory or paths.runtime_dir()
        self.path = self.directory / LOCK_FILE_NAME
        self._file: IO[str] | None = None
        self._address: str | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> bool:
        """Take the lock if it is free; ``True`` when this process holds it."""
        if self._file is not None:
            return True
        try:
            import fcntl
        except ImportError:  # no flock: nothing to coordinate with
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self.directory.chmod(0o700)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        self._write()
        return True

    def set_address(self, address: str | None) -> None:
        """Record where ``serve`` listens (shown to a window that is refused)."""
        self._address = address
        if self._file is not None:
            self._write()

    def _write(self) -> None:
        assert self._file is not None
        info = {"kind": self.kind, "pid": os.getpid(), "address": self._address}
        try:
            self._file.seek(0)
            self._file.truncate()
            self._file.write(json.dumps(info) + "\n")
            self._file.flush()
        except OSError as exc:  # the lock still holds; only the description is missing
            log.warning("could not describe the engine owner in %s: %s", self.path, exc)

    def holder(self) -> OwnerInfo | None:
        """Who holds the lock now (``None``: nobody, or it cannot be read)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            kind, pid = data["kind"], int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if kind not in ("window", "serve"):
            return None
        address = data.get("address")
        return OwnerInfo(kind, pid, address if isinstance(address, str) else None)

    def require(self) -> None:
        """Hold the lock, or raise :class:`EngineOwnedError` naming the process that does."""
        if self.acquire():
            return
        holder = self.holder()
        raise refusal(self.kind, holder)

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()
            handle.close()  # closing the descriptor drops the flock


def refusal(wanted_by: OwnerKind, holder: OwnerInfo | None) -> EngineOwnedError:
    """The refusal for ``wanted_by`` while ``holder`` runs the engine."""
    who = holder.describe() if holder is not None else f"Another {APP_NAME} process"
    if holder is not None and holder.kind == "serve":
        address = holder.address or "its address"
        return EngineOwnedError(
            f"{who} is already running the model on this computer.",
            f"Stop it (Ctrl+C where it runs, or kill {holder.pid}) and start the engine "
            f"again, or use it from here: Connections page → Remote vLLM server, address "
            f"{address}, key from `gemma-desktop api-token`.",
            holder,
        )
    if wanted_by == "serve":
        return EngineOwnedError(
            f"{who} is already running; one Gemma Desktop at a time runs this computer's model.",
            "Quit the app first, or turn on its local API on the Connections page (the same "
            "endpoints, while the window runs).",
            holder,
        )
    return EngineOwnedError(
        f"{who} is already running the model on this computer.",
        "Stop it, then start the engine again.",
        holder,
    )
