"""The tray icon and what closing the window means.

With a system tray, Gemma Desktop lives in it: closing the main window hides
it and the engine keeps running (the first time, a notification says so);
the tray's menu shows or hides the window, starts a new chat, starts or stops
the engine, frees its GPU memory (Free GPU memory: the engine sleeps, or on the
CPU build stops, until the next message) and quits. The icon and its tooltip
show the engine's state.

Without a system tray (some desktops, remote sessions), closing the window
quits; when an answer is still streaming the user is asked first.

Quit hands over to the app's one way out (``quit_app``: ``app.py`` passes
its :class:`~gemma_desktop.ui.quit.Quitter`), which shuts the engine down
before the application exits.

Signals:
    new_chat_requested(): the user chose "New chat" in the tray menu.
    quit_started(): the user chose Quit (or closed the window without a tray).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QAction, QColor, QIcon, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon, QWidget

from gemma_desktop import APP_NAME
from gemma_desktop.core.engine.protocol import EngineState, EngineStatus
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.paths import ICONS_DIR
from gemma_desktop.core.settings import SettingsStore
from gemma_desktop.ui.dialogs import ask
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.single_instance import raise_window as show_window
from gemma_desktop.ui.tasks import run_blocking, spawn

log = logging.getLogger(__name__)

#: Saved once the "still running in the tray" notification has been shown.
NOTICE_KEY = "tray_notice_shown"

STATE_COLOURS: dict[EngineState, str] = {
    EngineState.NOT_STARTED: "#8a8f98",
    EngineState.STOPPED: "#8a8f98",
    EngineState.STARTING: "#e0a100",
    EngineState.READY: "#1e9e5a",
    EngineState.GENERATING: "#2f6fde",
    EngineState.CRASHED: "#c62828",
}
SLEEPING_COLOUR = "#6a5acd"
FREE_MEMORY_TEXT = "Free GPU memory"


def update_free_action(action: QAction, host: EngineHost, quitting: bool = False) -> None:
    """The Free GPU memory action (tray and Engine menu): shown while the engine runs or
    sleeps, enabled while it can free its memory; its tooltip says what it will do."""
    sleeping = host.is_sleeping
    action.setVisible(host.is_running or sleeping)
    action.setEnabled(host.can_free_memory and not quitting)
    engine = host.engine
    if sleeping:
        action.setText("GPU memory freed")
        action.setToolTip("The next message brings the model back.")
    else:
        action.setText(FREE_MEMORY_TEXT)
        action.setToolTip(
            "Move the model out of the GPU (to RAM) until the next message."
            if engine is not None and engine.abilities.sleep
            else "Stop the engine to free its memory; the next message starts it again."
        )


def app_icon() -> QIcon:
    """The application icon from ``resources/icons/app.svg`` (a drawn star without it)."""
    svg = ICONS_DIR / "app.svg"
    if svg.is_file():
        icon = QIcon(str(svg))
        if not icon.isNull():
            return icon
    pixmap = QPixmap(64, 64)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(QColor("#4f8cff"))
    painter.setPen(Qt.PenStyle.NoPen)
    painter.drawRoundedRect(QRectF(4, 4, 56, 56), 14, 14)
    painter.setBrush(QColor("white"))
    star = [(32, 12), (37, 27), (52, 32), (37, 37), (32, 52), (27, 37), (12, 32), (27, 27)]
    painter.drawPolygon([QPointF(x, y) for x, y in star])
    painter.end()
    return QIcon(pixmap)


def state_icon(base: QIcon, colour: str, size: int = 64) -> QIcon:
    """``base`` with a status dot of ``colour`` in its lower right corner."""
    pixmap = base.pixmap(size, size)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    radius = size * 0.2
    centre = QPointF(size - radius - 1, size - radius - 1)
    painter.setPen(QPen(QColor("white"), size * 0.06))
    painter.setBrush(QColor(colour))
    painter.drawEllipse(centre, radius, radius)
    painter.end()
    return QIcon(pixmap)


def describe(status: EngineStatus) -> str:
    """One line for the tooltip: the state, the model and what is going on."""
    text = f"{APP_NAME} — engine {status.state.value}"
    if status.model_id:
        text += f"\n{status.model_id}"
    if status.detail:
        text += f"\n{status.detail}"
    return text


class Tray(QObject):
    """The tray icon with its menu, and the window's close policy.

    ``window`` is the main window (hidden on close, never destroyed); ``host``
    the :class:`~gemma_desktop.ui.engine_host.EngineHost` that owns the engine.
    ``is_streaming`` says whether an answer is being written (default: the
    engine is GENERATING). ``available`` forces the tray on or off (default:
    ask Qt whether the desktop has one). ``quit_app`` ends the application
    once the engine is down (default ``QApplication.quit``).
    """

    new_chat_requested = Signal()
    quit_started = Signal()

    def __init__(
        self,
        window: QWidget,
        host: EngineHost,
        *,
        store: SettingsStore,
        is_streaming: Callable[[], bool] | None = None,
        available: bool | None = None,
        icon: QIcon | None = None,
        quit_app: Callable[[], object] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.window = window
        self._quit_app = quit_app
        self.host = host
        self.store = store
        self._is_streaming = is_streaming
        self.available = QSystemTrayIcon.isSystemTrayAvailable() if available is None else available
        self.base_icon = icon or app_icon()
        self.quitting = False
        # Read once, up front: the settings file is tiny and this runs before the loop is busy.
        self._notice_shown: bool | None = None
        self._notice_was_shown()
        self.last_notification: tuple[str, str] | None = None

        self.menu = QMenu()
        self.menu.setObjectName("trayMenu")
        self.show_action = QAction("Show window", self.menu)
        self.new_chat_action = QAction("New chat", self.menu)
        self.engine_action = QAction("Start engine", self.menu)
        self.free_action = QAction(FREE_MEMORY_TEXT, self.menu)
        self.free_action.setObjectName("freeGpuMemory")
        self.quit_action = QAction(f"Quit {APP_NAME}", self.menu)
        self.menu.addAction(self.show_action)
        self.menu.addAction(self.new_chat_action)
        self.menu.addSeparator()
        self.menu.addAction(self.engine_action)
        self.menu.addAction(self.free_action)
        self.menu.addSeparator()
        self.menu.addAction(self.quit_action)
        self.show_action.triggered.connect(self.toggle_window)
        self.new_chat_action.triggered.connect(self._new_chat)
        self.engine_action.triggered.connect(
            lambda: spawn(self.toggle_engine(), "The tray's engine action")
        )
        self.free_action.triggered.connect(
            lambda: spawn(self.free_memory(), "The tray's Free GPU memory action")
        )
        self.quit_action.triggered.connect(self.request_quit)
        self.menu.aboutToShow.connect(self.refresh)

        self.icon = QSystemTrayIcon(self)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._on_activated)
        host.status_changed.connect(self._on_status)
        self.refresh()

    # -- set-up ---------------------------------------------------------------------

    def install(self) -> Tray:
        """Show the icon (where there is a tray) and take over the window's close button."""
        app = QApplication.instance()
        if isinstance(app, QApplication):
            app.setQuitOnLastWindowClosed(False)
        self.window.installEventFilter(self)
        if self.available:
            self.icon.show()
        return self

    # -- state ------------------------------------------------------------------------

    def _on_status(self, status: EngineStatus) -> None:
        if status.state is EngineState.CRASHED and not self.window.isVisible():
            self.notify(
                "The engine stopped",
                status.detail + ("\n" + status.hint if status.hint else ""),
                QSystemTrayIcon.MessageIcon.Warning,
            )
        self.refresh()

    def refresh(self) -> None:
        """Bring the icon, tooltip and menu texts up to date."""
        status = self.host.status
        state = status.state
        colour = SLEEPING_COLOUR if self.host.is_sleeping else STATE_COLOURS[state]
        self.icon.setIcon(state_icon(self.base_icon, colour))
        self.icon.setToolTip(describe(status))
        self.show_action.setText("Hide window" if self.window.isVisible() else "Show window")
        if state in (EngineState.READY, EngineState.GENERATING):
            self.engine_action.setText("Stop engine")
            self.engine_action.setEnabled(not self.quitting)
        elif state is EngineState.STARTING:
            self.engine_action.setText("Engine starting…")
            self.engine_action.setEnabled(False)
        else:
            self.engine_action.setText(
                "Restart engine" if state is EngineState.CRASHED else "Start engine"
            )
            self.engine_action.setEnabled(not self.quitting)
        self.new_chat_action.setEnabled(not self.quitting)
        update_free_action(self.free_action, self.host, self.quitting)

    def streaming(self) -> bool:
        if self._is_streaming is not None:
            return self._is_streaming()
        return self.host.status.state is EngineState.GENERATING

    # -- actions -------------------------------------------------------------------------

    def toggle_window(self) -> None:
        if self.window.isVisible() and not self.window.isMinimized():
            self.window.hide()
        else:
            show_window(self.window)
        self.refresh()

    def _new_chat(self) -> None:
        show_window(self.window)
        self.new_chat_requested.emit()
        self.refresh()

    async def toggle_engine(self) -> None:
        """Start the engine when it is not running, stop it when it is.

        Failures end up in the host's status (CRASHED with reason and hint).
        """
        state = self.host.status.state
        if state in (EngineState.READY, EngineState.GENERATING):
            await self.host.stop()
        elif state is EngineState.CRASHED:
            await self.host.restart()
        elif state is not EngineState.STARTING:
            await self.host.start()
        self.refresh()

    async def free_memory(self) -> None:
        """Free GPU memory: the engine sleeps (CUDA) or stops (CPU build); the next
        message brings it back."""
        await self.host.free_memory()
        self.refresh()

    def request_quit(self) -> None:
        """Quit: hide the window and the icon's menu, then hand over to ``quit_app``."""
        if self.quitting:
            return
        self.quitting = True
        self.quit_started.emit()
        self.refresh()
        self.window.hide()
        if self._quit_app is not None:
            self._quit_app()
        else:
            QApplication.quit()

    def shutting_down(self) -> None:
        """The app is quitting (whoever asked): take the icon away."""
        self.quitting = True
        self.refresh()
        self.icon.hide()
        self.window.removeEventFilter(self)

    # -- closing the window ---------------------------------------------------------------

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.window and event.type() == QEvent.Type.Close and not self.quitting:
            event.ignore()
            if self.available:
                self.window.hide()
                self._notice_once()
                self.refresh()
            else:
                spawn(self._close_without_tray(), "Closing the window")
            return True
        return super().eventFilter(watched, event)

    async def _close_without_tray(self) -> None:
        if self.streaming():
            leave = await ask(
                self.window,
                f"Quit {APP_NAME}?",
                "An answer is still being written.",
                informative="Quitting stops it and shuts the engine down. "
                "The text so far is kept in the history.",
                yes_text="Quit",
                no_text="Keep running",
            )
            if not leave:
                return
        self.request_quit()

    def _notice_was_shown(self) -> bool:
        if self._notice_shown is None:
            try:
                self._notice_shown = bool(self.store.load().get(NOTICE_KEY))
            except GemmaDesktopError:
                self._notice_shown = False
        return self._notice_shown

    def _notice_once(self) -> None:
        if self._notice_was_shown():
            return
        self._notice_shown = True
        self.notify(
            f"{APP_NAME} is still running",
            "The engine stays loaded in the background so your next chat starts at once. "
            "Use the tray icon to open the window again or to quit.",
        )

        spawn(self._remember_notice(), "Saving the tray notice")

    async def _remember_notice(self) -> None:
        try:
            await run_blocking(lambda: self.store.update(**{NOTICE_KEY: True}))
        except GemmaDesktopError as exc:
            log.warning("could not remember the tray notice: %s", exc.reason)

    # -- helpers --------------------------------------------------------------------------

    def notify(
        self,
        title: str,
        text: str,
        icon: QSystemTrayIcon.MessageIcon = QSystemTrayIcon.MessageIcon.Information,
    ) -> None:
        """A tray notification (logged as well, for desktops that do not show them)."""
        log.info("%s: %s", title, text)
        self.last_notification = (title, text)
        if self.available:
            self.icon.showMessage(title, text, icon, 8000)

    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            self.toggle_window()
