"""The real window driving the real engine (the session's shared vLLM engine on the
bundled Gemma 3 270M): tokens stream into the view, Stop aborts, Regenerate answers
again, a too-long prompt is refused in plain words, and a whole session leaves no
token in any file the app wrote."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from gemma_desktop.core.engine.protocol import EngineState
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID
from gemma_desktop.core.settings import SettingsStore
from tests.fixtures.fakehub import VALID_TOKEN

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("fail_keyring")]


@pytest.fixture
def window_app(make_app: Any, shared_engine: Any) -> Any:
    app = make_app()
    app.host.adopt(shared_engine)  # not owned: closing the window leaves it running
    assert app.host.is_running
    yield app
    assert shared_engine.status.state is EngineState.READY


def answer_count(chat: Any) -> int:
    return sum(1 for m in chat.conversation if m.role == "assistant")


def test_type_stream_stop_regenerate_edit(window_app: Any, qtbot: Any) -> None:
    chat = window_app.window.chat
    host = window_app.host
    chat.temperature.setValue(0.9)
    chat.max_tokens.setValue(400)
    qtbot.keyClicks(chat.composer, "Once upon a time, in a small village by the sea,")
    assert chat.send_button.isEnabled()
    qtbot.keyClick(chat.composer, Qt.Key.Key_Return)
    assert chat.composer.toPlainText() == ""
    assert "Once upon a time, in a small village by the sea," in chat.transcript.toPlainText()

    # Tokens from the model appear while it is still generating.
    before = len(chat.transcript.toPlainText())
    qtbot.waitUntil(lambda: len(chat.transcript.toPlainText()) > before + 40, timeout=180_000)
    assert chat.streaming
    assert host.status.state is EngineState.GENERATING
    assert chat.stop_button.isEnabled() and not chat.send_button.isEnabled()
    qtbot.waitUntil(lambda: "tok/s" in chat.stats_label.text(), timeout=10_000)

    # Escape stops: the request is aborted inside the engine.
    qtbot.keyClick(chat.composer, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not chat.streaming, timeout=60_000)
    stats = chat.last_stats
    assert stats is not None and stats.finish_reason == "abort"
    assert 0 < stats.completion_tokens < 400
    stopped_text = chat.transcript.toPlainText()
    qtbot.wait(1500)
    assert chat.transcript.toPlainText() == stopped_text  # nothing more arrives
    qtbot.waitUntil(lambda: host.status.state is EngineState.READY, timeout=10_000)
    first = chat.conversation[-1]
    assert first.role == "assistant" and first.content.strip()
    assert "stopped" in stopped_text

    # Regenerate replaces the answer with a new one.
    chat.max_tokens.setValue(24)
    chat.regenerate_button.click()
    qtbot.waitUntil(
        lambda: not chat.streaming and chat.last_stats.request_id != stats.request_id,
        timeout=180_000,
    )
    second = chat.last_stats
    assert second.finish_reason in ("stop", "length"), second
    assert second.time_to_first_token_s is not None
    assert [m.role for m in chat.conversation] == ["user", "assistant"]
    new_answer = chat.conversation[-1].content
    assert new_answer.strip() and new_answer != first.content
    assert "first token" in chat.transcript.toPlainText()

    # Edit the last message and send it again.
    chat.edit_button.click()
    assert chat.composer.toPlainText() == "Once upon a time, in a small village by the sea,"
    assert chat.conversation == []
    chat.max_tokens.setValue(8)
    qtbot.keyClicks(chat.composer, " there lived")
    qtbot.keyClick(chat.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: answer_count(chat) == 1 and not chat.streaming, timeout=180_000)
    assert chat.conversation[0].content.endswith("there lived")
    assert chat.transcript.toPlainText().count("Once upon a time") == 1


def test_prompt_longer_than_the_context_is_refused(window_app: Any, qtbot: Any) -> None:
    chat = window_app.window.chat
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 600  # ~6000 tokens > 2048
    chat.composer.setPlainText(long_prompt)
    chat.send()
    qtbot.waitUntil(lambda: not chat.streaming, timeout=60_000)
    message = chat.message_label.text()
    assert (message and "2048" in message) or "context" in message.lower() or "long" in message
    assert chat.conversation == []
    assert chat.composer.toPlainText() == long_prompt  # given back to be shortened
    assert window_app.host.status.state is EngineState.READY


def test_switching_model_while_running_asks_first(window_app: Any, qtbot: Any) -> None:
    picker = window_app.window.picker
    picker.select("google/gemma-4-E2B-it")
    picker.choose_current()
    qtbot.waitUntil(
        lambda: any(
            box.isVisible() for box in window_app.window.findChildren(QMessageBox, "question")
        ),
        timeout=10_000,
    )
    box = next(b for b in window_app.window.findChildren(QMessageBox, "question") if b.isVisible())
    assert "Restart the engine" in box.text()
    keep = next(b for b in box.buttons() if b.text() == "Keep the current model")
    keep.click()
    qtbot.waitUntil(lambda: "Kept the current model" in picker.status_label.text(), timeout=5_000)
    assert not SettingsStore().path.exists()
    assert window_app.host.engine is not None and window_app.host.is_running


def test_whole_session_leaves_no_token_in_files(
    make_app: Any,
    shared_engine: Any,
    fake_hub: Any,
    arun: Any,
    qtbot: Any,
    isolated_dirs: Path,
) -> None:
    # HF_TOKEN is set (fake hub); the user also types it into the token panel.
    app = make_app(crash_dialogs=True)
    arun(app.startup(), timeout=60)
    app.host.adopt(shared_engine)
    window = app.window
    panel = window.token_panel
    panel.field.setText(VALID_TOKEN)
    arun(panel.save())
    assert not panel.fallback_box.isHidden()  # no keyring here: the user chooses
    arun(panel.keep_for_session())

    chat = window.chat
    chat.max_tokens.setValue(8)
    chat.composer.setPlainText("The capital of France is")
    chat.send()
    qtbot.waitUntil(lambda: answer_count(chat) == 1 and not chat.streaming, timeout=180_000)

    arun(window.picker.choose(BUNDLED_MODEL_ID))
    logging.getLogger("gemma_desktop.session").info("using token %s", VALID_TOKEN)
    try:
        raise RuntimeError(f"failure mentioning {VALID_TOKEN}")
    except RuntimeError as exc:
        app.crash.excepthook(type(exc), exc, exc.__traceback__)
    app.crash.dialog.close()
    window.copy_diagnostics_action.trigger()
    window.close()
    qtbot.waitUntil(lambda: window.is_closed, timeout=60_000)
    app.close()

    written = [p for p in isolated_dirs.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"settings.json", "gemma-desktop.log"} <= names, names
    assert (isolated_dirs / "state" / "gemma-desktop" / "gemma-desktop.log").stat().st_size > 0
    hits = [str(p) for p in written if VALID_TOKEN.encode() in p.read_bytes()]
    assert hits == []
