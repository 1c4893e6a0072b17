"""The hardware check panel: the probe's outcome on top, then every check with its
status, reason and hint; Re-run and Copy report.

The panel runs nothing itself: the app's :class:`~gemma_desktop.ui.app_state.AppState`
runs the probe off the UI thread, and the panel shows each report it announces
(Re-run asks it for a new one).

Signals:
    report_changed(ProbeReport): a probe run finished.
"""

from __future__ import annotations

import asyncio
import html
import logging

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop.core.machine.probe import Check, CheckStatus, Outcome, ProbeReport
from gemma_desktop.ui import theme
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.tasks import spawn

log = logging.getLogger(__name__)

STATUS_ICON = {
    CheckStatus.OK: "status-ok",
    CheckStatus.WARN: "status-warn",
    CheckStatus.FAIL: "status-fail",
    CheckStatus.SKIPPED: "status-skipped",
}
STATUS_WORD = {
    CheckStatus.OK: "OK",
    CheckStatus.WARN: "Warning",
    CheckStatus.FAIL: "Failed",
    CheckStatus.SKIPPED: "Skipped",
}
OUTCOME_TITLE = {
    Outcome.READY: "Ready",
    Outcome.SKIPPED: "Cannot run here",
    Outcome.ERROR: "Error",
}


class CheckRow(QFrame):
    """One check: icon, title, reason and hint."""

    def __init__(self, check: Check, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.check = check
        self.setObjectName(f"check-{check.id}")
        icon = QLabel()
        icon.setPixmap(theme.icon(STATUS_ICON[check.status]).pixmap(18, 18))
        icon.setAccessibleName(STATUS_WORD[check.status])
        icon.setAlignment(Qt.AlignmentFlag.AlignTop)
        icon.setFixedWidth(24)
        self.title = QLabel(f"<b>{html.escape(check.title)}</b>")
        self.reason = QLabel(html.escape(check.reason))
        self.reason.setWordWrap(True)
        self.reason.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint = QLabel(html.escape(check.hint))
        self.hint.setWordWrap(True)
        self.hint.setProperty("role", "muted")
        self.hint.setVisible(bool(check.hint))
        self.hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        text = QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(self.title)
        text.addWidget(self.reason)
        text.addWidget(self.hint)
        row = QHBoxLayout(self)
        row.setContentsMargins(8, 6, 8, 6)
        row.addWidget(icon)
        row.addLayout(text, 1)
        self.setAccessibleName(f"{check.title}: {STATUS_WORD[check.status]}")
        self.setAccessibleDescription(f"{check.reason} {check.hint}".strip())
        self.setFocusPolicy(Qt.FocusPolicy.TabFocus)


class ProbePanel(QWidget):
    """Shows a :class:`ProbeReport`; runs the probe it is given off the UI thread."""

    report_changed = Signal(object)

    def __init__(
        self, state: AppState, *, show_title: bool = True, parent: QWidget | None = None
    ) -> None:
        """``show_title=False`` leaves out the page title and margins (the wizard has its own)."""
        super().__init__(parent)
        self.state = state
        self.report: ProbeReport | None = None
        self._rows: list[CheckRow] = []

        title = QLabel("Hardware check")
        title.setProperty("role", "title")
        self.banner = QFrame()
        self.banner.setObjectName("outcomeBanner")
        self.banner.setProperty("role", "banner-skipped")
        self.outcome_icon = QLabel()
        self.outcome_label = QLabel("Checking this machine…")
        self.outcome_label.setObjectName("outcome")
        self.outcome_label.setAccessibleName("Hardware check outcome")
        self.outcome_label.setWordWrap(True)
        self.outcome_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint_label = QLabel("")
        self.hint_label.setObjectName("outcomeHint")
        self.hint_label.setWordWrap(True)
        self.hint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        banner_text = QVBoxLayout()
        banner_text.addWidget(self.outcome_label)
        banner_text.addWidget(self.hint_label)
        banner_layout = QHBoxLayout(self.banner)
        banner_layout.setContentsMargins(12, 10, 12, 10)
        banner_layout.addWidget(self.outcome_icon, 0, Qt.AlignmentFlag.AlignTop)
        banner_layout.addLayout(banner_text, 1)

        self.rerun_button = QPushButton(theme.icon("regenerate"), "Re-run")
        self.rerun_button.setAccessibleName("Re-run hardware check")
        self.copy_button = QPushButton(theme.icon("copy"), "Copy report")
        self.copy_button.setAccessibleName("Copy hardware report")
        self.copy_button.setToolTip("Copy the report as plain text for a bug report (no secrets)")
        self.copy_button.setEnabled(False)
        self.status_label = QLabel("")
        self.status_label.setProperty("role", "muted")
        self.status_label.setAccessibleName("Hardware check status")

        header = QHBoxLayout()
        header.addWidget(title)
        header.addStretch(1)
        header.addWidget(self.status_label)
        header.addWidget(self.rerun_button)
        header.addWidget(self.copy_button)

        self.checks_box = QWidget()
        self.checks_layout = QVBoxLayout(self.checks_box)
        self.checks_layout.setContentsMargins(0, 0, 0, 0)
        self.checks_layout.setSpacing(2)
        self.checks_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.checks_box)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        if not show_title:
            title.hide()
            layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(header)
        layout.addWidget(self.banner)
        layout.addWidget(scroll, 1)

        self.rerun_button.clicked.connect(self.rerun)
        self.copy_button.clicked.connect(self.copy_report)
        state.report_changed.connect(self.show_report)
        state.probing_changed.connect(self._on_probing)
        state.probe_failed.connect(self._on_failed)
        if state.report is not None:
            self.show_report(state.report)

    @property
    def running(self) -> bool:
        return self.state.probing

    def rerun(self) -> asyncio.Future[ProbeReport | None]:
        """Ask for a new probe run (joining one under way); returns its task."""
        return spawn(self.state.refresh(), "The hardware check")

    def _on_probing(self, probing: bool) -> None:
        self.rerun_button.setEnabled(not probing)
        self.status_label.setText("Checking…" if probing else "")

    def _on_failed(self, text: str) -> None:
        self.status_label.setText(text)

    def show_report(self, report: ProbeReport) -> None:
        self.report = report
        self.copy_button.setEnabled(True)
        icon_name = {
            Outcome.READY: "status-ok",
            Outcome.SKIPPED: "status-warn",
            Outcome.ERROR: "status-fail",
        }[report.outcome]
        self.outcome_icon.setPixmap(theme.icon(icon_name).pixmap(28, 28))
        self.outcome_label.setText(
            f"<b>{OUTCOME_TITLE[report.outcome]}</b> — {html.escape(report.reason)}"
        )
        self.hint_label.setText(html.escape(report.hint))
        self.hint_label.setVisible(bool(report.hint))
        self.banner.setProperty("role", f"banner-{report.outcome.value}")
        self.banner.style().unpolish(self.banner)
        self.banner.style().polish(self.banner)
        while self.checks_layout.count() > 1:
            item = self.checks_layout.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        self._rows = [CheckRow(check) for check in report.checks]
        for index, row in enumerate(self._rows):
            self.checks_layout.insertWidget(index, row)
        self.report_changed.emit(report)

    def rows(self) -> list[CheckRow]:
        return list(self._rows)

    def copy_report(self) -> None:
        if self.report is not None:
            QGuiApplication.clipboard().setText(self.report.as_text())
            self.status_label.setText("Report copied")
