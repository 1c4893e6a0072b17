"""The engine state indicator: not started / starting (what it is doing) / ready /
generating / crashed (with Restart)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from gemma_desktop.core.engine.protocol import EngineState, EngineStatus, StartProgress
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.models.catalog import VariantCatalog
from gemma_desktop.ui import theme
from gemma_desktop.ui.engine_host import EngineHost

_ICONS = {
    EngineState.NOT_STARTED: "status-idle",
    EngineState.STOPPED: "status-idle",
    EngineState.STARTING: "status-busy",
    EngineState.READY: "status-ok",
    EngineState.GENERATING: "status-generating",
    EngineState.CRASHED: "status-fail",
}

_TEXT = {
    EngineState.NOT_STARTED: "Engine not started",
    EngineState.STOPPED: "Engine stopped",
    EngineState.STARTING: "Engine starting",
    EngineState.READY: "Engine ready",
    EngineState.GENERATING: "Generating",
    EngineState.CRASHED: "Engine stopped with an error",
}


class EngineIndicator(QWidget):
    """Shows the host's state; Start when idle, Restart after a crash.

    Signals:
        start_requested(): the user asked to start (or restart) the engine.
    """

    start_requested = Signal()

    def __init__(
        self, host: EngineHost, catalog: VariantCatalog, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._host = host
        self._catalog = catalog
        self.icon_label = QLabel()
        self.icon_label.setFixedSize(18, 18)
        self.state_label = QLabel()
        self.state_label.setObjectName("engineState")
        self.state_label.setAccessibleName("Engine state")
        self.state_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.detail_label = QLabel()
        self.detail_label.setProperty("role", "muted")
        self.detail_label.setWordWrap(True)
        self.detail_label.setAccessibleName("Engine state details")
        self.progress_bar = QProgressBar()
        self.progress_bar.setFixedWidth(120)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setAccessibleName("Engine start progress")
        self.action_button = QPushButton()
        self.action_button.setAccessibleName("Start engine")
        self.action_button.clicked.connect(self.start_requested)

        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(8)
        layout.addWidget(self.icon_label)
        layout.addWidget(self.state_label)
        layout.addWidget(self.detail_label, 1)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.action_button)

        host.status_changed.connect(self.show_status)
        host.progress.connect(self.show_progress)
        host.variant_changed.connect(lambda _id: self.show_status(host.status))
        self.show_status(host.status)

    def _label(self, model_id: str | None) -> str:
        try:
            return self._catalog.get(model_id or self._host.variant_id).label
        except GemmaDesktopError:
            return model_id or ""

    def show_status(self, status: EngineStatus) -> None:
        state = status.state
        self.icon_label.setPixmap(theme.icon(_ICONS[state]).pixmap(18, 18))
        self.state_label.setText(f"<b>{_TEXT[state]}</b> · {self._label(status.model_id)}")
        detail = status.detail
        if state == EngineState.CRASHED and status.hint:
            detail = f"{detail} {status.hint}".strip()
        self.detail_label.setText(detail)
        self.detail_label.setProperty("role", "error" if state == EngineState.CRASHED else "muted")
        self.detail_label.style().unpolish(self.detail_label)
        self.detail_label.style().polish(self.detail_label)
        self.progress_bar.setVisible(state == EngineState.STARTING)
        if state == EngineState.STARTING and self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 100)
        if state == EngineState.CRASHED:
            self._set_action("Restart engine", "Restart", "regenerate")
        elif state in (EngineState.NOT_STARTED, EngineState.STOPPED):
            self._set_action("Start engine", "Start engine", "play")
        else:
            self.action_button.setVisible(False)
        self.setToolTip(f"{_TEXT[state]}: {detail}" if detail else _TEXT[state])

    def _set_action(self, accessible: str, text: str, icon_name: str) -> None:
        self.action_button.setText(text)
        self.action_button.setIcon(theme.icon(icon_name))
        self.action_button.setAccessibleName(accessible)
        self.action_button.setVisible(True)
        self.action_button.setEnabled(not self._host.is_busy)

    def show_progress(self, step: StartProgress) -> None:
        if step.fraction is None:
            self.progress_bar.setRange(0, 0)  # busy indicator
        else:
            self.progress_bar.setRange(0, 100)
            self.progress_bar.setValue(int(step.fraction * 100))
        self.detail_label.setText(step.message)
