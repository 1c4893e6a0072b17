"""One Gemma Desktop per user session: a second launch raises the first window.

The first process takes a lock file (``QLockFile``) in
:func:`~gemma_desktop.core.paths.runtime_dir` and listens on a local socket
beside it. A later launch fails to take the lock, connects, sends
``activate`` and exits before it builds any window or engine, so there is
never a second engine.

After a crash the lock file and the socket stay behind. ``QLockFile`` sees
that the process that wrote the lock is gone and takes it over, and the
primary removes the dead socket before listening, so the next launch starts
normally.

Signals:
    activated(): another launch asked this instance to show its window.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

from PySide6.QtCore import QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket
from PySide6.QtWidgets import QWidget

from gemma_desktop import APP_ID
from gemma_desktop.core import paths

log = logging.getLogger(__name__)

ACTIVATE = b"activate\n"
ACK = b"ok\n"
#: Unix socket paths are limited to 108 bytes (sun_path); keep a margin.
_MAX_SOCKET_PATH = 100


def server_name(directory: Path) -> str:
    """The socket's full path, or a short per-directory name when that is too long."""
    path = directory / f"{APP_ID}.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return str(path)
    digest = hashlib.sha256(os.fsencode(directory)).hexdigest()[:16]
    return f"{APP_ID}-{os.getuid() if hasattr(os, 'getuid') else 0}-{digest}"


class SingleInstance(QObject):
    """The per-user instance lock and the "activate" channel.

    Call :meth:`acquire` right after creating the ``QApplication`` and before
    building services. ``True``: this is the only instance (keep the object
    alive; connect :attr:`activated`). ``False``: another instance was told to
    show its window and this process should exit with status 0.
    """

    activated = Signal()

    def __init__(self, directory: Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.directory = directory or paths.runtime_dir()
        self.name = server_name(self.directory)
        self._lock: QLockFile | None = None
        self._server: QLocalServer | None = None
        self._peers: list[QLocalSocket] = []

    @property
    def is_primary(self) -> bool:
        return self._server is not None

    def acquire(self, wait_ms: int = 5000) -> bool:
        """Become the primary instance, or activate the running one and return ``False``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self.directory.chmod(0o700)
        lock = QLockFile(str(self.directory / f"{APP_ID}.lock"))
        lock.setStaleLockTime(0)  # stale only when its process is gone, never by age
        if lock.tryLock(0):
            self._lock = lock
            self._listen()
            return True
        # Someone holds the lock: it may still be starting, so retry the connection.
        if self.notify_running(wait_ms):
            return False
        # The holder never answered (hung, or it died between our checks): take over.
        if lock.removeStaleLockFile() and lock.tryLock(0):
            self._lock = lock
            self._listen()
            return True
        log.warning("another instance holds %s but does not answer", lock.fileName())
        return False

    def notify_running(self, wait_ms: int = 5000) -> bool:
        """Send ``activate`` to the running instance; ``True`` when it acknowledged."""
        import time

        deadline = time.monotonic() + wait_ms / 1000
        while True:
            socket = QLocalSocket()
            socket.connectToServer(self.name)
            if socket.waitForConnected(500):
                socket.write(ACTIVATE)
                socket.flush()
                answered = socket.waitForReadyRead(2000) and bytes(socket.readAll().data()) == ACK
                socket.disconnectFromServer()
                if answered:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def _listen(self) -> None:
        QLocalServer.removeServer(self.name)  # a socket file left by a crash
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            log.warning("cannot listen on %s: %s", self.name, server.errorString())
            return
        server.newConnection.connect(self._on_connection)
        self._server = server

    def _on_connection(self) -> None:
        assert self._server is not None
        while self._server.hasPendingConnections():
            peer = self._server.nextPendingConnection()
            self._peers.append(peer)
            peer.readyRead.connect(lambda p=peer: self._on_ready(p))
            peer.disconnected.connect(lambda p=peer: self._forget(p))
            if peer.bytesAvailable():
                self._on_ready(peer)

    def _on_ready(self, peer: QLocalSocket) -> None:
        if not peer.canReadLine():
            return
        line = bytes(peer.readLine().data())
        if line == ACTIVATE:
            peer.write(ACK)
            peer.flush()
            self.activated.emit()

    def _forget(self, peer: QLocalSocket) -> None:
        if peer in self._peers:
            self._peers.remove(peer)
        peer.deleteLater()

    def release(self) -> None:
        """Stop listening and drop the lock (also done when the process exits)."""
        if self._server is not None:
            self._server.close()
            QLocalServer.removeServer(self.name)
            self._server = None
        if self._lock is not None:
            self._lock.unlock()
            self._lock = None


def raise_window(window: QWidget) -> None:
    """Show ``window`` in front: restore it from the tray or from minimised."""
    if window.isMinimized():
        window.showNormal()
    else:
        window.show()
    window.raise_()
    window.activateWindow()
