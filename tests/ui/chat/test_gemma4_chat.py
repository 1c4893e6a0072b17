"""Gemma 4 in the real window, on the small Gemma 4 test checkpoint on vLLM's CPU build (the
session's ``gemma4_engine``): a picture pasted from the real clipboard, a sound file pasted as
a file, and a question recorded from a real PulseAudio server (its chip plays it back through
the server) reach the model, whose prompt token count includes their soft tokens (counted by
transformers' own Gemma 4 processor); the history keeps them (reopen, continue, export,
delete); Think changes the prompt; a recorded token stream with a thought channel renders its
thinking apart from the answer.

Random weights answer gibberish: these tests check structure (tokens stream, counts), never
what the model says.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, Qt, QUrl
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QApplication

from gemma_desktop.core.audio_capture import AudioDevices, Recording
from gemma_desktop.core.chat.history import AsyncHistory, HistoryStore
from gemma_desktop.core.engine.protocol import EngineState
from gemma_desktop.ui.chat.panel import ChatPanel
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.tasks import spawn
from tests.fixtures.gemma4 import INSTRUCT_ID, QUESTION
from tests.fixtures.pulse import PulseServer, best_correlation, reference_16k, rescan_portaudio
from tests.fixtures.qt import click, wait_for_question

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("fail_keyring")]


@pytest.fixture
def window(make_app: Any, gemma4_engine: Any) -> Any:
    app = make_app()
    app.host.adopt(gemma4_engine)  # not owned: closing the window leaves it running
    assert app.host.is_running
    chat = app.window.chat
    chat.max_tokens.setValue(8)
    chat.temperature.setValue(0.0)
    yield app
    assert gemma4_engine.status.state is EngineState.READY


@pytest.fixture
def sound_chat(gemma4_engine: Any, qtbot: Any, arun: Any, qloop: Any, tmp_path: Path) -> Any:
    """Makes a chat panel with the sound service, its own history, on the session's Gemma 4
    engine; called once the test's sound server (or its absence) is in place."""
    made: list[tuple[AsyncHistory, ChatPanel]] = []

    def make() -> ChatPanel:
        rescan_portaudio()
        history = AsyncHistory(HistoryStore(tmp_path / "history.sqlite3"))
        host = EngineHost(None, INSTRUCT_ID)
        host.adopt(gemma4_engine)
        chat = ChatPanel(host, history=history, audio=AudioDevices())
        qtbot.addWidget(chat)
        chat.show()
        made.append((history, chat))
        return chat

    yield make
    for history, chat in made:
        chat.recorder_bar.cancel()
        close(history, chat, arun)


def paste(qtbot: Any, chat: ChatPanel, data: QMimeData | QImage) -> None:
    """Put ``data`` on the real clipboard and press Ctrl+V in the message box."""
    clipboard = QGuiApplication.clipboard()
    if isinstance(data, QImage):
        clipboard.setImage(data)
    else:
        clipboard.setMimeData(data)
    chat.composer.setFocus()
    before = len(chat.draft_attachments)
    qtbot.keyClick(chat.composer, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: len(chat.draft_attachments) > before, timeout=20_000)


def send_and_wait(qtbot: Any, chat: ChatPanel, text: str) -> Any:
    previous = chat.last_stats
    chat.composer.setFocus()
    qtbot.keyClicks(chat.composer, text)
    qtbot.keyClick(chat.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: not chat.streaming and chat.last_stats is not previous, timeout=120_000)
    stats = chat.last_stats
    assert stats is not None and stats.finish_reason in ("stop", "length"), stats
    assert stats.completion_tokens > 0 and stats.time_to_first_token_s is not None
    return stats


def test_the_message_box_has_focus_at_launch_and_after_sending(
    window: Any, qtbot: Any, gemma4_media: dict[str, Path]
) -> None:
    chat = window.window.chat
    window.window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is chat.composer, timeout=5000)
    window.window.show_page(2)  # another page, then the chat again
    qtbot.waitUntil(lambda: QApplication.focusWidget() is not chat.composer, timeout=5000)
    window.window.show_page(0)
    qtbot.waitUntil(lambda: QApplication.focusWidget() is chat.composer, timeout=5000)
    qtbot.keyClicks(chat.composer, "Hi")
    qtbot.keyClick(chat.composer, Qt.Key.Key_Return)
    assert QApplication.focusWidget() is chat.composer
    qtbot.waitUntil(lambda: not chat.streaming, timeout=120_000)
    assert QApplication.focusWidget() is chat.composer


def test_pasted_image_reaches_the_model_with_its_soft_tokens(
    window: Any, qtbot: Any, gemma4_media: dict[str, Path], gemma4_transformers: Any
) -> None:
    chat = window.window.chat
    # The app hands the chat its sound service: recording is offered with a model that hears.
    assert chat.attach_button.isEnabled() and chat.record_button.isEnabled()
    assert chat.think_toggle.isEnabled()
    paste(qtbot, chat, QImage(str(gemma4_media["image"])))
    (chip,) = chat.tray.chips
    assert chip.attachment.kind == "image" and chip.attachment.name.startswith("Pasted image")
    assert (chip.attachment.width, chip.attachment.height) == (320, 240)
    assert chat.composer.toPlainText() == ""  # the picture is an attachment, not text
    stats = send_and_wait(qtbot, chat, QUESTION)
    assert chat.draft_attachments == []
    # vLLM's prompt count is exactly transformers' processor's for this picture and question.
    expected = len(gemma4_transformers.prompt_ids("image", gemma4_media))
    text_only = len(gemma4_transformers.prompt_ids("text", gemma4_media))
    assert stats.prompt_tokens == expected
    assert stats.prompt_tokens - text_only == gemma4_transformers.attachment_tokens(
        "image", gemma4_media
    )
    # The transcript shows the thumbnail; the session keeps the picture for the next turn.
    assert [a.kind for a in chat.transcript.shown_attachments] == ["image"]
    (user, _answer) = chat.conversation
    assert [type(p).__name__ for p in user.attachments] == ["ImagePart"]

    # Regenerate answers the same message again, picture included.
    chat.regenerate_button.click()
    qtbot.waitUntil(
        lambda: not chat.streaming and chat.last_stats.request_id != stats.request_id,
        timeout=120_000,
    )
    assert chat.last_stats.prompt_tokens == expected
    # Edit last gives the text and the picture back; sent again, the picture goes too.
    chat.edit_button.click()
    assert chat.composer.toPlainText() == QUESTION
    assert [a.kind for a in chat.draft_attachments] == ["image"]
    assert chat.draft_attachments[0].path.is_file()  # kept although its message was removed
    resent = chat.last_stats
    chat.send()
    qtbot.waitUntil(lambda: not chat.streaming and chat.last_stats is not resent, timeout=120_000)
    assert chat.last_stats.prompt_tokens == expected
    assert [a.kind for a in chat.transcript.shown_attachments] == ["image"]


def test_pasted_sound_file_reaches_the_model_with_its_soft_tokens(
    window: Any, qtbot: Any, gemma4_media: dict[str, Path], gemma4_transformers: Any
) -> None:
    chat = window.window.chat
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(gemma4_media["audio"]))])
    paste(qtbot, chat, data)
    (chip,) = chat.tray.chips
    assert chip.attachment.kind == "audio" and chip.attachment.duration_s == pytest.approx(1.0)
    stats = send_and_wait(qtbot, chat, QUESTION)
    assert stats.prompt_tokens == len(gemma4_transformers.prompt_ids("audio", gemma4_media))
    assert "▶ Play" in chat.transcript.toPlainText()


def drag_and_drop(widget: Any, data: QMimeData) -> None:
    """Drag ``data`` over ``widget`` and drop it, as a file manager or a browser does."""
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent

    at = widget.rect().center()
    copy, left, none = (
        Qt.DropAction.CopyAction,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    enter = QDragEnterEvent(at, copy, data, left, none)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted(), "the drag was refused"
    move = QDragMoveEvent(at, copy, data, left, none)
    move.accept()  # as Qt does once the enter was accepted (QGuiApplicationPrivate::processDrag)
    QApplication.sendEvent(widget, move)
    assert move.isAccepted()
    dropped = QDropEvent(QPointF(at), copy, data, left, none)
    QApplication.sendEvent(widget, dropped)
    assert dropped.isAccepted()


def test_files_and_pictures_dropped_on_the_chat_are_attached(
    window: Any, qtbot: Any, gemma4_media: dict[str, Path]
) -> None:
    chat = window.window.chat
    chat.composer.setPlainText("my draft")
    files = QMimeData()
    files.setUrls([QUrl.fromLocalFile(str(gemma4_media["audio"]))])
    drag_and_drop(chat.composer.viewport(), files)  # where a drop on the box lands
    qtbot.waitUntil(lambda: len(chat.draft_attachments) == 1, timeout=20_000)
    assert chat.draft_attachments[0].kind == "audio"
    picture = QMimeData()
    picture.setImageData(QImage(str(gemma4_media["image"])))
    drag_and_drop(chat, picture)  # anywhere on the chat page
    qtbot.waitUntil(lambda: len(chat.draft_attachments) == 2, timeout=20_000)
    assert [a.kind for a in chat.draft_attachments] == ["audio", "image"]
    assert chat.composer.toPlainText() == "my draft"  # no path pasted as text
    for chip in list(chat.tray.chips):
        chip.remove_button.click()
    assert chat.draft_attachments == []


def test_the_attach_dialog_attaches_what_is_picked(
    window: Any, qtbot: Any, gemma4_media: dict[str, Path]
) -> None:
    from PySide6.QtWidgets import QFileDialog

    chat = window.window.chat
    chat.attach_button.click()
    dialog = chat.file_dialog
    assert isinstance(dialog, QFileDialog) and dialog.isVisible()  # open(), not exec()
    assert dialog.fileMode() == QFileDialog.FileMode.ExistingFiles
    dialog.selectFile(str(gemma4_media["image"]))
    dialog.accept()
    qtbot.waitUntil(lambda: len(chat.draft_attachments) == 1, timeout=20_000)
    assert chat.draft_attachments[0].name == gemma4_media["image"].name
    assert chat.file_dialog is None
    chat.tray.chips[0].remove_button.click()
    assert chat.draft_attachments == [] and not chat.tray.isVisible()


def test_a_recorded_question_reaches_the_model(
    pulse_server: PulseServer, sound_chat: Any, qtbot: Any, gemma4_transformers: Any
) -> None:
    chat = sound_chat()
    chat.max_tokens.setValue(8)
    chat.temperature.setValue(0.0)
    speech = pulse_server.speak_to_wav("What is the capital of France?")
    assert chat.record_button.isEnabled()
    chat.record_button.click()
    assert chat.recorder_bar.isVisible() and chat.recorder_bar.recording
    assert not chat.record_button.isEnabled()
    assert chat.recorder_bar.level.accessibleName() == "Microphone level"
    player = pulse_server.play(speech, wait=False)
    peak = 0
    while player.poll() is None:
        qtbot.wait(50)
        peak = max(peak, chat.recorder_bar.level.value())
    assert peak > 10  # the meter moved with the speech
    assert chat.recorder_bar.time_label.text().endswith("/ 0:30")
    chat.recorder_bar.stop_button.click()
    qtbot.waitUntil(lambda: bool(chat.draft_attachments), timeout=10_000)
    (recording,) = chat.draft_attachments
    assert recording.kind == "audio" and recording.mime == "audio/wav"
    assert 1.0 < (recording.duration_s or 0) < 10.0
    assert not chat.recorder_bar.isVisible()
    # The chip's Play sends the clip to the default output, the null sink: its monitor
    # (the microphone) hears the clip again, and playback ends by itself.
    play = chat.tray.chips[0].play_button
    assert play is not None and play.accessibleName() == f"Play {recording.name}"
    monitor = Recording()
    monitor.start()
    try:
        play.click()
        until = time.monotonic() + (recording.duration_s or 0) + 0.8
        while time.monotonic() < until:
            qtbot.wait(50)
            monitor.poll()
        heard = monitor.stop()
    finally:
        monitor.cancel()
    assert best_correlation(heard, reference_16k(pulse_server, recording.path)) > 0.9
    assert chat.audio is not None and chat.audio.playing is None
    qtbot.keyClicks(chat.composer, QUESTION)
    qtbot.keyClick(chat.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: not chat.streaming and chat.last_stats is not None, timeout=120_000)
    stats = chat.last_stats
    assert stats is not None and stats.completion_tokens > 0
    media = {"audio": recording.path}
    assert stats.prompt_tokens == len(gemma4_transformers.prompt_ids("audio", media))


def test_the_recording_stops_at_the_limit_with_a_message(
    pulse_server: PulseServer, sound_chat: Any, qtbot: Any
) -> None:
    chat = sound_chat()
    chat.recording_limit_s = 1.0  # Gemma 4's is 30 s; the same path, reached in a second
    assert chat.start_recording()
    qtbot.waitUntil(lambda: bool(chat.draft_attachments), timeout=10_000)
    (recording,) = chat.draft_attachments
    assert recording.duration_s == pytest.approx(1.0)
    assert "limit" in chat.message_label.text()
    assert not chat.recorder_bar.recording
    # Escape while recording throws the recording away.
    assert chat.start_recording()
    qtbot.keyClick(chat.composer, Qt.Key.Key_Escape)
    assert not chat.recorder_bar.recording and len(chat.draft_attachments) == 1


def test_no_microphone_is_said_plainly(no_pulse_server: None, sound_chat: Any) -> None:
    chat = sound_chat()
    chat.composer.setPlainText("my draft")
    assert not chat.start_recording()
    assert "No microphone was found" in chat.message_label.text()
    assert "PulseAudio or PipeWire" in chat.message_label.text()
    assert not chat.recorder_bar.isVisible() and chat.composer.toPlainText() == "my draft"


def test_bad_input_is_explained_and_nothing_is_sent(
    window: Any, qtbot: Any, tmp_path: Path, arun: Any
) -> None:
    chat = window.window.chat
    chat.composer.setPlainText("my draft")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    assert arun(chat.attach_files([notes]), timeout=30) == 0
    assert "neither a picture nor a sound file" in chat.message_label.text()
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert arun(chat.attach_files([damaged]), timeout=30) == 0
    assert "damaged.png" in chat.message_label.text()
    assert chat.draft_attachments == [] and chat.composer.toPlainText() == "my draft"
    # A 100-megapixel picture is downscaled, not refused.
    huge = tmp_path / "huge.jpg"
    Image.new("RGB", (10_000, 10_000), (90, 140, 200)).save(huge, quality=70)
    assert arun(chat.attach_files([huge]), timeout=120) == 1
    assert "10000×10000" in chat.message_label.text()
    (big,) = chat.draft_attachments
    assert max(big.width or 0, big.height or 0) == 2048
    # More pictures than fit in the context: the engine refuses, nothing is sent and the
    # draft (text and pictures) is given back.
    many = []
    for n in range(40):
        path = tmp_path / f"p{n}.png"
        Image.new("RGB", (640, 480), (n * 6, 80, 120)).save(path)
        many.append(path)
    assert arun(chat.attach_files(many), timeout=120) == 40
    before = len(chat.conversation)
    chat.send()
    qtbot.waitUntil(lambda: not chat.streaming, timeout=120_000)
    assert len(chat.conversation) == before
    assert chat.composer.toPlainText() == "my draft"
    assert len(chat.draft_attachments) == 41
    assert "2048" in chat.message_label.text()  # the context, in the engine's words
    assert window.host.status.state is EngineState.READY


def test_history_keeps_the_attachments(
    window: Any,
    qtbot: Any,
    arun: Any,
    gemma4_media: dict[str, Path],
    tmp_path: Path,
    gemma4_transformers: Any,
) -> None:
    app = window
    chat, panel = app.window.chat, app.window.history_panel
    arun(chat.attach_files([gemma4_media["image"]]), timeout=30)
    first = send_and_wait(qtbot, chat, QUESTION)
    assert chat.recorder is not None
    arun(chat.recorder.idle(), timeout=30)
    cid = chat.recorder.conversation_id
    store = app.history.store
    user, answer = store.messages(cid)
    (stored,) = user.attachments
    assert stored.path.read_bytes() == gemma4_media["image"].read_bytes()
    assert stored.path.is_relative_to(store.attachments.objects)

    # Reopen (after a new chat) and continue: the picture is sent again.
    chat.new_chat()
    assert arun(chat.open_conversation(cid), timeout=30)
    assert chat.transcript.shown_attachments == [stored]
    second = send_and_wait(qtbot, chat, "And now?")
    processor = gemma4_transformers.processor
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer.content}]},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]
    prompt = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    ids = processor(
        text=prompt,
        images=[Image.open(gemma4_media["image"]).convert("RGB")],
        return_tensors="pt",
        add_special_tokens=False,
    )["input_ids"][0]
    assert second.prompt_tokens == len(ids) > first.prompt_tokens

    # Export: the document and the picture beside it.
    out = tmp_path / "export"
    written = arun(panel.export_to(cid, out / "chat.md"), timeout=30)
    assert written is not None
    md = written.read_text(encoding="utf-8")
    files = list((out / "chat_files").iterdir())
    assert len(files) == 1 and files[0].read_bytes() == stored.path.read_bytes()
    assert f"](chat_files/{files[0].name})" in md
    data = json.loads(arun(panel.export_to(cid, out / "chat.json"), timeout=30).read_text())
    assert data["messages"][0]["attachments"][0]["file"] == f"chat_files/{files[0].name}"

    # Delete it while the chat shows it: its file goes too (no other message uses it).
    arun(panel.reload(), timeout=30)
    assert panel.select(cid)
    task = spawn(panel.delete_selected(), "History")
    box = wait_for_question(qtbot)
    click(box, "Delete")
    qtbot.waitUntil(task.done, timeout=10_000)
    assert task.result() is True
    assert chat.conversation == []  # the chat let go of it
    arun(chat.recorder.idle(), timeout=30)
    assert not stored.path.exists()
    assert store.search(QUESTION.split()[0]) == []


def test_think_changes_the_rendered_prompt(
    window: Any, qtbot: Any, gemma4_transformers: Any
) -> None:
    chat = window.window.chat
    tokenizer = gemma4_transformers.processor.tokenizer
    messages = [{"role": "user", "content": QUESTION}]

    def template_tokens(thinking: bool) -> int:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    plain = send_and_wait(qtbot, chat, QUESTION)
    chat.new_chat()
    chat.think_toggle.click()
    assert chat.options().thinking
    thinking = send_and_wait(qtbot, chat, QUESTION)
    assert plain.prompt_tokens == template_tokens(False)
    assert thinking.prompt_tokens == template_tokens(True) > plain.prompt_tokens


def test_a_recorded_thought_channel_renders_apart(gemma4_download: Any, qtbot: Any) -> None:
    """Gemma 4 token ids as the model streams them, split by the engine's splitter (vLLM's
    Gemma 4 reasoning parser) and rendered as the chat renders a stream."""
    from transformers import AutoTokenizer

    from gemma_desktop.core.engine.thinking import ThinkingSplitter
    from gemma_desktop.ui.chat.transcript import TranscriptView

    tokenizer = AutoTokenizer.from_pretrained(gemma4_download.instruct)
    recorded = tokenizer(
        "<|channel>thought\nThe user wants 17 times 3. That is 51.<channel|>It is 51.<turn|>",
        add_special_tokens=False,
    )["input_ids"]
    splitter = ThinkingSplitter(tokenizer, thinking=True)
    view = TranscriptView()
    qtbot.addWidget(view)
    view.show()
    view.begin_answer()
    thinking, answer = [], []
    for token in recorded:
        reasoning, content = splitter.feed(
            tokenizer.decode([token], skip_special_tokens=False), [token]
        )
        if reasoning:
            thinking.append(reasoning)
            view.append_thinking(reasoning, 1)
        if content:
            answer.append(content)
            view.append_delta(content)
    reasoning, content = splitter.finish()
    view.append_thinking(reasoning)
    view.append_delta(content)
    view.end_answer()
    assert "".join(thinking).strip() == "The user wants 17 times 3. That is 51."
    assert "".join(answer) + content == "It is 51."
    (block,) = view.thinking_blocks
    assert not block.open and block.words == 9
    doc = view.document()
    thought = doc.find("The user wants")
    assert not thought.block().isVisible() and thought.charFormat().fontItalic()
    said = doc.find("It is 51.")
    assert said.block().isVisible() and not said.charFormat().fontItalic()
    assert "<|channel>" not in view.toPlainText() and "<turn|>" not in view.toPlainText()


def close(history: AsyncHistory, chat: ChatPanel, arun: Any) -> None:
    """Close a test's own history once the chat's writes are done."""
    if chat.recorder is not None:
        arun(chat.recorder.idle(), timeout=30)
    history.close()
