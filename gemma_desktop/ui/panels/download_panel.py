"""The model download panel, used by the main window and the first-run wizard.

It receives a :class:`~gemma_desktop.core.models.downloads.DownloadManager`; it never
creates one. The download runs on a worker thread (:func:`~gemma_desktop.ui.tasks.run_blocking`);
its progress reaches the widgets only through this panel's (queued) signal.

Signals:
    finished(bool): a run ended; ``True`` when the model is in the cache and
        verified, ``False`` after an error or a cancel.
"""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.models.downloads import (
    DownloadCancelledError,
    DownloadError,
    DownloadManager,
    DownloadProgress,
    DownloadResult,
    format_bytes,
    format_eta,
)
from gemma_desktop.ui.tasks import run_blocking, spawn

_BAR_STEPS = 1000


class DownloadPanel(QWidget):
    """Progress, rate, ETA, Cancel and Resume/Retry for one variant's download."""

    finished = Signal(bool)
    # Carries the worker thread's progress to the GUI thread (a queued connection).
    _progressed = Signal(object)

    def __init__(
        self,
        manager: DownloadManager,
        variant_id: str,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._manager = manager
        self._variant_id = variant_id
        self._cancel = threading.Event()
        self._running = False
        self.result: DownloadResult | None = None
        self.error: GemmaDesktopError | None = None

        self.variant_label = QLabel()
        self.variant_label.setObjectName("variantLabel")
        self.status_label = QLabel("Not downloaded yet.")
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, _BAR_STEPS)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.bytes_label = QLabel("")
        self.file_label = QLabel("")
        self.file_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label = QLabel("")
        self.error_label.setObjectName("errorLabel")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #b3261e;")
        self.hint_label = QLabel("")
        self.hint_label.setObjectName("hintLabel")
        self.hint_label.setWordWrap(True)
        self.hint_label.setOpenExternalLinks(True)
        self.hint_label.setTextFormat(Qt.TextFormat.RichText)
        self.action_button = QPushButton("Download")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.action_button)
        layout = QVBoxLayout(self)
        for widget in (
            self.variant_label,
            self.status_label,
            self.progress_bar,
            self.bytes_label,
            self.file_label,
            self.error_label,
            self.hint_label,
        ):
            layout.addWidget(widget)
        layout.addLayout(buttons)
        self._show_error(None)

        self.action_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self._progressed.connect(self._on_progress)
        self.set_variant(variant_id)

    # --- public API -----------------------------------------------------------------

    @property
    def variant_id(self) -> str:
        return self._variant_id

    @property
    def is_running(self) -> bool:
        return self._running

    def set_variant(self, variant_id: str) -> None:
        """Show another variant (only while no download runs)."""
        if self.is_running:
            raise RuntimeError("cannot change the variant while a download runs")
        self._variant_id = variant_id
        try:
            variant = self._manager.catalog.get(variant_id)
            self.variant_label.setText(f"<b>{variant.label}</b> — {variant.id}")
        except GemmaDesktopError as exc:
            self.variant_label.setText(variant_id)
            self._show_error(exc)

    @Slot()
    def start(self) -> None:
        """Start (or resume) the download on a worker thread."""
        if self.is_running:
            return
        self._cancel = threading.Event()
        self._running = True
        self.result, self.error = None, None
        self._show_error(None)
        self.status_label.setText("Connecting to the Hugging Face Hub…")
        self.action_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        spawn(self._download(self._cancel, self._variant_id), "The download")

    async def _download(self, cancel: threading.Event, variant_id: str) -> None:
        result: DownloadResult | None = None
        error: BaseException | None = None
        try:
            result = await run_blocking(
                lambda: self._manager.download(
                    variant_id, on_progress=self._progressed.emit, cancel=cancel
                )
            )
        except Exception as exc:  # shown in the panel
            error = exc
        self._on_ended(result, error)

    @Slot()
    def cancel(self) -> None:
        """Stop the running download; finished files stay for Resume."""
        if not self.is_running:
            return
        self._cancel.set()
        self.cancel_button.setEnabled(False)
        self.status_label.setText("Cancelling…")

    def shutdown(self) -> None:
        """Cancel the running download (the wizard moves on, the window closes)."""
        self._cancel.set()

    # --- slots on the GUI thread ---------------------------------------------------------

    @Slot(object)
    def _on_progress(self, p: DownloadProgress) -> None:
        if self._cancel.is_set():
            return
        self.progress_bar.setValue(int(p.fraction * _BAR_STEPS))
        if p.total_bytes:
            rate = f"{format_bytes(p.rate_bps)}/s" if p.rate_bps else "…"
            self.bytes_label.setText(
                f"{format_bytes(p.done_bytes)} of {format_bytes(p.total_bytes)} · {rate} · "
                f"{format_eta(p.eta_s)} left"
            )
        if p.file:
            file_rate = f" · {format_bytes(p.file_rate_bps)}/s" if p.file_rate_bps else ""
            self.file_label.setText(
                f"{p.file} — {format_bytes(p.file_done)} of {format_bytes(p.file_bytes)}"
                f"{file_rate} · file {min(p.files_done + 1, p.files_total)} of {p.files_total}"
            )
        status = {
            "planning": "Listing the model's files…",
            "downloading": "Downloading…",
            "verifying": "Checking files against the Hub's hashes…",
            "retrying": "Retrying…",
            "finishing": "Finishing…",
            "done": "Downloaded.",
        }[p.phase]
        self.status_label.setText(p.message or status)

    def _on_ended(self, result: DownloadResult | None, error: BaseException | None) -> None:
        self._running = False
        self.cancel_button.setEnabled(False)
        self.action_button.setEnabled(True)
        if result is not None:
            self.result = result
            self.progress_bar.setValue(_BAR_STEPS)
            self.status_label.setText(
                "Ready: found in the cache."
                if result.offline
                else "Ready: downloaded and verified."
            )
            self.action_button.setText("Check again")
            self.finished.emit(True)
            return
        if isinstance(error, DownloadCancelledError):
            self.status_label.setText("Cancelled. Finished files are kept.")
            self.action_button.setText("Resume")
            self.error = error
        elif isinstance(error, GemmaDesktopError):
            self.error = error
            self.status_label.setText("Download failed.")
            resumable = isinstance(error, DownloadError) and error.retryable
            self.action_button.setText("Resume" if resumable else "Retry")
            self._show_error(error)
        else:
            # Unexpected: leave it to the app's crash handler, but keep the panel usable.
            self.status_label.setText("Download failed unexpectedly.")
            self.action_button.setText("Retry")
            self.finished.emit(False)
            if error is not None:
                raise error
            return
        self.finished.emit(False)

    def _show_error(self, error: GemmaDesktopError | None) -> None:
        self.error_label.setVisible(error is not None)
        self.hint_label.setVisible(bool(error and error.hint))
        if error is None:
            self.error_label.clear()
            self.hint_label.clear()
            return
        self.error_label.setText(error.reason)
        self.hint_label.setText(_linkify(error.hint))

    def closeEvent(self, event: Any) -> None:
        self._cancel.set()
        super().closeEvent(event)


def _linkify(text: str) -> str:
    """Escape ``text`` for a rich-text label and make its https URLs clickable."""
    import html
    import re

    escaped = html.escape(text)
    return re.sub(
        r"(https://[^\s<,)]+[^\s<,.)])",
        r'<a href="\1">\1</a>',
        escaped,
    )
