"""Conversation history in the window: the chat records into a real HistoryStore (in the
test's data dir), and the History page lists, searches, renames, deletes, exports and
opens conversations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core.chat.history import AsyncHistory, HistoryStore, default_path
from gemma_desktop.core.engine.protocol import ChatMessage, EngineState
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID
from gemma_desktop.ui.chat.panel import ChatPanel
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.main_window import PAGE_HISTORY
from gemma_desktop.ui.panels.history_panel import HistoryPanel
from gemma_desktop.ui.tasks import spawn
from tests.fixtures.qt import click, wait_for_question


@pytest.fixture
def history(qloop: Any) -> Iterator[AsyncHistory]:
    store = HistoryStore()
    assert store.path == default_path()  # in the test's own data dir
    service = AsyncHistory(store)
    yield service
    service.close()


@pytest.fixture
def chat(qtbot: Any, history: AsyncHistory) -> ChatPanel:
    panel = ChatPanel(EngineHost(None, BUNDLED_MODEL_ID), history=history)
    qtbot.addWidget(panel)
    return panel


@pytest.fixture
def panel(qtbot: Any, history: AsyncHistory) -> HistoryPanel:
    widget = HistoryPanel(history)
    qtbot.addWidget(widget)
    widget.resize(700, 500)
    widget.show()
    return widget


def record_exchange(chat: ChatPanel, prompt: str, answer: str, arun: Any) -> int:
    """What ChatPanel.send and its stream tell the recorder, minus the engine."""
    recorder = chat.recorder
    assert recorder is not None
    recorder.add_user(prompt, model_id=BUNDLED_MODEL_ID, system_prompt=None)
    recorder.begin_answer(model_id=BUNDLED_MODEL_ID)
    for i in range(0, len(answer), 4):
        recorder.append(answer[i : i + 4])
    recorder.end_answer("complete", {"completion_tokens": len(answer) // 4})
    arun(recorder.idle(), timeout=30)
    assert recorder.conversation_id is not None
    return recorder.conversation_id


def test_chat_records_messages_and_regenerate_replaces_the_answer(
    chat: ChatPanel, history: AsyncHistory, arun: Any, qtbot: Any
) -> None:
    recorder = chat.recorder
    assert recorder is not None
    changes: list[None] = []
    recorder.changed.connect(lambda: changes.append(None))
    cid = record_exchange(chat, "Explain   WAL mode\nin SQLite please", "It keeps a log.", arun)
    store = history.store
    conversation = store.conversation(cid)
    assert conversation.title == "Explain WAL mode"
    assert conversation.model_id == BUNDLED_MODEL_ID
    messages = store.messages(cid)
    assert [(m.role, m.content, m.status) for m in messages] == [
        ("user", "Explain   WAL mode\nin SQLite please", "complete"),
        ("assistant", "It keeps a log.", "complete"),
    ]
    assert messages[1].stats == {"completion_tokens": 3}
    assert recorder.message_ids == [m.id for m in messages]
    assert changes

    # A streaming answer is in the database before it ends, and flushed as it grows.
    recorder.truncate(1)  # Regenerate: the old answer goes
    recorder.begin_answer(model_id=BUNDLED_MODEL_ID)
    recorder.append("A write-ahead ")
    arun(recorder.idle(), timeout=30)
    streaming = store.messages(cid)[-1]
    assert streaming.role == "assistant" and streaming.status == "streaming"
    assert [m.content for m in store.messages(cid)].count("It keeps a log.") == 0
    qtbot.wait(1100)  # the writer flushes at most once a second
    recorder.append("log.")
    arun(recorder.idle(), timeout=30)
    assert store.message(streaming.id) is not None
    assert store.message(streaming.id).content == "A write-ahead log."  # type: ignore[union-attr]
    recorder.end_answer("stopped", None)
    arun(recorder.idle(), timeout=30)
    final = store.messages(cid)
    assert [(m.role, m.status) for m in final] == [("user", "complete"), ("assistant", "stopped")]
    assert store.integrity_check() == "ok"


def test_an_answer_without_text_is_not_kept_and_new_chat_starts_a_new_conversation(
    chat: ChatPanel, history: AsyncHistory, arun: Any
) -> None:
    recorder = chat.recorder
    assert recorder is not None
    first = record_exchange(chat, "one", "first answer", arun)
    recorder.add_user("two", model_id=None, system_prompt="Be brief.")
    recorder.begin_answer(model_id=None)
    recorder.end_answer("error", None)
    arun(recorder.idle(), timeout=30)
    assert [m.content for m in history.store.messages(first)] == ["one", "first answer", "two"]
    assert history.store.conversation(first).system_prompt == "Be brief."

    chat.new_chat()
    assert recorder.conversation_id is None
    second = record_exchange(chat, "another topic", "sure", arun)
    assert second != first
    assert [c.id for c in history.store.list_conversations()] == [second, first]


def test_a_refused_first_prompt_leaves_no_conversation(
    chat: ChatPanel, history: AsyncHistory, arun: Any
) -> None:
    recorder = chat.recorder
    assert recorder is not None
    recorder.add_user("x " * 50, model_id=None, system_prompt=None)
    recorder.begin_answer(model_id=None)
    recorder.truncate(0, drop_if_empty=True)  # what a too-long prompt does
    recorder.end_answer("error", None)
    arun(recorder.idle(), timeout=30)
    assert history.store.list_conversations() == []
    assert recorder.conversation_id is None


def test_list_is_newest_first_and_search_finds_messages(
    chat: ChatPanel, panel: HistoryPanel, arun: Any, qtbot: Any
) -> None:
    older = record_exchange(chat, "Recipe for bread", "Flour, water, salt and yeast.", arun)
    chat.new_chat()
    newer = record_exchange(chat, "Tell me about comets", "Comets are icy bodies.", arun)
    arun(panel.reload())
    assert panel.conversation_ids() == [newer, older]
    assert [panel.list.item(r).text() for r in range(2)] == [
        "Tell me about comets",
        "Recipe for bread",
    ]
    assert "2 messages" in panel.details.text()

    qtbot.keyClicks(panel.search_field, "yea")  # a prefix of a word in an answer
    qtbot.waitUntil(lambda: panel.conversation_ids() == [older], timeout=5000)
    assert "[yeast]" in panel.details.text()
    panel.search_field.setText("nothing-like-this")
    panel.refresh()
    qtbot.waitUntil(lambda: panel.list.count() == 0, timeout=5000)
    assert "No message contains" in panel.status_label.text()
    panel.search_field.clear()
    arun(panel.reload())
    assert panel.conversation_ids() == [newer, older]


def test_rename_in_place_and_delete_after_asking(
    chat: ChatPanel, panel: HistoryPanel, history: AsyncHistory, arun: Any, qtbot: Any
) -> None:
    cid = record_exchange(chat, "first title", "answer", arun)
    arun(panel.reload())
    assert panel.select(cid)
    item = panel.list.currentItem()
    item.setText("  Renamed   chat ")  # what the in-place editor commits
    qtbot.waitUntil(lambda: history.store.conversation(cid).title == "Renamed chat", timeout=5000)
    qtbot.waitUntil(lambda: panel.list.item(0).text() == "Renamed chat", timeout=5000)

    deleted: list[int] = []
    panel.conversation_deleted.connect(deleted.append)
    # "Keep it" keeps it.
    task = spawn(panel.delete_selected(), "History")
    box = wait_for_question(qtbot)
    assert "Renamed chat" in box.text()
    click(box, "Keep it")
    qtbot.waitUntil(task.done, timeout=5000)
    assert task.result() is False and history.store.list_conversations() != []

    task = spawn(panel.delete_selected(), "History")
    click(wait_for_question(qtbot), "Delete")
    qtbot.waitUntil(task.done, timeout=5000)
    assert task.result() is True
    assert history.store.list_conversations() == []
    assert deleted == [cid]
    assert panel.list.count() == 0
    # The chat was recording into it: it starts afresh instead of writing into nothing.
    assert chat.recorder is not None and chat.recorder.conversation_id == cid
    chat.forget_conversation(cid)
    assert chat.recorder.conversation_id is None


def test_export_markdown_and_json_through_the_save_dialog(
    chat: ChatPanel, panel: HistoryPanel, arun: Any, qtbot: Any, tmp_path: Path
) -> None:
    record_exchange(chat, "Export me", "**Bold** answer", arun)
    arun(panel.reload())
    for button, name in (
        (panel.export_markdown_button, "chat.md"),
        (panel.export_json_button, "chat.json"),
    ):
        button.click()
        dialog = panel.export_dialog
        assert dialog is not None and dialog.isVisible()
        target = tmp_path / name
        dialog.selectFile(str(target))
        dialog.accept()
        qtbot.waitUntil(target.exists, timeout=5000)
        qtbot.waitUntil(lambda t=target: str(t) in panel.status_label.text(), timeout=5000)
    markdown = (tmp_path / "chat.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Export me")
    assert "## You\n\nExport me" in markdown and "**Bold** answer" in markdown
    data = json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["conversation"]["title"] == "Export me"


def test_opening_a_conversation_shows_it_and_continues_it(
    qtbot: Any, history: AsyncHistory, panel: HistoryPanel, arun: Any
) -> None:
    writer_chat = ChatPanel(EngineHost(None, BUNDLED_MODEL_ID), history=history)
    qtbot.addWidget(writer_chat)
    cid = record_exchange(writer_chat, "What is a haiku?", "A *short* poem.", arun)
    history.store.set_system_prompt(cid, "Answer in verse.")
    stopped = history.store.begin_answer(cid)
    stopped.append("Five, seven, five")
    stopped.finish("stopped")

    reader = ChatPanel(EngineHost(None, BUNDLED_MODEL_ID), history=history)
    qtbot.addWidget(reader)
    reader_tasks: list[Any] = []
    panel.open_requested.connect(
        lambda c: reader_tasks.append(spawn(reader.open_conversation(c), "History"))
    )
    arun(panel.reload())
    panel.select(cid)
    panel.open_button.click()
    qtbot.waitUntil(lambda: bool(reader_tasks) and reader_tasks[0].done(), timeout=5000)
    assert reader_tasks[0].result() is True
    text = reader.transcript.toPlainText()
    for piece in ("What is a haiku?", "A short poem.", "Five, seven, five", "Stopped."):
        assert piece in text
    assert [m.role for m in reader.conversation] == ["user", "assistant", "assistant"]
    assert reader.system_prompt.toPlainText() == "Answer in verse."
    assert reader.recorder is not None and reader.recorder.conversation_id == cid
    assert reader.edit_button.isEnabled()

    # Continuing writes into the same conversation; Edit last removes from the history too.
    reader.recorder.add_user("And a limerick?", model_id=None, system_prompt="Answer in verse.")
    reader.conversation.append(ChatMessage("user", "And a limerick?"))
    arun(reader.recorder.idle(), timeout=30)
    assert history.store.messages(cid)[-1].content == "And a limerick?"
    reader.edit_last()
    arun(reader.recorder.idle(), timeout=30)
    assert reader.composer.toPlainText() == "And a limerick?"
    assert [m.content for m in history.store.messages(cid)][-1] == "Five, seven, five"


def test_attachments_are_recorded_exported_beside_and_deleted_with_the_conversation(
    chat: ChatPanel,
    panel: HistoryPanel,
    history: AsyncHistory,
    arun: Any,
    qtbot: Any,
    tmp_path: Path,
) -> None:
    from PIL import Image

    from gemma_desktop.core.chat.attachments import prepare_file

    source = tmp_path / "cat.png"
    Image.new("RGB", (64, 48), "orange").save(source)
    picture = history.store.attachments.put(prepare_file(source))
    recorder = chat.recorder
    assert recorder is not None
    recorder.add_user("", model_id=BUNDLED_MODEL_ID, system_prompt=None, attachments=[picture])
    recorder.begin_answer(model_id=BUNDLED_MODEL_ID)
    recorder.append_thinking("An orange square.")
    recorder.append("A cat, perhaps.")
    recorder.end_answer("complete", {"completion_tokens": 4})
    arun(recorder.idle(), timeout=30)
    cid = recorder.conversation_id
    assert cid is not None
    assert history.store.conversation(cid).title == "cat.png"  # no text: named after the file
    user, answer = history.store.messages(cid)
    assert user.attachments == (picture,) and answer.thinking == "An orange square."
    written = arun(panel.export_to(cid, tmp_path / "out" / "cat chat.md"), timeout=30)
    assert written is not None
    assert "cat chat_files/" in panel.status_label.text()
    assert (tmp_path / "out" / "cat chat_files" / "01-cat.png").read_bytes() == source.read_bytes()
    arun(panel.reload(), timeout=30)
    assert panel.select(cid)
    task = spawn(panel.delete_selected(), "History")
    box = wait_for_question(qtbot)
    assert "images and recordings" in box.informativeText()
    click(box, "Delete")
    qtbot.waitUntil(task.done, timeout=5000)
    assert task.result() is True and not picture.path.exists()


def test_without_history_the_page_says_so(qtbot: Any, qloop: Any) -> None:
    widget = HistoryPanel(None)
    qtbot.addWidget(widget)
    widget.show()
    assert "off" in widget.status_label.text()
    assert not any(b.isEnabled() for b in widget.buttons)
    assert ChatPanel(EngineHost(None, BUNDLED_MODEL_ID)).recorder is None


def test_window_quit_and_setup_hooks(make_app: Any, qtbot: Any) -> None:
    app = make_app()
    window = app.window
    assert window.history_panel is not None
    with qtbot.waitSignal(window.quit_requested, timeout=2000):
        window.quit_action.trigger()
    assert window.isVisible() and not window.is_closed  # app.py decides what Quit does
    with qtbot.waitSignal(window.setup_requested, timeout=2000):
        window.setup_action.trigger()
    assert window.setup_action.text() == "Run &setup again…"
    window.show_page(PAGE_HISTORY)
    assert window.pages.currentWidget() is window.history_panel


@pytest.mark.engine
def test_real_answer_is_recorded(
    qtbot: Any, history: AsyncHistory, shared_engine: Any, arun: Any
) -> None:
    host = EngineHost(None, BUNDLED_MODEL_ID)
    host.adopt(shared_engine)
    panel = ChatPanel(host, history=history)
    qtbot.addWidget(panel)
    panel.max_tokens.setValue(24)
    panel.composer.setPlainText("Name three colours.")
    panel.send()
    qtbot.waitUntil(lambda: not panel.streaming, timeout=180_000)
    assert panel.recorder is not None
    arun(panel.recorder.idle(), timeout=30)
    cid = panel.recorder.conversation_id
    assert cid is not None
    messages = history.store.messages(cid)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].content == panel.conversation[-1].content
    assert messages[1].status == "complete" and messages[1].stats["completion_tokens"] > 0
    assert shared_engine.status.state is EngineState.READY
