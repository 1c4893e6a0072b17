"""Which models are in use right now, across processes: running in an engine, or downloading.

A model must not be deleted while an engine has it loaded (vLLM maps the weight files)
or while a download writes into its cache folder. Each use holds a *shared*
``flock`` on a lock file per model and purpose, in
:func:`~gemma_desktop.core.paths.runtime_dir` (``models/<repo folder>.running.lock``,
``.downloading.lock``); a delete takes the same files *exclusively*, without waiting,
and is refused with the reason when a use holds one. The kernel drops a lock when its
process ends, however it ends, so a crash never leaves a model locked. Any number of
processes may use a model at once (the window's engine and ``gemma-desktop chat``, two
downloads).

The engine that holds the ``running`` lock also records when the model was last used
(``model-use.json`` in the state dir), for the Models list.

Plain file I/O, no third-party import; without ``fcntl`` (Windows, where vLLM does not
run) every lock is granted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

from gemma_desktop.core import paths
from gemma_desktop.core.errors import GemmaDesktopError

log = logging.getLogger(__name__)

Purpose = Literal["running", "downloading"]
PURPOSES: tuple[Purpose, ...] = ("running", "downloading")
LAST_USED_FILE = "model-use.json"


class ModelInUseError(GemmaDesktopError):
    """The model is running in an engine or being downloaded; ``purpose`` says which."""

    def __init__(self, reason: str, hint: str, *, variant_id: str, purpose: Purpose) -> None:
        super().__init__(reason, hint)
        self.variant_id = variant_id
        self.purpose = purpose


class ModelBeingDeletedError(GemmaDesktopError):
    """A use could not start: the model is being deleted at this moment."""


def lock_path(variant_id: str, purpose: Purpose, directory: Path | None = None) -> Path:
    """The lock file of ``variant_id`` for ``purpose``."""
    from gemma_desktop.core.models.hub_cache import repo_folder

    folder = directory or paths.runtime_dir() / "models"
    return folder / f"{repo_folder(variant_id)}.{purpose}.lock"


def _open(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.parent.chmod(0o700)
    return open(path, "a+", encoding="utf-8")  # held by the caller


def _flock(handle: IO[str], exclusive: bool) -> bool:
    """Take the lock without waiting; ``True`` when granted."""
    try:
        import fcntl
    except ImportError:  # no flock: nothing to coordinate with
        return True
    try:
        fcntl.flock(
            handle.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        )
    except OSError:
        return False
    return True


class ModelUse:
    """This process's use of one model (see the module docstring).

    ``with ModelUse(id, "downloading"):`` or :meth:`acquire` / :meth:`release`.
    :meth:`acquire` raises :class:`ModelBeingDeletedError` while a delete holds the
    model. Blocking file I/O, but only a few small files.
    """

    def __init__(self, variant_id: str, purpose: Purpose, directory: Path | None = None) -> None:
        self.variant_id = variant_id
        self.purpose = purpose
        self.path = lock_path(variant_id, purpose, directory)
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        if self._file is not None:
            return
        handle = _open(self.path)
        if not _flock(handle, exclusive=False):
            handle.close()
            raise ModelBeingDeletedError(
                f"{self.variant_id} is being deleted.",
                "Wait until the delete has finished, then download the model again.",
            )
        self._file = handle
        # Who uses it, for the refusal message (several users: the last one that came).
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid()}) + "\n")
            handle.flush()
        if self.purpose == "running":
            record_last_used(self.variant_id)

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()  # closing the descriptor drops the flock

    def __enter__(self) -> ModelUse:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _user_pid(path: Path) -> int | None:
    """The pid a use wrote into ``path``, if that process still runs."""
    try:
        pid = int(json.loads(path.read_text(encoding="utf-8"))["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def _refusal(variant_id: str, purpose: Purpose, path: Path) -> ModelInUseError:
    pid = _user_pid(path)
    by = f" (process {pid})" if pid is not None else ""
    if purpose == "running":
        return ModelInUseError(
            f"{variant_id} is running{by}; a running model cannot be deleted.",
            "Stop the engine first (Stop in Gemma Desktop, Ctrl+C where `gemma-desktop serve` "
            "or `chat` runs), then delete it.",
            variant_id=variant_id,
            purpose=purpose,
        )
    return ModelInUseError(
        f"{variant_id} is being downloaded{by}; it cannot be deleted meanwhile.",
        "Cancel the download (or wait until it has finished), then delete it.",
        variant_id=variant_id,
        purpose=purpose,
    )


@contextlib.contextmanager
def exclusive_use(variant_id: str, directory: Path | None = None) -> Iterator[None]:
    """Hold ``variant_id`` against every use while the block runs (a delete).

    Raises :class:`ModelInUseError` at once when an engine runs it or a download
    writes it; meanwhile no engine or download of it can start.
    """
    handles: list[IO[str]] = []
    try:
        for purpose in PURPOSES:
            path = lock_path(variant_id, purpose, directory)
            handle = _open(path)
            handles.append(handle)
            if not _flock(handle, exclusive=True):
                raise _refusal(variant_id, purpose, path)
        yield
    finally:
        for handle in handles:
            handle.close()


def in_use(variant_id: str, directory: Path | None = None) -> Purpose | None:
    """What uses ``variant_id`` now (``"running"`` first), or ``None``. A moment's answer."""
    try:
        with exclusive_use(variant_id, directory):
            return None
    except ModelInUseError as exc:
        return exc.purpose


# --- last used ---------------------------------------------------------------------------


def _last_used_path() -> Path:
    return paths.state_dir() / LAST_USED_FILE


def last_used() -> dict[str, float]:
    """When each model last started in an engine (Unix time), by catalog id."""
    try:
        data = json.loads(_last_used_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))}


def record_last_used(variant_id: str, when: float | None = None) -> None:
    """Note that ``variant_id`` is being used now; never raises (the list only shows it)."""
    from gemma_desktop.core.fsutil import FileLock, atomic_write

    target = _last_used_path()
    try:
        with FileLock(target.with_name(target.name + ".lock")):
            data = last_used()
            data[variant_id] = time.time() if when is None else when
            atomic_write(target, json.dumps(data, indent=1, sort_keys=True))
    except OSError as exc:
        log.warning("could not record when %s was last used: %s", variant_id, exc)


def forget_last_used(variant_id: str) -> None:
    """Drop ``variant_id``'s record (it was deleted); never raises."""
    from gemma_desktop.core.fsutil import FileLock, atomic_write

    target = _last_used_path()
    try:
        with FileLock(target.with_name(target.name + ".lock")):
            data = last_used()
            if data.pop(variant_id, None) is not None:
                atomic_write(target, json.dumps(data, indent=1, sort_keys=True))
    except OSError as exc:
        log.warning("could not forget when %s was last used: %s", variant_id, exc)
