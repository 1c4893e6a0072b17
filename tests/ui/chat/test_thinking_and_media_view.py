"""The transcript's images, sound clips and thinking blocks, and the composer's attachment
widgets, driven through their public slots (the engine's side is in test_gemma4_chat.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, Qt, QUrl
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QLabel, QToolButton

from gemma_desktop.core.chat.attachments import AttachmentStore, prepare_file
from gemma_desktop.ui.chat.attachments import AttachmentTray, ImageViewer
from gemma_desktop.ui.chat.composer import Composer
from gemma_desktop.ui.chat.transcript import TranscriptView


@pytest.fixture
def view(qtbot: Any) -> TranscriptView:
    widget = TranscriptView()
    qtbot.addWidget(widget)
    widget.resize(700, 500)
    widget.show()
    return widget


@pytest.fixture
def picture(tmp_path: Path) -> Any:
    source = tmp_path / "photo.png"
    Image.new("RGB", (640, 480), "teal").save(source)
    return AttachmentStore(tmp_path / "attachments").put(prepare_file(source))


@pytest.fixture
def clip(tmp_path: Path) -> Any:
    import numpy as np
    import soundfile

    source = tmp_path / "question.wav"
    soundfile.write(str(source), np.zeros(16_000 * 4, np.float32), 16_000)
    return AttachmentStore(tmp_path / "attachments").put(prepare_file(source))


def visible_text(view: TranscriptView) -> str:
    """The text of the blocks that are laid out (hidden thinking is not)."""
    doc = view.document()
    lines = []
    block = doc.begin()
    while block.isValid():
        if block.isVisible():
            lines.append(block.text())
        block = block.next()
    return "\n".join(lines)


def test_thinking_streams_apart_and_closes_when_the_answer_starts(
    view: TranscriptView, qtbot: Any
) -> None:
    view.add_user_message("What is 17 * 3?")
    view.begin_answer()
    view.append_thinking("Seventeen times three: ", 5)
    view.append_thinking("ten times three is 30, seven times three is 21; 51.", 12)
    view.flush()
    (block,) = view.thinking_blocks
    assert block.streaming and block.open
    assert "seven times three" in visible_text(view)
    assert "Thinking…" in visible_text(view)
    assert block.tokens == 17
    # The answer starts: the thinking closes, its summary says how long and how much.
    view.append_delta("It is **51**.")
    view.flush()
    assert not block.streaming and not block.open
    shown = visible_text(view)
    assert "seven times three" not in shown
    assert "It is 51." in shown
    assert f"Thought for {block.seconds:.1f} s · {block.words} words" in shown
    assert block.words == 14  # the words of the two pieces of thinking
    # The thinking is above the answer, styled apart (italic, muted), not bold Markdown.
    text = view.toPlainText()
    assert text.index("seven times three") < text.index("It is 51.")
    cursor = view.document().find("seven times three")
    assert cursor.charFormat().fontItalic()
    answer = view.document().find("It is")
    assert not answer.charFormat().fontItalic()
    # Its header link opens and closes it again.
    with qtbot.waitSignal(view.thinking_toggled) as toggled:
        view.anchorClicked.emit(QUrl(f"think:{block.id}"))
    assert toggled.args == [block.id, True]
    assert "seven times three" in visible_text(view) and view.thinking_visible(block.id)
    view.anchorClicked.emit(QUrl(f"think:{block.id}"))
    assert not view.thinking_visible(block.id)
    view.end_answer("12 tokens")
    assert "12 tokens" in view.toPlainText()
    # Removing the answer (Regenerate) removes its thinking too.
    assert view.remove_last_message() == "assistant"
    assert view.thinking_blocks == [] and "seven times three" not in view.toPlainText()


def test_an_answer_from_history_shows_its_thinking_closed(view: TranscriptView) -> None:
    view.add_assistant_message("The answer.", thinking="Some reasoning here.", thinking_s=2.5)
    (block,) = view.thinking_blocks
    assert not block.open and "Thought for 2.5 s · 3 words" in visible_text(view)
    assert "Some reasoning" not in visible_text(view)
    assert "The answer." in visible_text(view)


def test_images_and_clips_in_the_transcript(
    view: TranscriptView, qtbot: Any, picture: Any, clip: Any
) -> None:
    view.add_user_message("What is this?", [picture, clip])
    doc = view.document()
    images = []
    block = doc.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            fmt = fragment.charFormat()
            if fmt.isImageFormat():
                images.append(fmt.toImageFormat())
            it += 1
        block = block.next()
    assert len(images) == 1
    thumb = images[0]
    assert (thumb.width(), thumb.height()) == (240, 180)  # 640x480 scaled to fit 240x180
    assert thumb.anchorHref().startswith("view:")
    assert "▶ Play" in view.toPlainText() and "question.wav · 0:04" in view.toPlainText()
    with qtbot.waitSignal(view.image_requested) as shown:
        view.anchorClicked.emit(QUrl(thumb.anchorHref()))
    assert shown.args == [picture]
    play_link = view.document().find("▶ Play").charFormat().anchorHref()
    with qtbot.waitSignal(view.play_requested) as played:
        view.anchorClicked.emit(QUrl(play_link))
    assert played.args == [clip]


def test_the_image_viewer_shows_the_image_large(qtbot: Any, picture: Any) -> None:
    viewer = ImageViewer(picture.path, picture.name)
    qtbot.addWidget(viewer)
    viewer.open()
    qtbot.waitUntil(viewer.isVisible)
    assert viewer.image.size().toTuple() == (640, 480)
    assert viewer.label.pixmap() is not None and not viewer.label.pixmap().isNull()
    qtbot.keyClick(viewer, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not viewer.isVisible())


def test_chips_are_named_and_removable_by_keyboard(qtbot: Any, picture: Any, clip: Any) -> None:
    tray = AttachmentTray()
    tray.can_play = True
    qtbot.addWidget(tray)
    tray.show()
    tray.add(picture, QImage(str(picture.path)).scaled(72, 54))
    tray.add(clip)
    assert tray.isVisible()
    names = sorted(b.accessibleName() for b in tray.findChildren(QToolButton))
    assert names == [
        "Play question.wav",
        "Remove photo.png",
        "Remove question.wav",
        "View photo.png",
    ]
    assert all(b.focusPolicy() & Qt.FocusPolicy.TabFocus for b in tray.findChildren(QToolButton))
    captions = " ".join(label.text() for label in tray.chips[1].findChildren(QLabel))
    assert "question.wav" in captions and "0:04" in captions
    chip = tray.chips[0]
    chip.remove_button.setFocus()
    with qtbot.waitSignal(tray.removed) as removed:
        qtbot.keyClick(chip.remove_button, Qt.Key.Key_Delete)
    assert removed.args == [picture]
    assert tray.attachments == [clip]
    assert tray.take_all() == [clip] and not tray.isVisible()


def test_composer_takes_pictures_and_files_as_attachments(qtbot: Any, tmp_path: Path) -> None:
    composer = Composer()
    qtbot.addWidget(composer)
    composer.show()
    image = QImage(32, 24, QImage.Format.Format_RGB32)
    image.fill(Qt.GlobalColor.red)
    data = QMimeData()
    data.setImageData(image)
    assert composer.canInsertFromMimeData(data)
    with qtbot.waitSignal(composer.image_received) as got:
        composer.insertFromMimeData(data)
    assert got.args[0].size().toTuple() == (32, 24)
    files = QMimeData()
    files.setUrls([QUrl.fromLocalFile(str(tmp_path / "a.wav"))])
    with qtbot.waitSignal(composer.files_received) as dropped:
        composer.insertFromMimeData(files)
    assert dropped.args == [[tmp_path / "a.wav"]]
    assert composer.toPlainText() == ""  # no path pasted as text
