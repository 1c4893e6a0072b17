"""Writing the chat into the conversation history as it happens.

:class:`ConversationRecorder` is the chat panel's history service: every
write runs on the history's worker thread (through
:class:`~gemma_desktop.core.chat.history.AsyncHistory`), queued behind the
one before it, and the UI thread only buffers answer text. A panel built
without a history records nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gemma_desktop.core.chat.attachments import StoredAttachment
from gemma_desktop.core.chat.conversation import continues_from
from gemma_desktop.core.chat.history import (
    AnswerWriter,
    AsyncHistory,
    Conversation,
    Message,
    MessageStatus,
    title_from_prompt,
)
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.events import Event

log = logging.getLogger(__name__)


@dataclass
class _Ref:
    """A message's id in the history, known once its write has run."""

    id: int | None = None


@dataclass
class _Record:
    """The conversation being recorded (its id is known once it is created)."""

    id: int | None = None
    system_prompt: str | None = None


@dataclass
class _Answer:
    """The answer streaming into the history."""

    record: _Record
    refs: list[_Ref]
    #: Text and thinking that came before the writer existed.
    parts: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    has_text: bool = False
    writer: AnswerWriter | None = None
    flushing: bool = False


class ConversationRecorder:
    """Writes the chat into the conversation history as it happens.

    Every write runs on the history's worker thread, queued behind the one
    before it, so a message is written after the conversation it belongs to
    and before the next; the UI thread only buffers text. Ids the database
    hands out (conversation, messages) are filled in when their write runs, so
    later writes (Regenerate deletes the old answer) find them.

    Events (:class:`~gemma_desktop.core.events.Event`):
        changed(): a conversation was created, or a message written or removed.
        failed(str): a write failed (reason and hint, for the chat's status line).
    """

    def __init__(self, history: AsyncHistory) -> None:
        self.history = history
        self.changed = Event("history changed")
        self.failed = Event("history write failed")
        self._record = _Record()
        self._refs: list[_Ref] = []  # one per ChatPanel.conversation entry
        self._answer: _Answer | None = None
        self._last: asyncio.Future[None] | None = None

    @property
    def conversation_id(self) -> int | None:
        """The recorded conversation (``None`` before its first message is written)."""
        return self._record.id

    @property
    def message_ids(self) -> list[int | None]:
        return [ref.id for ref in self._refs]

    async def idle(self) -> None:
        """Wait until every queued write has run."""
        while self._last is not None and not self._last.done():
            await asyncio.wait([self._last])

    def _queue(self, op: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        previous = self._last

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            try:
                await op()
            except Exception as exc:
                if isinstance(exc, GemmaDesktopError):
                    log.warning("history: %s", exc.reason)
                    self.failed.emit(f"History: {exc.reason} {exc.hint}".strip())
                else:
                    log.exception("writing the conversation history failed")
                    self.failed.emit("History: the conversation could not be saved (see the log).")

        task = asyncio.ensure_future(run())
        self._last = task
        return task

    # --- what the chat does ------------------------------------------------------------

    def start_new(self) -> None:
        """The next message starts a new conversation."""
        self._record = _Record()
        self._refs = []

    def add_user(
        self,
        text: str,
        *,
        model_id: str | None,
        system_prompt: str | None,
        attachments: Sequence[StoredAttachment] = (),
    ) -> None:
        """A user message; the first one creates the conversation, titled after it (or
        after its first attachment when it has no text). ``attachments`` are files
        already in the history's attachment store."""
        record, ref, store = self._record, _Ref(), self.history.store
        self._refs.append(ref)
        files = tuple(attachments)
        title = title_from_prompt(text) if text.strip() or not files else files[0].name

        async def op() -> None:
            if record.id is None:
                created = await self.history.call(
                    functools.partial(
                        store.create_conversation,
                        title,
                        model_id=model_id,
                        system_prompt=system_prompt,
                    )
                )
                record.id = created.id
                record.system_prompt = system_prompt
            elif system_prompt != record.system_prompt:
                await self.history.call(store.set_system_prompt, record.id, system_prompt)
                record.system_prompt = system_prompt
            message = await self.history.call(
                functools.partial(store.add_message, record.id, "user", text, attachments=files)
            )
            ref.id = message.id
            self.changed.emit()

        self._queue(op)

    def begin_answer(self, *, model_id: str | None) -> None:
        """An answer starts streaming: it is written as ``streaming`` right away."""
        answer = _Answer(self._record, self._refs)
        self._answer = answer
        store = self.history.store

        async def op() -> None:
            if answer.record.id is None:
                return  # the conversation could not be created (already reported)
            writer = await self.history.call(
                functools.partial(store.begin_answer, answer.record.id, model_id=model_id)
            )
            writer.append_thinking("".join(answer.thinking))
            writer.append("".join(answer.parts))
            answer.parts.clear()
            answer.thinking.clear()
            answer.writer = writer

        self._queue(op)

    def append(self, text: str) -> None:
        """Answer text (on the UI thread: buffers, and queues a flush about once a second)."""
        answer = self._answer
        if answer is None:
            return
        answer.has_text = answer.has_text or bool(text)
        if answer.writer is not None:
            answer.writer.append(text)
        else:
            answer.parts.append(text)  # handed to the writer once it exists
        self._maybe_flush(answer)

    def append_thinking(self, text: str) -> None:
        """Thinking text of the answer (kept apart from it; buffered like :meth:`append`)."""
        answer = self._answer
        if answer is None:
            return
        if answer.writer is not None:
            answer.writer.append_thinking(text)
        else:
            answer.thinking.append(text)
        self._maybe_flush(answer)

    def _maybe_flush(self, answer: _Answer) -> None:
        writer = answer.writer
        if writer is None:
            return
        if not answer.flushing and writer.flush_due():
            answer.flushing = True

            async def op() -> None:
                try:
                    await self.history.call(writer.flush)
                finally:
                    answer.flushing = False

            self._queue(op)

    def end_answer(self, status: MessageStatus, stats: dict[str, Any] | None) -> None:
        """The answer ended; an answer without text is removed instead of kept (its
        thinking alone has nothing to continue from)."""
        answer, self._answer = self._answer, None
        if answer is None:
            return
        keep = answer.has_text
        ref = _Ref()
        if keep:
            answer.refs.append(ref)
        store = self.history.store

        async def op() -> None:
            writer = answer.writer
            if writer is None:
                return
            if keep:
                await self.history.call(writer.finish, status, stats)
                ref.id = writer.message_id
            else:
                await self.history.call(
                    store.delete_messages_from, writer.conversation_id, writer.message_id
                )
            self.changed.emit()

        self._queue(op)

    def truncate(self, index: int, *, drop_if_empty: bool = False) -> None:
        """Remove the messages from ``index`` on (Regenerate, Edit last).

        With ``drop_if_empty`` a conversation left without messages is deleted too.
        """
        removed = self._refs[index:]
        del self._refs[index:]
        if not removed:
            return
        record, store = self._record, self.history.store

        async def op() -> None:
            ids = [ref.id for ref in removed if ref.id is not None]
            if record.id is None:
                return
            if ids:
                await self.history.call(store.delete_messages_from, record.id, min(ids))
            if drop_if_empty:
                left = await self.history.call(store.conversation, record.id)
                if left.message_count == 0:
                    await self.history.call(store.delete_conversation, record.id)
                    record.id = None
            self.changed.emit()

        self._queue(op)

    def let_go(self, attachments: Sequence[StoredAttachment]) -> None:
        """The chat no longer shows or drafts these files: the history removes those no
        message refers to (queued behind the writes before it, so a message being
        written keeps its files)."""
        files, store = tuple(attachments), self.history.store
        if not files:
            return

        async def op() -> None:
            await self.history.call(store.remove_unused_attachments, files)

        self._queue(op)

    async def open(self, conversation_id: int) -> tuple[Conversation, list[Message]]:
        """Continue ``conversation_id``: returns it and the messages the chat shows."""
        await self.idle()
        store = self.history.store
        conversation = await self.history.call(store.conversation, conversation_id)
        stored = await self.history.call(store.messages, conversation_id)
        messages = [m for m in stored if continues_from(m)]
        self._record = _Record(conversation.id, conversation.system_prompt)
        self._refs = [_Ref(m.id) for m in messages]
        return conversation, messages
