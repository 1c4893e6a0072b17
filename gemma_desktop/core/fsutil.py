"""Writing files so that a crash never leaves half of one, and locking them across processes.

:func:`atomic_write` is the app's one way to replace a file: the new content
goes to a temporary sibling, is flushed to disk, and is renamed over the
target, so a reader (or the next launch after a crash) sees either the old
file or the new one, never a mix. :class:`FileLock` serialises
read-modify-write cycles between threads *and* processes with an advisory
``flock`` on a lock file beside the data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType


def atomic_write(target: Path, data: str | bytes, *, mode: int | None = None) -> None:
    """Replace ``target`` with ``data`` (text is UTF-8) through a temporary file and a rename.

    ``mode`` sets the file's permissions before it becomes visible (``0o600``
    for files only the user may read).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_copy(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Held:
    """This process's hold on one lock file: a re-entrant thread lock, and the ``flock``
    taken by the outermost ``with`` of the thread that holds it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


#: This process's hold per lock file (see :class:`FileLock`).
_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


class FileLock:
    """An exclusive lock held by one thread of one process at a time.

    ``with FileLock(path):`` takes a process-local lock first (``flock`` locks
    belong to the open file, so two threads of one process would not exclude
    each other), then ``flock(LOCK_EX)`` on ``path``, which is created if
    needed and never deleted (deleting it would let two processes lock two
    different files). Re-entrant: a thread that holds it may take it again (a
    locked update whose read moves a broken file aside).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        key = str(path.resolve()) if path.parent.exists() else str(path)
        with _GUARD:
            self._held = _HELD.setdefault(key, _Held())

    def __enter__(self) -> FileLock:
        held = self._held
        held.lock.acquire()
        if held.depth:
            held.depth += 1
            return self
        fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # Windows: the thread lock is all there is
                pass
        except BaseException:
            if fd is not None:
                os.close(fd)
            held.lock.release()
            raise
        held.fd, held.depth = fd, 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held = self._held
        held.depth -= 1
        try:
            if not held.depth and held.fd is not None:
                fd, held.fd = held.fd, None
                os.close(fd)  # closing releases the flock
        finally:
            held.lock.release()
