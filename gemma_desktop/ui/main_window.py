"""The main window: chat, hardware check, model, token, history and connections pages,
the engine indicator, and the menus (File, Engine, View, Help).

It receives every service it shows (``app.py`` builds them); it builds none.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QUrl, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop import APP_NAME, __version__
from gemma_desktop.core.audio_capture import AudioDevices
from gemma_desktop.core.chat.history import AsyncHistory
from gemma_desktop.core.engine.protocol import EngineState, EngineStatus
from gemma_desktop.core.models.catalog import VariantCatalog
from gemma_desktop.core.models.downloads import DownloadManager
from gemma_desktop.core.models.hub_cache import is_on_disk
from gemma_desktop.core.secrets import TokenStore, validate_token
from gemma_desktop.ui import theme
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.chat.panel import ChatPanel
from gemma_desktop.ui.dialogs import ask
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.local_api_host import LocalApiHost
from gemma_desktop.ui.panels.connections_panel import ConnectionsPanel
from gemma_desktop.ui.panels.download_panel import DownloadPanel
from gemma_desktop.ui.panels.engine_indicator import EngineIndicator
from gemma_desktop.ui.panels.history_panel import HistoryPanel
from gemma_desktop.ui.panels.probe_panel import ProbePanel
from gemma_desktop.ui.panels.token_panel import SecretSink, TokenPanel, Validator
from gemma_desktop.ui.panels.variant_picker import VariantPicker
from gemma_desktop.ui.tasks import spawn
from gemma_desktop.ui.tray import FREE_MEMORY_TEXT, update_free_action

log = logging.getLogger(__name__)

PAGE_CHAT, PAGE_HARDWARE, PAGE_MODEL, PAGE_TOKEN, PAGE_HISTORY, PAGE_CONNECTIONS = range(6)


@dataclass
class WindowServices:
    """What the main window shows and talks to; built by ``app.py``."""

    host: EngineHost
    state: AppState
    catalog: VariantCatalog
    token_store: TokenStore
    download_manager: DownloadManager
    token_validator: Validator | None = None
    on_secret: SecretSink | None = None
    log_path: Path | None = None
    diagnostics: Callable[[], str] | None = None
    #: The conversation history; ``None`` records nothing (the History page says so).
    history: AsyncHistory | None = None
    #: The microphone and playback; ``None`` offers no recording.
    audio: AudioDevices | None = None
    #: The local OpenAI-compatible endpoint's owner.
    local_api: LocalApiHost | None = None
    #: Remote API keys kept for this session only (no keyring); the engine assembly reads them.
    remote_session_keys: dict[str, str] | None = None


class MainWindow(QMainWindow):
    """The app's window. Pages: Chat, Hardware check, Model, Hugging Face token, History,
    Connections.

    Closing it (where no tray keeps the app running) asks the app to quit:
    :attr:`quit_requested`; ``app.py`` shuts everything down and then calls
    :meth:`close_for_good`. The window stops nothing itself.

    Signals:
        quit_requested(): File → Quit, or the window was closed.
        setup_requested(): Help → Run setup again; ``app.py`` shows the setup wizard.
    """

    quit_requested = Signal()
    setup_requested = Signal()

    def __init__(self, services: WindowServices, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.host = services.host
        self._closed = False
        self._download_widget: DownloadPanel | None = None
        self.setWindowTitle(APP_NAME)
        self.setWindowIcon(theme.icon("app"))
        self.resize(1180, 780)
        self.setMinimumSize(QSize(760, 520))

        self.indicator = EngineIndicator(self.host, services.catalog)
        self.indicator.start_requested.connect(self.start_or_restart_engine)
        self.chat = ChatPanel(self.host, history=services.history, audio=services.audio)
        self.history_panel = HistoryPanel(services.history)
        self.probe_panel = ProbePanel(services.state)
        self.token_panel = TokenPanel(
            services.token_store,
            validator=services.token_validator or validate_token,
            on_secret=services.on_secret,
        )
        self.picker = VariantPicker(
            services.catalog,
            services.state,
            selected=services.state.settings.model_id.value,
            confirm=self._confirm_switch,
        )
        self.connections = ConnectionsPanel(
            self.host,
            services.state,
            session_keys=services.remote_session_keys,
            local_api=services.local_api,
        )
        self.download_area = QFrame()
        self.download_area.setObjectName("downloadArea")
        self.download_area.setProperty("role", "card")
        self.download_layout = QVBoxLayout(self.download_area)
        self.download_area.setVisible(False)

        model_page = QWidget()
        model_layout = QVBoxLayout(model_page)
        model_layout.setContentsMargins(0, 0, 0, 12)
        model_layout.addWidget(self.picker, 1)
        download_wrap = QHBoxLayout()
        download_wrap.setContentsMargins(16, 0, 16, 0)
        download_wrap.addWidget(self.download_area)
        model_layout.addLayout(download_wrap)

        self.pages = QStackedWidget()
        for page in (
            self.chat,
            self.probe_panel,
            model_page,
            self.token_panel,
            self.history_panel,
            self.connections,
        ):
            self.pages.addWidget(page)

        self.navigation = QListWidget()
        self.navigation.setObjectName("navigation")
        self.navigation.setAccessibleName("Pages")
        self.navigation.setIconSize(QSize(20, 20))
        self.navigation.setFixedWidth(190)
        self.navigation.setFrameShape(QFrame.Shape.NoFrame)
        for text, icon_name in (
            ("Chat", "chat"),
            ("Hardware check", "hardware"),
            ("Model", "model"),
            ("Hugging Face token", "key"),
            ("History", "history"),
            ("Connections", "connections"),
        ):
            item = QListWidgetItem(theme.icon(icon_name), text, self.navigation)
            item.setSizeHint(QSize(0, 38))
        self.navigation.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.navigation.setCurrentRow(PAGE_CHAT)

        header = QFrame()
        header.setObjectName("header")
        header_layout = QHBoxLayout(header)
        header_layout.setContentsMargins(14, 8, 14, 8)
        header_layout.addWidget(self.indicator, 1)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(0)
        right_layout.addWidget(header)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Plain)
        line.setStyleSheet(f"color: {theme.colors().border};")
        right_layout.addWidget(line)
        right_layout.addWidget(self.pages, 1)

        central = QWidget()
        central_layout = QHBoxLayout(central)
        central_layout.setContentsMargins(0, 0, 0, 0)
        central_layout.setSpacing(0)
        central_layout.addWidget(self.navigation)
        central_layout.addWidget(right, 1)
        self.setCentralWidget(central)

        self.notice_label = QLabel("")
        self.notice_label.setObjectName("notice")
        self.notice_label.setAccessibleName("Notice")
        self.statusBar().addWidget(self.notice_label, 1)
        version = QLabel(f"{APP_NAME} {__version__}")
        version.setProperty("role", "muted")
        self.statusBar().addPermanentWidget(version)

        self._build_menus()
        self.picker.variant_chosen.connect(self._on_variant_chosen)
        self.picker.download_requested.connect(self.show_download)
        self.token_panel.token_changed.connect(self.probe_panel.rerun)
        self.host.status_changed.connect(self._on_engine_status)
        self.history_panel.open_requested.connect(self.open_conversation)
        self.history_panel.conversation_deleted.connect(self.chat.forget_conversation)
        self.chat.history_changed.connect(self._on_history_changed)
        self.setTabOrder(self.navigation, self.chat.composer)

    # --- menus -------------------------------------------------------------------------

    def _action(
        self,
        text: str,
        slot: Callable[[], object],
        shortcut: str | QKeySequence | QKeySequence.StandardKey | None = None,
    ) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda _checked=False: slot())
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self.new_chat_action = self._action("&New chat", self.chat.new_chat, "Ctrl+N")
        file_menu.addAction(self.new_chat_action)
        file_menu.addSeparator()
        self.quit_action = self._action(
            "&Quit", self.quit_requested.emit, QKeySequence.StandardKey.Quit
        )
        file_menu.addAction(self.quit_action)

        engine_menu = bar.addMenu("&Engine")
        self.start_action = self._action("&Start engine", self.start_or_restart_engine)
        self.restart_action = self._action("&Restart engine", self.restart_engine)
        self.stop_action = self._action("S&top engine", self.stop_engine)
        for action in (self.start_action, self.restart_action, self.stop_action):
            engine_menu.addAction(action)
        engine_menu.addSeparator()
        self.free_memory_action = self._action(FREE_MEMORY_TEXT, self.free_gpu_memory)
        self.free_memory_action.setObjectName("freeGpuMemory")
        engine_menu.addAction(self.free_memory_action)

        view_menu = bar.addMenu("&View")
        pages = (
            "&Chat",
            "&Hardware check",
            "&Model",
            "Hugging Face &token",
            "Hi&story",
            "C&onnections",
        )
        for row, text in enumerate(pages):
            view_menu.addAction(
                self._action(text, functools.partial(self.show_page, row), f"Ctrl+{row + 1}")
            )

        help_menu = bar.addMenu("&Help")
        self.open_log_action = self._action("Open &log file", self.open_log)
        self.copy_diagnostics_action = self._action("&Copy diagnostics", self.copy_diagnostics)
        help_menu.addAction(self.open_log_action)
        help_menu.addAction(self.copy_diagnostics_action)
        self.setup_action = self._action("Run &setup again…", self.setup_requested.emit)
        help_menu.addAction(self.setup_action)
        help_menu.addSeparator()
        help_menu.addAction(self._action(f"&About {APP_NAME}", self.about))
        self._on_engine_status(self.host.status)

    def show_page(self, row: int) -> None:
        self.navigation.setCurrentRow(row)

    def notify(self, text: str, timeout_ms: int = 0) -> None:
        """A line in the status bar (``timeout_ms`` 0 keeps it)."""
        self.notice_label.setText(text)
        if timeout_ms:
            self.statusBar().showMessage(text, timeout_ms)

    # --- engine ----------------------------------------------------------------------------

    def start_or_restart_engine(self) -> None:
        if self.host.status.state == EngineState.CRASHED:
            self.restart_engine()
        else:
            spawn(self.host.start(), "Starting the engine")

    def restart_engine(self) -> None:
        self.chat.stop()
        spawn(self.host.restart(), "Restarting the engine")

    def stop_engine(self) -> None:
        self.chat.stop()
        spawn(self.host.stop(), "Stopping the engine")

    def free_gpu_memory(self) -> None:
        """Engine → Free GPU memory: sleep (CUDA) or stop (CPU build) until the next message."""
        self.chat.stop()
        spawn(self.host.free_memory(), "Freeing GPU memory")

    def _on_engine_status(self, status: EngineStatus) -> None:
        running = status.state in (EngineState.READY, EngineState.GENERATING)
        starting = status.state == EngineState.STARTING
        self.start_action.setEnabled(not running and not starting)
        self.restart_action.setEnabled(running or status.state == EngineState.CRASHED)
        self.stop_action.setEnabled(running or starting)
        update_free_action(self.free_memory_action, self.host)

    async def _confirm_switch(self, variant_id: str) -> bool:
        if variant_id == self.host.variant_id:
            return True  # nothing to restart
        if not self.host.is_running and self.host.status.state != EngineState.STARTING:
            return True
        label = self.services.catalog.get(variant_id).label
        return await ask(
            self,
            "Switch model",
            f"Restart the engine with {label}?",
            informative="The running engine stops"
            + (" and the answer being written is cut off." if self.chat.streaming else ".")
            + " Loading the new model takes a while.",
            yes_text="Restart with this model",
            no_text="Keep the current model",
        )

    def _on_variant_chosen(self, variant_id: str) -> None:
        hub_cache = self.services.state.settings.hf_hub_cache.value
        cached = variant_id and (
            self.services.catalog.get(variant_id).is_bundled or is_on_disk(variant_id, hub_cache)
        )
        if not cached:
            self.host.set_variant(variant_id)
            self.notify("Download the model before starting the engine.")
            self.show_download(variant_id)
            return
        if variant_id == self.host.variant_id and self.host.engine is not None:
            return
        if self.host.engine is not None or self.host.is_running:
            self.chat.stop()
            spawn(self.host.switch(variant_id), "Switching the model")
        else:
            self.host.set_variant(variant_id)
        self.probe_panel.rerun()

    def show_download(self, variant_id: str) -> None:
        """Show the download panel for ``variant_id`` on the Model page."""
        self.show_page(PAGE_MODEL)
        panel = self._download_widget
        if panel is not None and not panel.is_running:
            panel.deleteLater()
            panel = self._download_widget = None
        if panel is None:
            panel = DownloadPanel(self.services.download_manager, variant_id)
            panel.finished.connect(self._on_download_finished)
            self._download_widget = panel
            self.download_layout.addWidget(panel)
        self.download_area.setVisible(True)

    def _on_download_finished(self, ok: bool) -> None:
        self.picker.populate()
        if ok:
            self.notify("Download finished: start the engine when you are ready.")
            self.probe_panel.rerun()

    # --- history ---------------------------------------------------------------------------

    def open_conversation(self, conversation_id: int) -> asyncio.Future[None]:
        """Show a conversation from the history in the chat, to read and continue."""
        return spawn(self._open_conversation(conversation_id), "Opening a conversation")

    async def _open_conversation(self, conversation_id: int) -> None:
        if await self.chat.open_conversation(conversation_id):
            self.show_page(PAGE_CHAT)
            self.chat.composer.setFocus()

    def _on_history_changed(self) -> None:
        if self.pages.currentWidget() is self.history_panel:
            self.history_panel.refresh()

    # --- help ------------------------------------------------------------------------------

    def open_log(self) -> None:
        path = self.services.log_path
        if path is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))

    def copy_diagnostics(self) -> None:
        text = self.services.diagnostics() if self.services.diagnostics else ""
        QGuiApplication.clipboard().setText(text)
        self.notify("Diagnostics copied to the clipboard (the token is never included).", 5000)

    def about(self) -> None:
        box = QMessageBox(self)
        box.setWindowTitle(f"About {APP_NAME}")
        box.setIconPixmap(theme.icon("app").pixmap(64, 64))
        box.setText(f"<b>{APP_NAME}</b> {__version__}")
        box.setInformativeText(
            "Run Google's Gemma models on your own workstation through vLLM."
            + (f"<br/>Log file: {self.services.log_path}" if self.services.log_path else "")
        )
        box.open()

    # --- closing ---------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        """Closing asks the app to quit; it closes for real once everything has stopped."""
        if self._closed:
            event.accept()
            return
        event.ignore()
        self.quit_requested.emit()

    def shutting_down(self) -> None:
        """The app is quitting: say so, and stop the answer being written."""
        self.notify("Stopping the engine…")
        self.chat.stop()

    def close_for_good(self) -> None:
        """The app has shut down: close the window."""
        self._closed = True
        self.close()

    @property
    def is_closed(self) -> bool:
        return self._closed


def focus_chain(window: MainWindow) -> list[QWidget]:
    """The widgets Tab reaches from the navigation, in order (for tests)."""
    chain: list[QWidget] = []
    widget: QWidget | None = window.navigation
    for _ in range(200):
        if widget is None:
            break
        widget = widget.nextInFocusChain()
        if widget is window.navigation:
            break
        if widget is not None and widget.focusPolicy() & Qt.FocusPolicy.TabFocus:
            chain.append(widget)
    return chain
