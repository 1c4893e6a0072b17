"""Conversation history: conversations and their messages in SQLite.

The database lives in :func:`gemma_desktop.core.paths.data_dir` as
``history.sqlite3``. Durability promise: a crash, a ``kill -9`` or a power
loss while an answer streams loses at most the part of that answer written
since its last flush, and the file always passes ``PRAGMA integrity_check``.
That is why the database runs in WAL mode with ``synchronous=FULL``: in WAL
mode ``NORMAL`` already survives a killed process, but only ``FULL`` makes a
commit survive a power cut too. The price is one fsync per commit, and the app
commits rarely (a message, or a streaming flush about once a second).

Concurrency: every write is a ``BEGIN IMMEDIATE`` transaction and every
connection waits up to :data:`BUSY_TIMEOUT_MS` for another writer, so two
windows, two processes or a CLI export can share the file.

Every method blocks (disk, fsync, locks). From async code run them in an
executor; :class:`AsyncHistory` does that on one dedicated worker thread, so
writes keep their order and the event loop never waits on the disk. A
:class:`HistoryStore` is safe to share between threads (one lock around its
connection).

Streaming answers: :meth:`HistoryStore.begin_answer` inserts the assistant
message as ``streaming``; :class:`AnswerWriter` collects the text without any
I/O and writes it on :meth:`AnswerWriter.flush` (call it when
:meth:`AnswerWriter.flush_due` says so) and on :meth:`AnswerWriter.finish`,
which marks the message ``complete`` (or ``stopped``/``error``) in the same
transaction as its last text. A message still ``streaming`` when a store
opens belonged to a process that died: it is marked ``interrupted`` and kept.

Schema versions (``PRAGMA user_version``):

1. ``conversations`` and ``messages`` (role, content, created_at).
2. Adds each message's ``status``, ``model_id`` and ``stats`` (JSON), the
   conversation's ``model_id`` and ``system_prompt``, and the FTS5 index
   ``messages_fts`` kept in step by triggers.
3. Adds each answer's ``thinking`` (shown apart, never sent back) and the
   ``attachments`` table: a message's images and sound clips, in order, by
   the sha256 of their file in the attachment store
   (:mod:`gemma_desktop.core.chat.attachments`).

Attachments: a message's files are written completely into the store before
the message that refers to them is committed, and removed only after the last
message that refers to them is deleted (under the store's cross-process lock),
so a crash never leaves a message pointing at a missing or partial file.
Deleting a conversation removes the files no other message uses; exports copy
the files beside the exported document.

:data:`MIGRATIONS` upgrades an older file in place, in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

from gemma_desktop import APP_NAME, __version__
from gemma_desktop.core import paths
from gemma_desktop.core.chat.attachments import (
    AttachmentStore,
    StoredAttachment,
    format_duration,
)
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.fsutil import atomic_copy, atomic_write, fsync_dir

T = TypeVar("T")

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 10_000
DB_NAME = "history.sqlite3"
#: The attachment store's folder, beside the database.
ATTACHMENTS_DIR = "attachments"
#: Seconds between writes of a streaming answer; at most this much text is lost on a crash.
DEFAULT_FLUSH_INTERVAL_S = 1.0

MessageRole = Literal["system", "user", "assistant"]
MessageStatus = Literal["complete", "streaming", "interrupted", "stopped", "error"]
_ROLES = frozenset({"system", "user", "assistant"})
_FINAL_STATUSES = frozenset({"complete", "stopped", "error"})


class HistoryError(GemmaDesktopError):
    """The history database cannot be opened, read or written."""


class ConversationNotFoundError(HistoryError):
    """No conversation with that id (deleted meanwhile, perhaps in another window)."""


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created_at: float
    updated_at: float
    model_id: str | None = None
    system_prompt: str | None = None
    message_count: int = 0


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    role: MessageRole
    content: str
    created_at: float
    status: MessageStatus = "complete"
    model_id: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    #: An answer's thinking (shown apart from it, never sent back to the model).
    thinking: str = ""
    attachments: tuple[StoredAttachment, ...] = ()


@dataclass(frozen=True)
class SearchHit:
    """A message that matches a search; ``snippet`` marks the match with ``[`` ``]``."""

    conversation_id: int
    conversation_title: str
    message_id: int
    role: MessageRole
    snippet: str
    created_at: float


# --- schema --------------------------------------------------------------------------

_SCHEMA_V2 = """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    model_id TEXT,
    system_prompt TEXT
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'complete',
    model_id TEXT,
    stats TEXT
);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
CREATE INDEX conversations_by_update ON conversations(updated_at);
"""

#: The full-text index and the triggers that keep it in step (schema 2).
_FTS = """
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content='messages', content_rowid='id', tokenize='unicode61'
);
CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_au AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
"""


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE messages ADD COLUMN status TEXT NOT NULL DEFAULT 'complete'")
    conn.execute("ALTER TABLE messages ADD COLUMN model_id TEXT")
    conn.execute("ALTER TABLE messages ADD COLUMN stats TEXT")
    conn.execute("ALTER TABLE conversations ADD COLUMN model_id TEXT")
    conn.execute("ALTER TABLE conversations ADD COLUMN system_prompt TEXT")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations(updated_at)")
    _executescript_in_tx(conn, _FTS)
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")


_ATTACHMENTS = """
CREATE TABLE attachments (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('image', 'audio')),
    mime TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    meta TEXT,
    PRIMARY KEY (message_id, position)
);
CREATE INDEX attachments_by_sha ON attachments(sha256);
"""


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE messages ADD COLUMN thinking TEXT NOT NULL DEFAULT ''")
    _executescript_in_tx(conn, _ATTACHMENTS)


#: ``from_version -> step`` that brings a database to ``from_version + 1``.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
}


def _executescript_in_tx(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT first; run the statements one by one instead.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""


def default_path() -> Path:
    """``data_dir()/history.sqlite3``."""
    return paths.data_dir() / DB_NAME


def fts_query(text: str) -> str:
    """User text as a safe FTS5 query: every word must match, the last as a prefix."""
    words = [w for w in text.replace('"', " ").split() if w]
    if not words:
        return ""
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " ".join(quoted)


# --- the store ---------------------------------------------------------------------------


class HistoryStore:
    """The conversation history database (see the module docstring).

    Blocking; thread-safe. Close it with :meth:`close` or use it as a context
    manager.
    """

    def __init__(self, path: Path | None = None, *, recover: bool = True) -> None:
        self.path = path or default_path()
        #: The attachment files, in a folder beside the database.
        self.attachments = AttachmentStore(self.path.parent / ATTACHMENTS_DIR)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # explicit BEGIN IMMEDIATE / COMMIT below
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._error("open", exc) from exc
        try:
            self._configure()
            self._migrate()
            if recover:
                self.recover_interrupted()
                self.sweep_attachments()
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error("open", exc) from exc

    # -- connection --------------------------------------------------------------

    def _error(self, action: str, exc: BaseException) -> HistoryError:
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and (
            "not a database" in text or "malformed" in text
        ):
            return HistoryError(
                f"The conversation history {self.path} is damaged ({text}).",
                "Move the file aside (conversations in it are then not shown) and restart; "
                "`sqlite3 FILE .recover` may rescue its contents.",
            )
        if "locked" in text or "busy" in text:
            return HistoryError(
                f"The conversation history is busy ({text}).",
                "Another Gemma Desktop process holds it; close it or try again.",
            )
        return HistoryError(
            f"Could not {action} the conversation history {self.path}: {text}",
            "Check that the data folder is writable and the disk is not full.",
        )

    def _configure(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HistoryError(
                f"The history database {self.path} cannot use write-ahead logging ({mode}).",
                "Keep the data folder on a local file system (not a network share).",
            )
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``) so it never deadlocks."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error("write", exc) from exc
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise self._error("write", exc) from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc

    def _migrate(self) -> None:
        with self._write() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION:
                raise HistoryError(
                    f"The conversation history {self.path} was written by a newer Gemma "
                    f"Desktop (schema {version}; this version reads up to {SCHEMA_VERSION}).",
                    "Update Gemma Desktop, or move the file aside to start a new history.",
                )
            if version == 0 and not _has_table(conn, "conversations"):
                _executescript_in_tx(conn, _SCHEMA_V2)
                _executescript_in_tx(conn, _FTS)
                version = 2
            version = max(version, 1)
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` (``"ok"`` when sound) plus the FTS index check."""
        with self._read() as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            result = "; ".join(str(r[0]) for r in rows)
            try:
                conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
            except sqlite3.DatabaseError as exc:
                return f"{result}; fts: {exc}"
            return result

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- conversations -------------------------------------------------------------

    def create_conversation(
        self,
        title: str = "New chat",
        *,
        model_id: str | None = None,
        system_prompt: str | None = None,
    ) -> Conversation:
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO conversations (title, created_at, updated_at, model_id, "
                "system_prompt) VALUES (?, ?, ?, ?, ?)",
                (_clean_title(title), now, now, model_id, system_prompt),
            )
            conversation_id = int(cur.lastrowid or 0)
        return self.conversation(conversation_id)

    def conversation(self, conversation_id: int) -> Conversation:
        with self._read() as conn:
            row = conn.execute(
                "SELECT c.id, c.title, c.created_at, c.updated_at, c.model_id, c.system_prompt, "
                "(SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) "
                "FROM conversations c WHERE c.id = ?",
                (conversation_id,),
            ).fetchone()
        if row is None:
            raise ConversationNotFoundError(
                f"Conversation {conversation_id} does not exist.",
                "It may have been deleted in another window.",
            )
        return Conversation(*row)

    def list_conversations(self, limit: int = 200, offset: int = 0) -> list[Conversation]:
        """Most recently active first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT c.id, c.title, c.created_at, c.updated_at, c.model_id, c.system_prompt, "
                "(SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) "
                "FROM conversations c ORDER BY c.updated_at DESC, c.id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [Conversation(*row) for row in rows]

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE conversations SET title = ? WHERE id = ?",
                (_clean_title(title), conversation_id),
            )
            if cur.rowcount == 0:
                raise ConversationNotFoundError(
                    f"Conversation {conversation_id} does not exist.", ""
                )

    def set_system_prompt(self, conversation_id: int, system_prompt: str | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE conversations SET system_prompt = ? WHERE id = ?",
                (system_prompt, conversation_id),
            )

    def delete_conversation(self, conversation_id: int) -> bool:
        """Delete a conversation and its messages, and the attachment files no other
        message uses; ``False`` when it did not exist."""
        with self.attachments.lock():
            with self._write() as conn:
                shas = _shas(
                    conn,
                    "SELECT DISTINCT a.sha256 FROM attachments a "
                    "JOIN messages m ON m.id = a.message_id WHERE m.conversation_id = ?",
                    (conversation_id,),
                )
                cur = conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
                deleted = cur.rowcount > 0
            self._remove_unused(shas)
        return deleted

    def _remove_unused(self, shas: set[str]) -> None:
        """After a committed deletion (under the attachment lock): remove the files of
        ``shas`` that no message refers to any more."""
        if not shas:
            return
        with self._read() as conn:
            used = _shas(
                conn,
                f"SELECT DISTINCT sha256 FROM attachments WHERE sha256 IN "
                f"({', '.join('?' * len(shas))})",
                tuple(shas),
            )
        for sha in shas - used:
            self.attachments.remove(sha)

    def remove_unused_attachments(self, attachments: Sequence[StoredAttachment]) -> None:
        """The chat let go of these files (a draft removed, a conversation closed): remove
        those no message refers to and nothing else holds."""
        with self.attachments.lock():
            self._remove_unused({a.sha256 for a in attachments})

    def sweep_attachments(self) -> int:
        """Remove attachment files a crash left behind (old temporary files, old files no
        message refers to); returns how many."""
        with self.attachments.lock():
            return self.attachments.sweep(self.referenced_shas())

    # -- messages ---------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: MessageRole,
        content: str,
        *,
        model_id: str | None = None,
        status: MessageStatus = "complete",
        stats: dict[str, Any] | None = None,
        attachments: Sequence[StoredAttachment] = (),
        thinking: str = "",
    ) -> Message:
        """Append a finished message (a user turn, or a whole answer) in one commit.

        ``attachments`` must already be in :attr:`attachments` (written by
        :meth:`AttachmentStore.put`); a file that is missing or partial is refused
        (:class:`HistoryError`) and nothing is written.
        """
        if role not in _ROLES:
            raise ValueError(f"unknown role {role!r}")
        now = time.time()
        with self.attachments.lock() if attachments else contextlib.nullcontext():
            for attachment in attachments:
                if not self.attachments.is_complete(attachment):
                    raise HistoryError(
                        f"The attached file {attachment.name} is missing from "
                        f"{self.attachments.objects}.",
                        "Attach it again and resend the message.",
                    )
            with self._write() as conn:
                try:
                    cur = conn.execute(
                        "INSERT INTO messages (conversation_id, role, content, created_at, "
                        "status, model_id, stats, thinking) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            conversation_id,
                            role,
                            content,
                            now,
                            status,
                            model_id,
                            json.dumps(stats) if stats else None,
                            thinking,
                        ),
                    )
                except sqlite3.IntegrityError as exc:
                    raise ConversationNotFoundError(
                        f"Conversation {conversation_id} does not exist.",
                        "It may have been deleted in another window.",
                    ) from exc
                message_id = int(cur.lastrowid or 0)
                conn.executemany(
                    "INSERT INTO attachments (message_id, position, sha256, kind, mime, name, "
                    "size, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            message_id,
                            position,
                            a.sha256,
                            a.kind,
                            a.mime,
                            a.name,
                            a.size,
                            json.dumps(a.meta) if a.meta else None,
                        )
                        for position, a in enumerate(attachments)
                    ],
                )
                conn.execute(
                    "UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id)
                )
        return Message(
            message_id,
            conversation_id,
            role,
            content,
            now,
            status,
            model_id,
            stats or {},
            thinking,
            tuple(attachments),
        )

    def messages(self, conversation_id: int) -> list[Message]:
        """The conversation's messages in order, with their attachments."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
            files = self._attachments_of(
                conn,
                "SELECT a.message_id, a.sha256, a.kind, a.mime, a.name, a.size, a.meta "
                "FROM attachments a JOIN messages m ON m.id = a.message_id "
                "WHERE m.conversation_id = ? ORDER BY a.message_id, a.position",
                (conversation_id,),
            )
        return [_message(row, files.get(row[0], ())) for row in rows]

    def message(self, message_id: int) -> Message | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            files = self._attachments_of(
                conn,
                "SELECT message_id, sha256, kind, mime, name, size, meta FROM attachments "
                "WHERE message_id = ? ORDER BY position",
                (message_id,),
            )
        return _message(row, files.get(message_id, ())) if row else None

    def _attachments_of(
        self, conn: sqlite3.Connection, query: str, args: tuple[Any, ...]
    ) -> dict[int, tuple[StoredAttachment, ...]]:
        found: dict[int, list[StoredAttachment]] = {}
        for message_id, sha, kind, mime, name, size, meta in conn.execute(query, args):
            facts = json.loads(meta) if meta else {}
            found.setdefault(message_id, []).append(
                StoredAttachment(
                    sha256=sha,
                    kind=kind,
                    mime=mime,
                    name=name,
                    size=size,
                    path=self.attachments.path_for(sha, mime),
                    width=facts.get("width"),
                    height=facts.get("height"),
                    duration_s=facts.get("duration_s"),
                )
            )
        return {key: tuple(value) for key, value in found.items()}

    def referenced_shas(self) -> set[str]:
        """The sha256 of every attachment file a message refers to."""
        with self._read() as conn:
            return _shas(conn, "SELECT DISTINCT sha256 FROM attachments", ())

    def delete_messages_from(self, conversation_id: int, message_id: int) -> int:
        """Delete ``message_id`` and every later message (regenerate, edit and resend),
        and the attachment files no other message uses."""
        with self.attachments.lock():
            with self._write() as conn:
                shas = _shas(
                    conn,
                    "SELECT DISTINCT a.sha256 FROM attachments a "
                    "JOIN messages m ON m.id = a.message_id "
                    "WHERE m.conversation_id = ? AND m.id >= ?",
                    (conversation_id, message_id),
                )
                cur = conn.execute(
                    "DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                    (conversation_id, message_id),
                )
                count = cur.rowcount
            self._remove_unused(shas)
        return count

    def begin_answer(self, conversation_id: int, *, model_id: str | None = None) -> AnswerWriter:
        """Insert an empty ``streaming`` assistant message and return its writer."""
        message = self.add_message(
            conversation_id, "assistant", "", model_id=model_id, status="streaming"
        )
        return AnswerWriter(self, message.id, conversation_id)

    def _write_answer(
        self,
        message_id: int,
        conversation_id: int,
        content: str,
        status: MessageStatus,
        stats: dict[str, Any] | None,
        thinking: str = "",
    ) -> None:
        now = time.time()
        with self._write() as conn:
            if stats is None:
                conn.execute(
                    "UPDATE messages SET content = ?, status = ?, thinking = ? WHERE id = ?",
                    (content, status, thinking, message_id),
                )
            else:
                conn.execute(
                    "UPDATE messages SET content = ?, status = ?, stats = ?, thinking = ? "
                    "WHERE id = ?",
                    (content, status, json.dumps(stats), thinking, message_id),
                )
            conn.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id)
            )

    def recover_interrupted(self) -> int:
        """Mark answers left ``streaming`` by a dead process as ``interrupted``.

        Only call it when no other live process streams into this file (the app
        is single-instance; :class:`HistoryStore` does it on open).
        """
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'"
            )
            return cur.rowcount

    # -- search ---------------------------------------------------------------------

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Full-text search over messages (every word, the last one as a prefix),
        best match first; conversation titles that match come too."""
        query = fts_query(text)
        if not query:
            return []
        with self._read() as conn:
            rows = conn.execute(
                "SELECT m.conversation_id, c.title, m.id, m.role, "
                "snippet(messages_fts, 0, '[', ']', '…', 12), m.created_at "
                "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
                "JOIN conversations c ON c.id = m.conversation_id "
                "WHERE messages_fts MATCH ? ORDER BY bm25(messages_fts) LIMIT ?",
                (query, limit),
            ).fetchall()
            hits = [SearchHit(*row) for row in rows]
            seen = {h.conversation_id for h in hits}
            like = "%" + text.strip().replace("\\", "\\\\").replace("%", "\\%") + "%"
            for cid, title, created in conn.execute(
                "SELECT id, title, created_at FROM conversations "
                "WHERE title LIKE ? ESCAPE '\\' ORDER BY updated_at DESC LIMIT ?",
                (like.replace("_", "\\_"), limit),
            ).fetchall():
                if cid not in seen:
                    hits.append(SearchHit(cid, title, 0, "user", title, created))
        return hits[:limit]

    # -- export -----------------------------------------------------------------------

    def export_json(
        self, conversation_id: int, files: dict[tuple[int, int], str] | None = None
    ) -> dict[str, Any]:
        """The conversation as JSON; ``files`` maps ``(message id, position)`` to the path
        (relative to the export) of each attachment's copy."""
        conversation = self.conversation(conversation_id)
        files = files or {}
        messages = []
        for m in self.messages(conversation_id):
            entry: dict[str, Any] = {
                "role": m.role,
                "content": m.content,
                "created_at": _iso(m.created_at),
                "status": m.status,
                "model_id": m.model_id,
                "stats": m.stats,
            }
            if m.thinking:
                entry["thinking"] = m.thinking
            if m.attachments:
                entry["attachments"] = [
                    {
                        "kind": a.kind,
                        "mime": a.mime,
                        "name": a.name,
                        "file": files.get((m.id, position)),
                        "sha256": a.sha256,
                        "size": a.size,
                        **a.meta,
                    }
                    for position, a in enumerate(m.attachments)
                ]
            messages.append(entry)
        return {
            "format": "gemma-desktop-conversation",
            "format_version": 2,
            "exported_by": f"{APP_NAME} {__version__}",
            "conversation": {
                "id": conversation.id,
                "title": conversation.title,
                "created_at": _iso(conversation.created_at),
                "updated_at": _iso(conversation.updated_at),
                "model_id": conversation.model_id,
                "system_prompt": conversation.system_prompt,
            },
            "messages": messages,
        }

    def export_markdown(
        self, conversation_id: int, files: dict[tuple[int, int], str] | None = None
    ) -> str:
        """The conversation as Markdown; attachments link to ``files`` (see :meth:`export_json`)."""
        conversation = self.conversation(conversation_id)
        files = files or {}
        lines = [f"# {conversation.title}", ""]
        meta = [
            f"Exported from {APP_NAME} {__version__}",
            f"started {_iso(conversation.created_at)}",
        ]
        if conversation.model_id:
            meta.append(f"model `{conversation.model_id}`")
        lines += ["*" + ", ".join(meta) + "*", ""]
        if conversation.system_prompt:
            lines += ["## System", "", conversation.system_prompt, ""]
        names = {"user": "You", "assistant": "Gemma", "system": "System"}
        for m in self.messages(conversation_id):
            heading = f"## {names[m.role]}"
            if m.status not in ("complete", "streaming"):
                heading += f" ({m.status})"
            lines += [heading, ""]
            for position, a in enumerate(m.attachments):
                link = _markdown_link(files.get((m.id, position)) or a.path.as_uri())
                text = _markdown_text(a.name)
                if a.kind == "image":
                    lines.append(f"![{text}]({link})")
                else:
                    length = f" ({format_duration(a.duration_s)})" if a.duration_s else ""
                    lines.append(f"[Audio: {text}{length}]({link})")
                lines.append("")
            if m.thinking.strip():
                lines += [
                    "<details><summary>Thinking</summary>",
                    "",
                    m.thinking.strip(),
                    "",
                    "</details>",
                    "",
                ]
            lines += [m.content.rstrip(), ""]
        return "\n".join(lines).rstrip() + "\n"

    def export(self, conversation_id: int, target: Path) -> Path:
        """Write the conversation to ``target`` (``.json``, else Markdown), atomically.

        Attachments are copied into a folder beside it, ``<name>_files/``, which the
        document refers to by relative paths.
        """
        files = self._export_files(conversation_id, target)
        if target.suffix.lower() == ".json":
            data = self.export_json(conversation_id, files)
            text = json.dumps(data, indent=2, ensure_ascii=False)
        else:
            text = self.export_markdown(conversation_id, files)
        atomic_write(target, text + ("" if text.endswith("\n") else "\n"))
        return target

    def _export_files(self, conversation_id: int, target: Path) -> dict[tuple[int, int], str]:
        attached = [
            (m.id, position, a)
            for m in self.messages(conversation_id)
            for position, a in enumerate(m.attachments)
        ]
        if not attached:
            return {}
        folder = target.parent / f"{target.stem}_files"
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[tuple[int, int], str] = {}
        for number, (message_id, position, a) in enumerate(attached, start=1):
            name = f"{number:02d}-{_file_name(a.name, a.path.suffix)}"
            try:
                atomic_copy(a.path, folder / name)
            except FileNotFoundError as exc:
                raise HistoryError(
                    f"The attached file {a.name} is missing from {self.attachments.objects}.",
                    "The export was not written; the conversation itself is unchanged.",
                ) from exc
            files[(message_id, position)] = f"{folder.name}/{name}"
        fsync_dir(folder)
        return files


class AnswerWriter:
    """The text of one streaming answer on its way into the history.

    :meth:`append` only buffers (call it from the event loop for each delta);
    :meth:`flush` and :meth:`finish` write and block (run them in the history
    executor). At most the text appended since the last flush is lost on a crash.
    """

    def __init__(
        self,
        store: HistoryStore,
        message_id: int,
        conversation_id: int,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
    ) -> None:
        self.store = store
        self.message_id = message_id
        self.conversation_id = conversation_id
        self.flush_interval_s = flush_interval_s
        self._parts: list[str] = []
        self._thinking: list[str] = []
        self._lock = threading.Lock()
        self._len = 0  # characters appended, answer and thinking
        self._written_len = 0
        self._last_flush = time.monotonic()
        self.finished = False

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)

    @property
    def thinking(self) -> str:
        with self._lock:
            return "".join(self._thinking)

    def append(self, text: str) -> None:
        with self._lock:
            self._parts.append(text)
            self._len += len(text)

    def append_thinking(self, text: str) -> None:
        with self._lock:
            self._thinking.append(text)
            self._len += len(text)

    def flush_due(self) -> bool:
        """Whether text is waiting and the last write is an interval old (cheap: ask it
        per token)."""
        pending = self._len != self._written_len
        return pending and time.monotonic() - self._last_flush >= self.flush_interval_s

    def flush(self) -> None:
        """Write the text so far (status stays ``streaming``)."""
        if self.finished:
            return
        text, thinking = self.text, self.thinking
        self._last_flush = time.monotonic()
        if len(text) + len(thinking) == self._written_len:
            return
        self.store._write_answer(
            self.message_id, self.conversation_id, text, "streaming", None, thinking
        )
        self._written_len = len(text) + len(thinking)

    def finish(
        self, status: MessageStatus = "complete", stats: dict[str, Any] | None = None
    ) -> None:
        """Write the whole answer and its final status in one commit."""
        if status not in _FINAL_STATUSES:
            raise ValueError(f"not a final status: {status!r}")
        self.store._write_answer(
            self.message_id, self.conversation_id, self.text, status, stats or {}, self.thinking
        )
        self.finished = True


class AsyncHistory:
    """Runs :class:`HistoryStore` calls on one dedicated worker thread.

    ``await history.call(store.add_message, cid, "user", text)``: the event loop
    never waits on the disk, and writes keep the order they were issued in.
    """

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, func, *args)

    def close(self) -> None:
        """Finish queued writes, then close the database."""
        self._executor.shutdown(wait=True)
        self.store.close()


# --- helpers --------------------------------------------------------------------------


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


_MESSAGE_COLUMNS = (
    "id, conversation_id, role, content, created_at, status, model_id, stats, thinking"
)


def _message(row: tuple[Any, ...], attachments: tuple[StoredAttachment, ...] = ()) -> Message:
    stats = json.loads(row[7]) if row[7] else {}
    return Message(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], stats, row[8] or "", attachments
    )


def _shas(conn: sqlite3.Connection, query: str, args: tuple[Any, ...]) -> set[str]:
    return {str(row[0]) for row in conn.execute(query, args)}


def _file_name(name: str, suffix: str) -> str:
    """A safe file name for an exported attachment, keeping the stored file's type."""
    stem = re.sub(r"[^\w\- ]+", "", Path(name).stem).strip().replace(" ", "-")[:60] or "file"
    return f"{stem}{suffix}"


def _markdown_link(target: str) -> str:
    return target.replace(" ", "%20").replace("(", "%28").replace(")", "%29")


def _markdown_text(text: str) -> str:
    return re.sub(r"([\\\[\]*_`])", r"\\\1", text)


def _clean_title(title: str) -> str:
    title = " ".join(title.split())
    return title[:200] or "New chat"


def title_from_prompt(prompt: str, limit: int = 60) -> str:
    """A conversation title from its first prompt: the first line, shortened at a word."""
    first = " ".join(prompt.strip().splitlines()[0].split()) if prompt.strip() else ""
    if len(first) <= limit:
        return first or "New chat"
    cut = first[:limit].rsplit(" ", 1)[0]
    return (cut or first[:limit]) + "…"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")
