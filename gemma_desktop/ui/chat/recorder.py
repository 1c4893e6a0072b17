"""The recording bar: a question recorded from the microphone, with its level, time and limit.

:class:`RecorderBar` drives one
:class:`~gemma_desktop.core.audio_capture.Recording` (made by the window's
:class:`~gemma_desktop.core.audio_capture.AudioDevices`): a timer polls it
20 times a second for the level meter and the elapsed time, against the
stated limit (Gemma 4 hears 30 s of a clip). Stop (Enter) keeps the
recording, Cancel (Escape) throws it away; at the limit it stops by itself
and says so. A microphone that cannot open or that dies is reported in plain
words, never as a traceback.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QWidget,
)

from gemma_desktop.core.audio_capture import AudioDevices, MicrophoneError, Recording
from gemma_desktop.core.chat.attachments import format_duration
from gemma_desktop.core.media import MAX_CLIP_S
from gemma_desktop.ui import theme

#: How often the recording is polled (the level meter's refresh).
POLL_MS = 50


class RecorderBar(QFrame):
    """Recording in progress: level, elapsed time and limit, Stop and Cancel.

    Signals:
        finished(object, bool): the samples (16 kHz mono float32) and whether the
            limit stopped it.
        cancelled()
        failed(str): the microphone could not record (reason and hint).
    """

    finished = Signal(object, bool)
    cancelled = Signal()
    failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("recorderBar")
        self.setProperty("role", "recording")
        self.setAccessibleName("Recording")
        self._recording: Recording | None = None
        self.limit_s = MAX_CLIP_S
        c = theme.colors()
        self.setStyleSheet(
            f"QFrame#recorderBar {{ background: {c.base}; border: 1px solid {c.error};"
            " border-radius: 8px; }"
        )

        self.dot = QLabel()
        self.dot.setPixmap(theme.icon("record").pixmap(16, 16))
        self.title = QLabel("<b>Recording</b>")
        self.time_label = QLabel(f"0:00 / {format_duration(MAX_CLIP_S)}")
        self.time_label.setObjectName("recordingTime")
        self.time_label.setAccessibleName("Recording time")
        self.level = QProgressBar()
        self.level.setObjectName("recordingLevel")
        self.level.setAccessibleName("Microphone level")
        self.level.setRange(0, 100)
        self.level.setTextVisible(False)
        self.level.setFixedHeight(10)
        self.level.setMinimumWidth(140)
        self.stop_button = QPushButton(theme.icon("stop"), "Stop")
        self.stop_button.setObjectName("stopRecording")
        self.stop_button.setAccessibleName("Stop recording and attach it")
        self.stop_button.setToolTip("Stop and attach the recording (Enter)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelRecording")
        self.cancel_button.setAccessibleName("Cancel recording")
        self.cancel_button.setToolTip("Throw the recording away (Escape)")
        self.stop_button.setDefault(True)

        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.addWidget(self.dot)
        layout.addWidget(self.title)
        layout.addWidget(self.time_label)
        layout.addWidget(self.level, 1)
        layout.addWidget(self.stop_button)
        layout.addWidget(self.cancel_button)

        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.poll)
        self.stop_button.clicked.connect(self.stop)
        self.cancel_button.clicked.connect(self.cancel)
        self.setVisible(False)

    @property
    def recording(self) -> bool:
        return self._recording is not None

    def start(self, audio: AudioDevices, limit_s: float) -> bool:
        """Open the microphone and show the bar; ``False`` (and :attr:`failed`) if it cannot."""
        if self._recording is not None:
            return True
        self.limit_s = limit_s
        recording = audio.recording(limit_s)
        try:
            recording.start()
        except MicrophoneError as exc:
            self.failed.emit(f"{exc.reason} {exc.hint}".strip())
            return False
        self._recording = recording
        self.level.setValue(0)
        self._show_time(0.0)
        self.setVisible(True)
        self.stop_button.setFocus()
        self._timer.start()
        return True

    def _show_time(self, elapsed: float) -> None:
        self.time_label.setText(f"{format_duration(elapsed)} / {format_duration(self.limit_s)}")

    def poll(self) -> None:
        recording = self._recording
        if recording is None:
            return
        try:
            level = recording.poll()
        except MicrophoneError as exc:
            self._end()
            self.failed.emit(f"{exc.reason} {exc.hint}".strip())
            return
        # Speech peaks at an RMS of about 0.2: scale so it fills most of the meter.
        self.level.setValue(min(100, round(level.rms * 400)))
        self._show_time(level.elapsed_s)
        if level.limit_reached:
            self._deliver(limit=True)

    def stop(self) -> None:
        """Keep what was recorded so far."""
        if self._recording is not None:
            self._deliver(limit=False)

    def _deliver(self, *, limit: bool) -> None:
        recording = self._recording
        assert recording is not None
        try:
            samples: Any = recording.stop()
        except MicrophoneError as exc:
            self._end()
            self.failed.emit(f"{exc.reason} {exc.hint}".strip())
            return
        self._end()
        self.finished.emit(samples, limit)

    def cancel(self) -> None:
        """Throw the recording away."""
        if self._recording is not None:
            self._recording.cancel()
            self._end()
            self.cancelled.emit()

    def _end(self) -> None:
        self._timer.stop()
        self._recording = None
        self.setVisible(False)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape:
            self.cancel()
            event.accept()
            return
        super().keyPressEvent(event)
