"""The message box: Enter sends, Shift+Enter adds a line, Escape stops; pictures and files
pasted or dropped into it become attachments, text is pasted as plain text."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QMimeData, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent, QImage, QKeyEvent
from PySide6.QtWidgets import QPlainTextEdit, QWidget


def files_in(source: QMimeData) -> list[Path]:
    """The local files a clipboard or a drop carries (file managers put them as URLs)."""
    if not source.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in source.urls() if url.isLocalFile()]


def image_in(source: QMimeData) -> QImage | None:
    """A picture a clipboard or a drop carries as image data (a screenshot), else ``None``."""
    if not source.hasImage():
        return None
    data = source.imageData()
    image = data if isinstance(data, QImage) else QImage(data) if data is not None else None
    return image if image is not None and not image.isNull() else None


def carries_attachment(source: QMimeData) -> bool:
    """Whether a clipboard or a drop carries files or a picture (attachments, not text)."""
    return bool(files_in(source)) or image_in(source) is not None


class Composer(QPlainTextEdit):
    """The message field: Enter sends, Shift+Enter adds a line, Escape stops.

    Ctrl+V of a picture (a screenshot on the clipboard) or of copied files, and
    files dropped on it, are announced as attachments instead of pasted as text.

    Signals:
        submitted(): Enter was pressed.
        stop_requested(): Escape was pressed.
        files_received(list[Path]): files were pasted or dropped.
        image_received(QImage): a picture was pasted or dropped as image data.
    """

    submitted = Signal()
    stop_requested = Signal()
    files_received = Signal(list)
    image_received = Signal(QImage)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("composer")
        self.setAccessibleName("Message")
        self.setPlaceholderText(
            "Message Gemma — Enter sends, Shift+Enter adds a line; paste or drop images and audio"
        )
        self.setTabChangesFocus(True)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        #: Whether the drag over the box carries an attachment (decided once, on entering).
        self._dragging_attachment = False

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self.insertPlainText("\n")
            else:
                self.submitted.emit()
            event.accept()
            return
        if key == Qt.Key.Key_Escape:
            self.stop_requested.emit()
            event.accept()
            return
        super().keyPressEvent(event)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return carries_attachment(source) or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        # Files and pictures become attachments; text is pasted as plain text in one edit
        # (rich text of a large paste is slow to convert and is not wanted in a prompt).
        files = files_in(source)
        if files:
            self.files_received.emit(files)
            return
        image = image_in(source)
        if image is not None:
            self.image_received.emit(image)
            return
        if source.hasText():
            self.textCursor().insertText(source.text())
        else:
            super().insertFromMimeData(source)

    # A drop of files or a picture is taken whole (QPlainTextEdit would paste a path).
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        self._dragging_attachment = carries_attachment(event.mimeData())
        if self._dragging_attachment:
            event.acceptProposedAction()
            return
        super().dragEnterEvent(event)

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        # The drag's data do not change while it moves: no decoding per mouse move.
        if self._dragging_attachment:
            event.acceptProposedAction()
            return
        super().dragMoveEvent(event)

    def dropEvent(self, event: QDropEvent) -> None:
        if self._dragging_attachment:  # (a drop ends the drag that entered)
            self._dragging_attachment = False
            self.insertFromMimeData(event.mimeData())
            event.acceptProposedAction()
            return
        super().dropEvent(event)
