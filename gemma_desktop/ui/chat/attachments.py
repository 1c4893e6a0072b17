"""The composer's attachments: a removable chip per image or sound clip, and the large view.

:class:`AttachmentTray` sits above the message box and shows one
:class:`AttachmentChip` per attached file: an image's thumbnail (press it to
see the image large, in :class:`ImageViewer`), a clip's length and a Play
button where the window has sound. Each chip's buttons have accessible names
and take keyboard focus; Delete or Backspace on a focused chip removes it.

Thumbnails are decoded with ``QImageReader`` at their small size, on a worker
thread (a ``QImage``, unlike a ``QPixmap``, may be made off the UI thread).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImage, QImageReader, QKeyEvent, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop.core.chat.attachments import StoredAttachment, format_duration
from gemma_desktop.ui import theme

#: The size of a chip's thumbnail.
CHIP_THUMB = QSize(72, 54)


def load_thumbnail(path: Path, size: QSize) -> QImage:
    """The image at ``path`` scaled to fit ``size``, decoded at that size (any thread).

    An empty ``QImage`` when Qt cannot read it (the engine's decoder may still can).
    """
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)  # EXIF orientation, as the engines send it
    full = reader.size()
    if full.isValid() and (full.width() > size.width() or full.height() > size.height()):
        reader.setScaledSize(full.scaled(size, Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    if image.isNull():
        return QImage()
    if image.width() > size.width() or image.height() > size.height():
        image = image.scaled(
            size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
        )
    return image


class AttachmentChip(QFrame):
    """One attached file: what it is, and the buttons to view, play or remove it.

    Signals:
        remove_requested(StoredAttachment)
        view_requested(StoredAttachment): an image's thumbnail was pressed.
        play_requested(StoredAttachment): a clip's Play button was pressed.
    """

    remove_requested = Signal(object)
    view_requested = Signal(object)
    play_requested = Signal(object)

    def __init__(
        self,
        attachment: StoredAttachment,
        *,
        thumbnail: QImage | None = None,
        can_play: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.attachment = attachment
        self.setObjectName("attachmentChip")
        self.setProperty("role", "chip")
        self.setAccessibleName(f"Attached {'image' if attachment.kind == 'image' else 'audio'}")
        self.setAccessibleDescription(attachment.label)
        self.setToolTip(attachment.label)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        c = theme.colors()
        self.setStyleSheet(
            f"QFrame#attachmentChip {{ background: {c.alt_base}; border: 1px solid {c.border};"
            " border-radius: 8px; }"
        )
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 4, 4, 4)
        layout.setSpacing(6)

        self.view_button: QToolButton | None = None
        self.play_button: QToolButton | None = None
        if attachment.kind == "image":
            button = QToolButton()
            button.setObjectName("chipThumbnail")
            button.setAccessibleName(f"View {attachment.name}")
            button.setToolTip(f"{attachment.label}: press to view it large")
            button.setIconSize(CHIP_THUMB)
            button.setAutoRaise(True)
            if thumbnail is not None and not thumbnail.isNull():
                button.setIcon(QPixmap.fromImage(thumbnail))
            else:
                button.setText("Image")
            button.clicked.connect(lambda: self.view_requested.emit(self.attachment))
            self.view_button = button
            layout.addWidget(button)
            caption = QLabel(_short(attachment.name))
        else:
            icon = QLabel()
            icon.setPixmap(theme.icon("audio").pixmap(QSize(22, 22)))
            layout.addWidget(icon)
            length = format_duration(attachment.duration_s or 0.0)
            caption = QLabel(f"{_short(attachment.name)}\n{length}")
            if can_play:
                play = QToolButton()
                play.setObjectName("chipPlay")
                play.setIcon(theme.icon("play"))
                play.setAccessibleName(f"Play {attachment.name}")
                play.setToolTip(f"Play {attachment.name} ({length})")
                play.setAutoRaise(True)
                play.clicked.connect(lambda: self.play_requested.emit(self.attachment))
                self.play_button = play
        caption.setProperty("role", "muted")
        layout.addWidget(caption)
        if self.play_button is not None:
            layout.addWidget(self.play_button)
        remove = QToolButton()
        remove.setObjectName("chipRemove")
        remove.setIcon(theme.icon("remove"))
        remove.setAccessibleName(f"Remove {attachment.name}")
        remove.setToolTip(f"Remove {attachment.name} from the message")
        remove.setAutoRaise(True)
        remove.clicked.connect(lambda: self.remove_requested.emit(self.attachment))
        self.remove_button = remove
        layout.addWidget(remove)
        for focusable in (self.view_button, self.play_button, remove):
            if focusable is not None:
                focusable.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
                focusable.installEventFilter(self)

    def eventFilter(self, watched: object, event: object) -> bool:
        if (
            isinstance(event, QKeyEvent)
            and event.type() == QKeyEvent.Type.KeyPress
            and event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace)
        ):
            self.remove_requested.emit(self.attachment)
            return True
        return False


def _short(name: str, limit: int = 22) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


class AttachmentTray(QWidget):
    """The chips of the attachments the next message carries (hidden when there are none).

    Signals:
        changed(): an attachment was added or removed.
        removed(StoredAttachment): the user removed this one.
        view_requested(StoredAttachment), play_requested(StoredAttachment)
    """

    changed = Signal()
    view_requested = Signal(object)
    play_requested = Signal(object)
    removed = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("attachmentTray")
        self.setAccessibleName("Attachments")
        self._chips: list[AttachmentChip] = []
        self.can_play = False
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 4)
        self._layout.setSpacing(6)
        self._layout.addStretch(1)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.setVisible(False)

    @property
    def attachments(self) -> list[StoredAttachment]:
        return [chip.attachment for chip in self._chips]

    @property
    def chips(self) -> list[AttachmentChip]:
        return list(self._chips)

    def add(self, attachment: StoredAttachment, thumbnail: QImage | None = None) -> AttachmentChip:
        chip = AttachmentChip(attachment, thumbnail=thumbnail, can_play=self.can_play)
        chip.remove_requested.connect(self.remove)
        chip.view_requested.connect(self.view_requested.emit)
        chip.play_requested.connect(self.play_requested.emit)
        self._layout.insertWidget(len(self._chips), chip)
        self._chips.append(chip)
        self.setVisible(True)
        self.changed.emit()
        return chip

    def remove(self, attachment: StoredAttachment) -> None:
        for index, chip in enumerate(self._chips):
            if chip.attachment is attachment:
                del self._chips[index]
                had_focus = chip.isAncestorOf(self.focusWidget()) if self.focusWidget() else False
                chip.hide()
                chip.deleteLater()
                self.removed.emit(attachment)
                if had_focus:
                    self._focus_after(index)
                break
        self.setVisible(bool(self._chips))
        self.changed.emit()

    def _focus_after(self, index: int) -> None:
        """Keyboard users keep their place: the next chip's Remove button takes the focus
        (with none left, the panel gives it to the message box)."""
        if self._chips:
            self._chips[min(index, len(self._chips) - 1)].remove_button.setFocus()

    def take_all(self) -> list[StoredAttachment]:
        """Empty the tray (the message was sent); returns what it held."""
        taken = self.attachments
        for chip in self._chips:
            chip.hide()
            chip.deleteLater()
        self._chips.clear()
        self.setVisible(False)
        if taken:
            self.changed.emit()
        return taken


class ImageViewer(QDialog):
    """An attached image, large: fitted to the window (scrolls when it is bigger).

    Opened with ``open()`` (never ``exec()``: the app's event loop runs coroutines).
    Escape or Close closes it.
    """

    def __init__(self, path: Path, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("imageViewer")
        self.setWindowTitle(title)
        self.setAccessibleName(f"Image {title}")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.image = QImage(str(path))
        self.label = QLabel()
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setAccessibleName(title)
        if self.image.isNull():
            self.label.setText(f"{title} cannot be shown here.")
        area = QScrollArea()
        area.setWidgetResizable(True)
        area.setWidget(self.label)
        area.setFrameShape(QFrame.Shape.NoFrame)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(area, 1)
        info = QLabel(
            f"{self.image.width()}×{self.image.height()} pixels" if not self.image.isNull() else ""
        )
        info.setProperty("role", "muted")
        bottom = QHBoxLayout()
        bottom.addWidget(info, 1)
        bottom.addWidget(buttons)
        layout.addLayout(bottom)
        screen = self.screen().availableGeometry() if self.screen() else None
        limit = QSize(1100, 800) if screen is None else screen.size() * 0.85
        if not self.image.isNull():
            wanted = self.image.size().boundedTo(limit)
            self.resize(max(360, wanted.width() + 40), max(260, wanted.height() + 80))
        else:
            self.resize(420, 200)

    def resizeEvent(self, event: object) -> None:
        super().resizeEvent(event)  # type: ignore[arg-type]
        if self.image.isNull():
            return
        room = self.label.size()
        if self.image.width() > room.width() or self.image.height() > room.height():
            shown = self.image.scaled(
                room, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
        else:
            shown = self.image
        self.label.setPixmap(QPixmap.fromImage(shown))
