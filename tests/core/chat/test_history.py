"""Conversation history: CRUD, search, export, migration, concurrency, kill -9 durability."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core.chat import history as history_mod
from gemma_desktop.core.chat.history import (
    SCHEMA_VERSION,
    ConversationNotFoundError,
    HistoryError,
    HistoryStore,
    fts_query,
    title_from_prompt,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    s = HistoryStore(tmp_path / "history.sqlite3")
    yield s
    s.close()


def test_default_location_is_the_data_dir(isolated_dirs: Path) -> None:
    with HistoryStore() as s:
        assert s.path == isolated_dirs / "data" / "gemma-desktop" / "history.sqlite3"
        assert s.path.is_file()


def test_pragmas(store: HistoryStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    # synchronous is per connection: read the store's own.
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_conversations_list_rename_delete(store: HistoryStore) -> None:
    a = store.create_conversation("First", model_id="bundled/gemma-3-270m")
    b = store.create_conversation("  Second \n chat ")
    assert b.title == "Second chat"
    store.add_message(a.id, "user", "hello")
    store.add_message(a.id, "assistant", "hi there")
    listed = store.list_conversations()
    assert [c.id for c in listed] == [a.id, b.id]  # a was active last
    assert listed[0].message_count == 2
    store.rename_conversation(b.id, "Renamed")
    assert store.conversation(b.id).title == "Renamed"
    assert store.delete_conversation(a.id) is True
    assert store.delete_conversation(a.id) is False
    assert [c.id for c in store.list_conversations()] == [b.id]
    # The messages went with it (foreign key cascade), the index too.
    assert store.search("hello") == []
    with pytest.raises(ConversationNotFoundError):
        store.conversation(a.id)
    with pytest.raises(ConversationNotFoundError):
        store.add_message(a.id, "user", "orphan")
    with pytest.raises(ConversationNotFoundError):
        store.rename_conversation(a.id, "x")


def test_full_text_search(store: HistoryStore) -> None:
    a = store.create_conversation("Cooking")
    store.add_message(a.id, "user", "How long do I boil an egg?")
    store.add_message(a.id, "assistant", "Boil the egg for about nine minutes.")
    b = store.create_conversation("Rust questions")
    store.add_message(b.id, "user", "Explain the borrow checker")
    hits = store.search("boil")
    assert {h.conversation_id for h in hits} == {a.id}
    assert all("[" in h.snippet and "]" in h.snippet for h in hits)
    assert [h.conversation_id for h in store.search("borr")] == [b.id]  # prefix on last word
    assert [h.role for h in store.search("nine minutes")] == ["assistant"]
    assert store.search("egg checker") == []  # every word must match one message
    # Title matches are found too; FTS syntax in user text is harmless.
    assert [h.conversation_id for h in store.search("Rust")] == [b.id]
    assert store.search('" OR * NEAR(') == []  # FTS syntax is quoted, never parsed
    assert store.search("   ") == []
    assert fts_query('say "hi') == '"say" "hi"*'
    # Edited content is re-indexed.
    writer = store.begin_answer(b.id)
    writer.append("Lifetimes tie references to scopes.")
    writer.finish()
    assert [h.message_id for h in store.search("lifetimes")] == [writer.message_id]
    assert store.integrity_check() == "ok"


def test_streaming_answer_and_recovery(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    s = HistoryStore(path)
    c = s.create_conversation("x")
    writer = s.begin_answer(c.id, model_id="m")
    writer.flush_interval_s = 0.0
    writer.append("partial ")
    assert writer.flush_due()
    writer.flush()
    assert not writer.flush_due()
    writer.append("more that is never flushed")
    assert s.message(writer.message_id).content == "partial "  # type: ignore[union-attr]
    assert s.message(writer.message_id).status == "streaming"  # type: ignore[union-attr]
    s.close()  # the process "dies" here
    s = HistoryStore(path)
    message = s.message(writer.message_id)
    assert message is not None
    assert (message.status, message.content) == ("interrupted", "partial ")
    s.close()


def test_stopped_answer_keeps_text_and_stats(store: HistoryStore) -> None:
    c = store.create_conversation("x")
    writer = store.begin_answer(c.id)
    writer.append("Once upon")
    writer.finish("stopped", {"completion_tokens": 2, "finish_reason": "abort"})
    message = store.message(writer.message_id)
    assert message is not None
    assert message.status == "stopped"
    assert message.stats == {"completion_tokens": 2, "finish_reason": "abort"}
    with pytest.raises(ValueError):
        writer.finish("streaming")


def test_delete_messages_from(store: HistoryStore) -> None:
    c = store.create_conversation("x")
    ids = [
        store.add_message(c.id, "user" if i % 2 == 0 else "assistant", f"m{i}").id for i in range(4)
    ]
    assert store.delete_messages_from(c.id, ids[2]) == 2
    assert [m.content for m in store.messages(c.id)] == ["m0", "m1"]


def test_export_markdown_and_json(store: HistoryStore, tmp_path: Path) -> None:
    c = store.create_conversation(
        "Fibonacci", model_id="bundled/gemma-3-270m", system_prompt="Be brief."
    )
    store.add_message(c.id, "user", "Write fib in Python")
    store.add_message(
        c.id,
        "assistant",
        "```python\ndef fib(n):\n    return n\n```",
        stats={"tokens_per_second": 21.5},
    )
    md = store.export(c.id, tmp_path / "out" / "fib.md").read_text(encoding="utf-8")
    assert md.startswith("# Fibonacci\n")
    assert "## System\n\nBe brief." in md
    assert "## You\n\nWrite fib in Python" in md
    assert "## Gemma\n\n```python\ndef fib(n):\n    return n\n```" in md
    data = json.loads(store.export(c.id, tmp_path / "fib.json").read_text(encoding="utf-8"))
    assert data["conversation"]["title"] == "Fibonacci"
    assert data["conversation"]["system_prompt"] == "Be brief."
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", "Write fib in Python"),
        ("assistant", "```python\ndef fib(n):\n    return n\n```"),
    ]
    assert data["messages"][1]["stats"] == {"tokens_per_second": 21.5}
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left


V1_SCHEMA = """
CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE messages (id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL, created_at REAL NOT NULL);
PRAGMA user_version = 1;
"""


def test_migrates_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO conversations VALUES (1, 'Old chat', 1.0, 2.0)")
    conn.execute("INSERT INTO messages VALUES (1, 1, 'user', 'ancient question about tides', 1.5)")
    conn.execute("INSERT INTO messages VALUES (2, 1, 'assistant', 'the moon', 1.6)")
    conn.commit()
    conn.close()

    with HistoryStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert [(m.role, m.content, m.status) for m in s.messages(1)] == [
            ("user", "ancient question about tides", "complete"),
            ("assistant", "the moon", "complete"),
        ]
        assert [h.message_id for h in s.search("tides")] == [1]  # old rows indexed
        s.add_message(1, "user", "new tides question", model_id="m")
        assert len(s.search("tides")) == 2
        assert s.integrity_check() == "ok"
    with HistoryStore(path) as s:  # opening again does not migrate twice
        assert s.schema_version == SCHEMA_VERSION
        assert len(s.messages(1)) == 3


def test_refuses_a_newer_schema_and_a_damaged_file(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(HistoryError) as info:
        HistoryStore(newer)
    assert "newer Gemma Desktop" in info.value.reason and info.value.hint
    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"this is not sqlite" * 300)
    with pytest.raises(HistoryError) as info:
        HistoryStore(damaged)
    assert "damaged" in info.value.reason and "aside" in info.value.hint


def test_concurrent_writes_from_threads_and_connections(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    stores = [HistoryStore(path), HistoryStore(path)]
    errors: list[BaseException] = []

    def work(store: HistoryStore, n: int) -> None:
        try:
            for i in range(40):
                c = store.create_conversation(f"t{n}-{i}")
                store.add_message(c.id, "user", f"question {n} {i}")
                w = store.begin_answer(c.id)
                w.append(f"answer {n} {i}")
                w.flush()
                w.finish()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(stores[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for s in stores:
        s.close()
    with HistoryStore(path) as s:
        conversations = s.list_conversations(limit=1000)
        assert len(conversations) == 160
        assert all(c.message_count == 2 for c in conversations)
        assert s.integrity_check() == "ok"


def _writer(db: Path, seed: int, count: int | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.core.chat.history_writer", str(db), str(seed)]
    if count is not None:
        args.append(str(count))
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)


def test_two_processes_write_at_once(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    HistoryStore(db).close()
    procs = [_writer(db, seed, count=25) for seed in (1, 2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    done = [line.split() for out in outputs for line in out.splitlines() if line.startswith("done")]
    assert len(done) == 50
    with HistoryStore(db) as s:
        for _, message_id, digest in done:
            message = s.message(int(message_id))
            assert message is not None and message.status == "complete"
            assert hashlib.sha256(message.content.encode()).hexdigest() == digest
        assert len(s.list_conversations(limit=100)) == 50
        assert s.integrity_check() == "ok"


def test_sigkill_while_streaming_loses_only_the_partial_answer(tmp_path: Path) -> None:
    """Kill the writer with SIGKILL in the middle of streaming, over and over."""
    db = tmp_path / "h.sqlite3"
    rng = random.Random(6)
    survivors: dict[int, str] = {}
    kills_mid_stream = 0
    for round_no in range(8):
        proc = _writer(db, round_no)
        assert proc.stdout is not None
        wanted = rng.randint(1, 6)
        streaming_seen = 0
        done_here: dict[int, str] = {}
        for line in proc.stdout:
            kind, message_id, *rest = line.split()
            if kind == "done":
                done_here[int(message_id)] = rest[0]
            elif kind == "streaming":
                streaming_seen += 1
                if streaming_seen >= wanted:
                    time.sleep(rng.random() * 0.01)
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        # What the killed process wrote out after our last read still counts.
        for line in proc.stdout.read().splitlines():
            kind, message_id, *rest = line.split()
            if kind == "done":
                done_here[int(message_id)] = rest[0]
        proc.stdout.close()
        survivors.update(done_here)

        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        with HistoryStore(db) as s:  # recovery marks the killed answer interrupted
            assert s.integrity_check() == "ok"
            for message_id, digest in survivors.items():
                message = s.message(message_id)
                assert message is not None, f"completed answer {message_id} lost"
                assert message.status == "complete"
                assert hashlib.sha256(message.content.encode()).hexdigest() == digest
            statuses = {
                m.status for c in s.list_conversations(limit=10_000) for m in s.messages(c.id)
            }
            assert "streaming" not in statuses
            interrupted = [
                m
                for c in s.list_conversations(limit=10_000)
                for m in s.messages(c.id)
                if m.status == "interrupted"
            ]
            kills_mid_stream = len(interrupted)
    # Most kills land mid-answer (an answer streams far longer than it commits).
    assert kills_mid_stream >= 4
    assert len(survivors) >= 8


def test_title_from_prompt() -> None:
    assert title_from_prompt("  hello\nworld") == "hello"
    assert title_from_prompt("") == "New chat"
    long = "word " * 30
    t = title_from_prompt(long, limit=20)
    assert t.endswith("…") and len(t) <= 21


def test_async_history_runs_off_the_loop(tmp_path: Path, arun: Any) -> None:
    import asyncio

    async def main() -> list[str]:
        h = history_mod.AsyncHistory(HistoryStore(tmp_path / "a.sqlite3"))
        c = await h.call(h.store.create_conversation, "async")
        thread_names = await asyncio.gather(
            *(h.call(lambda: threading.current_thread().name) for _ in range(3))
        )
        await h.call(h.store.add_message, c.id, "user", "hi")
        assert [m.content for m in await h.call(h.store.messages, c.id)] == ["hi"]
        h.close()
        return list(thread_names)

    # On the session's app loop: the test session runs one, so asyncio.run()
    # would refuse to start a second loop in this thread.
    names = arun(main())
    assert all(n.startswith("history") for n in names)
