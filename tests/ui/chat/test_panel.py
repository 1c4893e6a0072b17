"""The chat view, driven through its public slots with text deltas."""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import QMimeData, Qt, QUrl
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from gemma_desktop.core.engine.protocol import EngineState, EngineStatus
from gemma_desktop.ui.chat.composer import Composer
from gemma_desktop.ui.chat.panel import ChatPanel
from gemma_desktop.ui.chat.transcript import PREVIEW_CHARS, TranscriptView
from gemma_desktop.ui.engine_host import EngineHost

ANSWER = "## Plan\n\nSome *text* here.\n\n- first\n- second\n\n```python\nprint('hi')\n```\n\nDone."


def stream(view: TranscriptView, text: str, size: int = 3) -> None:
    for i in range(0, len(text), size):
        view.append_delta(text[i : i + size])


@pytest.fixture
def view(qtbot: Any) -> TranscriptView:
    widget = TranscriptView()
    qtbot.addWidget(widget)
    widget.resize(700, 500)
    widget.show()
    return widget


def test_deltas_appear_after_a_refresh(view: TranscriptView, qtbot: Any) -> None:
    view.add_user_message("Plan something")
    view.begin_answer()
    stream(view, "Hello **wor")
    assert "Hello" not in view.toPlainText()  # queued, not rendered per token
    qtbot.waitUntil(lambda: "Hello" in view.toPlainText(), timeout=2000)
    assert view.streaming


def test_markdown_is_rendered_incrementally(view: TranscriptView) -> None:
    view.begin_answer()
    stream(view, ANSWER)
    view.flush()
    refreshes = view.refresh_count
    view.end_answer("12 tokens")
    text = view.toPlainText()
    for piece in (
        "Plan",
        "Some text here.",
        "first",
        "second",
        "print('hi')",
        "Done.",
        "12 tokens",
    ):
        assert piece in text
    assert "##" not in text and "```" not in text and "*text*" not in text
    assert view.refresh_count == refreshes + 1
    html = view.toHtml()
    assert "font-weight" in html  # the heading
    assert not view.streaming


def test_copy_link_copies_the_code(view: TranscriptView, qtbot: Any) -> None:
    view.begin_answer()
    stream(view, ANSWER)
    view.end_answer()
    code_ids = [i for i in range(1, 10) if view.code_block(i) is not None]
    assert len(code_ids) == 1
    with qtbot.waitSignal(view.code_copied) as copied:
        view.anchorClicked.emit(QUrl(f"copy:{code_ids[0]}"))
    assert copied.args == ["print('hi')\n"]
    assert QGuiApplication.clipboard().text() == "print('hi')\n"


def test_remove_last_message_removes_answer_and_notice(view: TranscriptView) -> None:
    view.add_user_message("first question")
    view.add_assistant_message("first answer")
    view.add_user_message("second question")
    view.begin_answer()
    stream(view, "second answer")
    view.end_answer("figures")
    assert view.remove_last_message() == "assistant"
    text = view.toPlainText()
    assert "second answer" not in text and "figures" not in text
    assert "second question" in text and "first answer" in text
    assert view.remove_last_message() == "user"
    assert view.toPlainText().rstrip().endswith("first answer")


def test_huge_user_message_is_shown_shortened(view: TranscriptView) -> None:
    text = "x" * (PREVIEW_CHARS * 3)
    view.add_user_message(text)
    shown = view.toPlainText()
    assert len(shown) < PREVIEW_CHARS + 500
    assert f"{len(text):,} characters" in shown


def test_composer_keys(qtbot: Any) -> None:
    composer = Composer()
    qtbot.addWidget(composer)
    composer.show()
    qtbot.keyClicks(composer, "line one")
    qtbot.keyClick(composer, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(composer, "line two")
    assert composer.toPlainText() == "line one\nline two"
    with qtbot.waitSignal(composer.submitted):
        qtbot.keyClick(composer, Qt.Key.Key_Return)
    with qtbot.waitSignal(composer.stop_requested):
        qtbot.keyClick(composer, Qt.Key.Key_Escape)
    assert composer.toPlainText() == "line one\nline two"


def test_megabyte_paste_is_taken_as_plain_text(qtbot: Any) -> None:
    composer = Composer()
    qtbot.addWidget(composer)
    composer.show()
    data = QMimeData()
    payload = ("lorem ipsum dolor sit amet " * 40 + "\n") * 970  # about 1 MB
    data.setText(payload)
    data.setHtml("<b>ignored rich text</b>")
    composer.insertFromMimeData(data)
    assert len(composer.toPlainText()) == len(payload)
    assert len(payload) > 1_000_000
    QApplication.processEvents()  # the window keeps handling events


def test_panel_without_a_running_engine(qtbot: Any, qloop: Any) -> None:
    host = EngineHost(None, "bundled/gemma-3-270m")
    panel = ChatPanel(host)
    qtbot.addWidget(panel)
    panel.show()
    panel.composer.setPlainText("hello")
    assert not panel.send_button.isEnabled()
    panel.send()
    assert "not running" in panel.message_label.text()
    assert panel.composer.toPlainText() == "hello"  # nothing lost
    assert panel.conversation == []
    host.status_changed.emit(EngineStatus(EngineState.READY, model_id="bundled/gemma-3-270m"))
    assert not panel.send_button.isEnabled()  # READY but no engine object: still nothing to send to


def test_controls_have_accessible_names(qtbot: Any, qloop: Any) -> None:
    from PySide6.QtWidgets import QAbstractButton, QAbstractSpinBox, QPlainTextEdit

    panel = ChatPanel(EngineHost(None, "bundled/gemma-3-270m"))
    qtbot.addWidget(panel)
    controls = [
        w
        for cls in (QAbstractButton, QAbstractSpinBox, QPlainTextEdit)
        for w in panel.findChildren(cls)
    ]
    assert len(controls) >= 10
    unnamed = [w for w in controls if not w.accessibleName()]
    assert unnamed == []


def test_new_controls_are_named_and_off_without_an_engine(qtbot: Any, qloop: Any) -> None:
    panel = ChatPanel(EngineHost(None, "bundled/gemma-3-270m"))
    qtbot.addWidget(panel)
    panel.show()
    for button, name in (
        (panel.attach_button, "Attach image or audio"),
        (panel.record_button, "Record from the microphone"),
        (panel.think_toggle, "Think before answering"),
    ):
        assert button.accessibleName() == name
        assert not button.isEnabled() and "Start the engine" in button.toolTip()
        assert button.focusPolicy() & Qt.FocusPolicy.TabFocus
    assert panel.recorder_bar.stop_button.accessibleName() == "Stop recording and attach it"
    assert panel.recorder_bar.cancel_button.accessibleName() == "Cancel recording"
    assert not panel.recorder_bar.isVisible() and not panel.tray.isVisible()
    assert not panel.options().thinking
