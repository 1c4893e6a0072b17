"""A model that takes no attachments, in the real window (the session's shared engine on the
bundled Gemma 3 270M, text only): Attach, Record and Think are off and say why, and a picture
pasted anyway is refused in plain words, with nothing attached and the draft kept."""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage

from gemma_desktop.core.engine.protocol import EngineState

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("fail_keyring")]


def test_attachments_on_a_text_only_model(
    make_app: Any, shared_engine: Any, qtbot: Any, arun: Any
) -> None:
    app = make_app()
    chat = app.window.chat
    # Before any engine runs, the controls are off too, and say what to do.
    assert not chat.attach_button.isEnabled()
    assert "Start the engine" in chat.attach_button.toolTip()
    app.host.adopt(shared_engine)
    why = shared_engine.abilities.why_not
    assert why  # the engine says why, in its own words
    assert not chat.attach_button.isEnabled() and chat.attach_button.toolTip() == why
    assert not chat.record_button.isEnabled() and chat.record_button.toolTip() == why
    assert not chat.think_toggle.isEnabled() and not chat.options().thinking
    assert chat.attach_button.accessibleName() and chat.think_toggle.accessibleName()

    chat.composer.setPlainText("Once upon a time")
    image = QImage(64, 48, QImage.Format.Format_RGB32)
    image.fill(Qt.GlobalColor.darkCyan)
    QGuiApplication.clipboard().setImage(image)
    chat.composer.setFocus()
    qtbot.keyClick(chat.composer, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: "cannot take images" in chat.message_label.text(), timeout=10_000)
    assert why in chat.message_label.text()
    assert chat.draft_attachments == [] and chat.composer.toPlainText() == "Once upon a time"
    assert chat.conversation == []
    assert shared_engine.status.state is EngineState.READY
