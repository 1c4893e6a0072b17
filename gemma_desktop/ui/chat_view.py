"""The chat: a transcript that renders streaming Markdown, a composer, and the controls.

:class:`TranscriptView` is one ``QTextBrowser`` for the whole conversation.
Tokens are appended to a buffer (:meth:`TranscriptView.append_delta` costs
O(1)); at most ~30 times a second the buffer is cut into complete Markdown
blocks, each rendered once and inserted at the end of the document, and the
unfinished last block is rendered again in place. The cost of a refresh
depends on the size of the current block, not of the answer, so a
20 000-token answer streams as smoothly at its end as at its start.

:class:`ChatPanel` drives an :class:`~gemma_desktop.ui.engine_host.EngineHost`'s
engine: send, Stop (aborts inside the engine), Regenerate, edit and resend the
last message, New chat, system prompt, sampling controls and live figures.

Signals (ChatPanel):
    answer_finished(ResponseStats): an answer ended (any finish reason).

:class:`ConversationRecorder` writes the chat into the conversation history
(:class:`~gemma_desktop.core.history.AsyncHistory`) as it happens, off the UI
thread; a panel built without a history records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import shiboken6
from PySide6.QtCore import QEvent, QMimeData, QObject, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QColor,
    QDesktopServices,
    QFont,
    QGuiApplication,
    QKeyEvent,
    QKeySequence,
    QShortcut,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
)
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop.core.engine import (
    ChatMessage,
    EngineError,
    EngineState,
    EngineStatus,
    PromptTooLongError,
    ResponseStats,
    SamplingOptions,
    StreamEnd,
    TextDelta,
)
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.history import (
    AnswerWriter,
    AsyncHistory,
    Conversation,
    Message,
    MessageStatus,
    title_from_prompt,
)
from gemma_desktop.ui import theme
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.markdown import (
    CODE_HEADER_STYLE,
    BlockSplitter,
    MarkdownRenderer,
    plain_to_html,
)

log = logging.getLogger(__name__)

#: Refresh interval of the streaming answer (about 30 Hz).
REFRESH_MS = 33
#: Longest a refresh renders before letting the event loop run again.
RENDER_BUDGET_S = 0.016
#: Pause between budgeted refreshes while rendering catches up with a burst.
CATCH_UP_MS = 4
#: User messages longer than this are shown shortened in the transcript (sent in full).
PREVIEW_CHARS = 20_000


@dataclass
class _Message:
    role: str
    start: int  # document position where the message (and its separator) begins


class TranscriptView(QTextBrowser):
    """The conversation as rich text, with an answer that streams in.

    Public slots: :meth:`add_user_message`, :meth:`begin_answer`,
    :meth:`append_delta`, :meth:`flush`, :meth:`end_answer`,
    :meth:`remove_last_message`, :meth:`clear_transcript`.

    Signals:
        code_copied(str): a code block's Copy link put this text on the clipboard.
    """

    code_copied = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("transcript")
        self.setAccessibleName("Conversation")
        self.setOpenLinks(False)
        self.setUndoRedoEnabled(False)
        self.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextBrowserInteraction
            | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        self.document().setDocumentMargin(16)
        self.setPlaceholderText(
            "Start the engine at the top of the window, then type a message below. "
            "Enter sends, Shift+Enter adds a line, Escape stops an answer."
        )
        self.anchorClicked.connect(self._on_anchor)
        self._renderer = MarkdownRenderer()
        self._messages: list[_Message] = []
        self._splitter = BlockSplitter()
        self._pending: list[str] = []
        self._ready: deque[str] = deque()
        self._streaming = False
        self._tail_start = 0
        self._tail_code_id: int | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.flush)
        self.refresh_count = 0
        self.apply_colors()

    # --- appearance -------------------------------------------------------------

    def apply_colors(self) -> None:
        c = theme.colors()
        mono = theme.monospace_font().family()
        self._renderer.set_colors(c.code_bg, c.code_header, c.muted, mono)
        self.document().setDefaultStyleSheet(
            f"pre {{ font-family: '{mono}'; margin: 0; }} code {{ font-family: '{mono}'; }}"
            f"a {{ color: {c.accent}; }} h1, h2, h3 {{ margin-top: 10px; }}"
        )

    def changeEvent(self, event: QEvent) -> None:
        # The desktop switched between light and dark: new text uses the new colours.
        if event.type() == QEvent.Type.PaletteChange:
            self.apply_colors()
        super().changeEvent(event)

    # --- structure ---------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        return self._streaming

    @property
    def message_count(self) -> int:
        return len(self._messages)

    @property
    def last_role(self) -> str | None:
        return self._messages[-1].role if self._messages else None

    def _end_cursor(self) -> QTextCursor:
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        return cursor

    def _new_block(self, cursor: QTextCursor, top_margin: float = 0.0) -> None:
        """Start a clean paragraph, so no formatting leaks from the previous block."""
        block = QTextBlockFormat()
        block.setTopMargin(top_margin)
        cursor.insertBlock(block, QTextCharFormat())

    def _insert_rendered(self, cursor: QTextCursor, html_text: str) -> None:
        """Insert a rendered Markdown block into the (empty) block at ``cursor``.

        Qt puts a list into a block of its own and leaves the empty block it was
        inserted into behind; that blank line is merged away.
        """
        start = cursor.position()
        cursor.insertHtml(html_text)
        block = self.document().findBlock(start)
        if html_text.startswith(f'<p style="{CODE_HEADER_STYLE}'):
            # insertHtml merged the header into the existing block, keeping that
            # block's format: give it the header's band.
            band = QTextBlockFormat()
            band.setBackground(QColor(theme.colors().code_header))
            band.setTopMargin(8.0)
            QTextCursor(block).mergeBlockFormat(band)
        following = block.next()
        if (
            block.length() == 1
            and block.textList() is None
            and following.isValid()
            and following.textList() is not None
            and block.position() > 0
        ):
            eraser = QTextCursor(self.document())
            eraser.setPosition(block.position() - 1)
            eraser.deleteChar()

    def _begin_message(self, role: str, title: str) -> QTextCursor:
        at_bottom = self._at_bottom()
        cursor = self._end_cursor()
        start = cursor.position()
        if not self.document().isEmpty():
            self._new_block(cursor, top_margin=18.0)
        c = theme.colors()
        header = QTextCharFormat()
        header.setForeground(QColor(c.accent if role == "assistant" else c.muted))
        header.setFontWeight(QFont.Weight.DemiBold)
        cursor.insertText(title, header)
        self._new_block(cursor, top_margin=4.0)
        self._messages.append(_Message(role, start))
        if at_bottom:
            self._scroll_to_end()
        return cursor

    def add_user_message(self, text: str) -> None:
        cursor = self._begin_message("user", "You")
        shown = text
        if len(text) > PREVIEW_CHARS:
            shown = (
                text[:PREVIEW_CHARS]
                + f"\n… ({len(text):,} characters in all; the rest is not shown here)"
            )
        cursor.insertHtml(plain_to_html(shown))
        self._scroll_to_end()

    def add_assistant_message(self, text: str) -> None:
        """A finished answer (from history, or an engine that does not stream)."""
        self.begin_answer()
        self.append_delta(text)
        self.end_answer()

    def add_notice(self, html_text: str) -> None:
        """A muted line under the last message (errors, figures)."""
        cursor = self._end_cursor()
        self._new_block(cursor, top_margin=6.0)
        cursor.insertHtml(f'<span style="color:{theme.colors().muted};">{html_text}</span>')
        self._scroll_to_end()

    def begin_answer(self, title: str = "Gemma") -> None:
        if self._streaming:
            self.end_answer()
        cursor = self._begin_message("assistant", title)
        self._splitter = BlockSplitter()
        self._pending.clear()
        self._ready.clear()
        self._tail_start = cursor.position()
        self._tail_code_id = None
        self._streaming = True

    def append_delta(self, text: str) -> None:
        """Queue new answer text; it is rendered at the next refresh."""
        if not self._streaming or not text:
            return
        self._pending.append(text)
        if not self._timer.isActive():
            self._timer.start(REFRESH_MS)

    def flush(self) -> None:
        """Render what arrived since the last refresh (complete blocks once, tail again).

        Rendering stops after :data:`RENDER_BUDGET_S`; blocks left over are
        rendered after a short pause (:data:`CATCH_UP_MS`), so a burst of text never
        holds the window for long.
        """
        self._timer.stop()
        if not self._streaming:
            return
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._ready.extend(self._splitter.feed(text))
        elif not self._ready:
            return
        self._render(self._splitter.tail, deadline=time.perf_counter() + RENDER_BUDGET_S)
        if self._ready:
            self._timer.start(CATCH_UP_MS)

    def _render(self, tail: str, deadline: float | None = None) -> None:
        at_bottom = self._at_bottom()
        cursor = QTextCursor(self.document())
        cursor.beginEditBlock()
        cursor.setPosition(self._tail_start)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        while self._ready:
            block = self._ready.popleft()
            self._insert_rendered(cursor, self._renderer.render(block, code_id=self._tail_code_id))
            self._tail_code_id = None
            self._new_block(cursor, top_margin=6.0)
            if deadline is not None and time.perf_counter() > deadline:
                break
        self._tail_start = cursor.position()
        if tail.strip() and not self._ready:
            if self._splitter.in_code and self._tail_code_id is None:
                self._tail_code_id = self._renderer.new_code_id()
            self._insert_rendered(cursor, self._renderer.render(tail, code_id=self._tail_code_id))
        cursor.endEditBlock()
        self.refresh_count += 1
        if at_bottom:
            self._scroll_to_end()

    def end_answer(self, footer: str | None = None) -> None:
        """The answer ended: render the rest and add ``footer`` (figures) under it."""
        if not self._streaming:
            return
        self._timer.stop()
        text = "".join(self._pending)
        self._pending.clear()
        self._ready.extend(self._splitter.feed(text))
        rest = self._splitter.finish()
        if rest.strip():
            self._ready.append(rest)
        self._render("")
        self._streaming = False
        self._drop_trailing_empty_block()
        if footer:
            self.add_notice(footer)

    def _drop_trailing_empty_block(self) -> None:
        last = self.document().lastBlock()
        if last.length() == 1 and last.position() > 0 and last.textList() is None:
            cursor = self._end_cursor()
            cursor.deletePreviousChar()

    def remove_last_message(self) -> str | None:
        """Remove the last message from the view; returns its role."""
        if not self._messages:
            return None
        if self._streaming:
            self._timer.stop()
            self._pending.clear()
            self._ready.clear()
            self._streaming = False
        message = self._messages.pop()
        cursor = QTextCursor(self.document())
        cursor.setPosition(message.start)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        return message.role

    def clear_transcript(self) -> None:
        self._timer.stop()
        self._pending.clear()
        self._ready.clear()
        self._streaming = False
        self._messages.clear()
        self._renderer.reset()
        self.clear()

    # --- helpers -------------------------------------------------------------------

    def _at_bottom(self) -> bool:
        bar = self.verticalScrollBar()
        return bar.value() >= bar.maximum() - 40

    def _scroll_to_end(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def code_block(self, code_id: int) -> str | None:
        return self._renderer.code_blocks.get(code_id)

    def copy_code(self, code_id: int) -> None:
        code = self.code_block(code_id)
        if code is not None:
            QGuiApplication.clipboard().setText(code)
            self.code_copied.emit(code)

    def _on_anchor(self, url: QUrl) -> None:
        if url.scheme() == "copy":
            with contextlib.suppress(ValueError):
                self.copy_code(int(url.path()))
        elif url.scheme() in ("http", "https"):
            QDesktopServices.openUrl(url)


class Composer(QPlainTextEdit):
    """The message field: Enter sends, Shift+Enter adds a line, Escape stops.

    Signals:
        submitted(): Enter was pressed.
        stop_requested(): Escape was pressed.
    """

    submitted = Signal()
    stop_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("composer")
        self.setAccessibleName("Message")
        self.setPlaceholderText("Message Gemma — Enter sends, Shift+Enter adds a line")
        self.setTabChangesFocus(True)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self.insertPlainText("\n")
            else:
                self.submitted.emit()
            event.accept()
            return
        if key == Qt.Key.Key_Escape:
            self.stop_requested.emit()
            event.accept()
            return
        super().keyPressEvent(event)

    def insertFromMimeData(self, source: QMimeData) -> None:
        # Paste as plain text in one edit: rich text of a large paste is slow
        # to convert and is not wanted in a prompt.
        if source.hasText():
            self.textCursor().insertText(source.text())
        else:
            super().insertFromMimeData(source)


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
    parts: list[str] = field(default_factory=list)
    writer: AnswerWriter | None = None
    flushing: bool = False
    last_check: float = 0.0


class ConversationRecorder(QObject):
    """Writes the chat into the conversation history as it happens.

    Every write runs on the history's worker thread, queued behind the one
    before it, so a message is written after the conversation it belongs to
    and before the next; the UI thread only buffers text. Ids the database
    hands out (conversation, messages) are filled in when their write runs, so
    later writes (Regenerate deletes the old answer) find them.

    Signals:
        changed(): a conversation was created, or a message written or removed.
        failed(str): a write failed (reason and hint, for the chat's status line).
    """

    changed = Signal()
    failed = Signal(str)

    def __init__(self, history: AsyncHistory, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.history = history
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
                if not shiboken6.isValid(self):
                    # The window closed while the write was queued: the write ran
                    # (or its error is below); only the notification has no receiver.
                    log.debug("history write finished after its window closed", exc_info=True)
                elif isinstance(exc, GemmaDesktopError):
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

    def add_user(self, text: str, *, model_id: str | None, system_prompt: str | None) -> None:
        """A user message; the first one creates the conversation, titled after it."""
        record, ref, store = self._record, _Ref(), self.history.store
        self._refs.append(ref)

        async def op() -> None:
            if record.id is None:
                created = await self.history.call(
                    functools.partial(
                        store.create_conversation,
                        title_from_prompt(text),
                        model_id=model_id,
                        system_prompt=system_prompt,
                    )
                )
                record.id = created.id
                record.system_prompt = system_prompt
            elif system_prompt != record.system_prompt:
                await self.history.call(store.set_system_prompt, record.id, system_prompt)
                record.system_prompt = system_prompt
            message = await self.history.call(store.add_message, record.id, "user", text)
            ref.id = message.id
            self.changed.emit()

        self._queue(op)

    def begin_answer(self, *, model_id: str | None) -> None:
        """An answer starts streaming: it is written as ``streaming`` right away."""
        answer = _Answer(self._record, self._refs, last_check=time.monotonic())
        self._answer = answer
        store = self.history.store

        async def op() -> None:
            if answer.record.id is None:
                return  # the conversation could not be created (already reported)
            writer = await self.history.call(
                functools.partial(store.begin_answer, answer.record.id, model_id=model_id)
            )
            writer.append("".join(answer.parts))
            answer.writer = writer

        self._queue(op)

    def append(self, text: str) -> None:
        """Answer text (on the UI thread: buffers, and queues a flush about once a second)."""
        answer = self._answer
        if answer is None:
            return
        answer.parts.append(text)
        writer = answer.writer
        if writer is None:
            return
        writer.append(text)
        now = time.monotonic()
        # flush_due() adds up the buffered text: ask it once per interval, not per token.
        if answer.flushing or now - answer.last_check < writer.flush_interval_s:
            return
        answer.last_check = now
        if writer.flush_due():
            answer.flushing = True

            async def op() -> None:
                try:
                    await self.history.call(writer.flush)
                finally:
                    answer.flushing = False

            self._queue(op)

    def end_answer(self, status: MessageStatus, stats: dict[str, Any] | None) -> None:
        """The answer ended; an answer without text is removed instead of kept."""
        answer, self._answer = self._answer, None
        if answer is None:
            return
        keep = bool("".join(answer.parts))
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

    async def open(self, conversation_id: int) -> tuple[Conversation, list[Message]]:
        """Continue ``conversation_id``: returns it and the messages the chat shows."""
        await self.idle()
        store = self.history.store
        conversation = await self.history.call(store.conversation, conversation_id)
        messages = [
            m
            for m in await self.history.call(store.messages, conversation_id)
            if m.role == "user" or (m.role == "assistant" and m.content.strip())
        ]
        self._record = _Record(conversation.id, conversation.system_prompt)
        self._refs = [_Ref(m.id) for m in messages]
        return conversation, messages


_STATUS_NOTES = {
    "stopped": "Stopped.",
    "error": "The answer failed.",
    "interrupted": "Interrupted: the app stopped while this answer was written.",
}


def _stats_dict(stats: ResponseStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    figures = dataclasses.asdict(stats)
    figures["tokens_per_second"] = round(stats.tokens_per_second, 2)
    return figures


def _icon_button(text: str, icon_name: str, accessible: str, tip: str) -> QPushButton:
    button = QPushButton(theme.icon(icon_name), text)
    button.setAccessibleName(accessible)
    button.setToolTip(tip)
    return button


def format_stats(stats: ResponseStats) -> str:
    parts = []
    if stats.time_to_first_token_s is not None:
        parts.append(f"first token {stats.time_to_first_token_s * 1000:.0f} ms")
    if stats.tokens_per_second:
        parts.append(f"{stats.tokens_per_second:.1f} tok/s")
    parts.append(f"{stats.completion_tokens} tokens")
    reason = {
        "stop": "finished",
        "length": "stopped at the token limit",
        "abort": "stopped",
        "error": "failed",
    }.get(stats.finish_reason or "", "")
    if reason:
        parts.append(reason)
    return " · ".join(parts)


class ChatPanel(QWidget):
    """Transcript, composer, answer controls and settings, talking to the host's engine.

    With a ``history`` every conversation is recorded (:attr:`recorder`) and
    :meth:`open_conversation` continues one from the history.
    """

    answer_finished = Signal(object)

    def __init__(
        self,
        host: EngineHost,
        parent: QWidget | None = None,
        *,
        history: AsyncHistory | None = None,
    ) -> None:
        super().__init__(parent)
        self._host = host
        self.recorder = ConversationRecorder(history, self) if history is not None else None
        self.conversation: list[ChatMessage] = []
        self._task: asyncio.Future[None] | None = None
        self._streaming = False
        self._abort_task: asyncio.Future[None] | None = None
        self._request_id: str | None = None
        self._engine_used: object | None = None
        self.last_stats: ResponseStats | None = None
        self._live = ResponseStats(request_id="")
        self._began = 0.0

        self.transcript = TranscriptView()
        self.composer = Composer()
        self.composer.setMinimumHeight(60)
        self.composer.setMaximumHeight(120)

        self.send_button = _icon_button("Send", "send", "Send message", "Send (Enter)")
        self.send_button.setProperty("role", "primary")
        self.stop_button = _icon_button("Stop", "stop", "Stop answer", "Stop the answer (Escape)")
        self.regenerate_button = _icon_button(
            "Regenerate", "regenerate", "Regenerate answer", "Answer the last message again"
        )
        self.edit_button = _icon_button(
            "Edit last", "edit", "Edit last message", "Edit and resend your last message"
        )
        self.new_button = _icon_button(
            "New chat", "new-chat", "New chat", "Start a new conversation (Ctrl+N)"
        )
        self.stats_label = QLabel("")
        self.stats_label.setObjectName("liveStats")
        self.stats_label.setAccessibleName("Answer figures")
        self.stats_label.setProperty("role", "muted")
        self.message_label = QLabel("")
        self.message_label.setObjectName("chatMessage")
        self.message_label.setAccessibleName("Chat status")
        self.message_label.setWordWrap(True)
        self.message_label.setProperty("role", "error")
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        # Answer settings
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setAccessibleName("System prompt")
        self.system_prompt.setPlaceholderText("Optional instructions for every answer")
        self.system_prompt.setTabChangesFocus(True)
        self.system_prompt.setMaximumHeight(110)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setValue(SamplingOptions.temperature)
        self.temperature.setAccessibleName("Temperature")
        self.temperature.setToolTip("0 always picks the most likely token; higher is more varied")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.05, 1.0)
        self.top_p.setSingleStep(0.05)
        self.top_p.setValue(SamplingOptions.top_p)
        self.top_p.setAccessibleName("Top-p")
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 131_072)
        self.max_tokens.setValue(SamplingOptions.max_tokens)
        self.max_tokens.setAccessibleName("Maximum tokens")
        self.settings_toggle = QToolButton()
        self.settings_toggle.setText("Answer settings")
        self.settings_toggle.setToolTip("Show or hide the system prompt and sampling controls")
        self.settings_toggle.setCheckable(True)
        self.settings_toggle.setChecked(True)
        self.settings_toggle.setAccessibleName("Show answer settings")

        settings_box = QFrame()
        settings_box.setProperty("role", "card")
        settings_box.setObjectName("answerSettings")
        settings_box.setMinimumWidth(290)
        box_layout = QVBoxLayout(settings_box)
        box_layout.setContentsMargins(12, 12, 12, 12)
        box_layout.setSpacing(8)
        system_label = QLabel("<b>System prompt</b>")
        system_label.setBuddy(self.system_prompt)
        box_layout.addWidget(system_label)
        box_layout.addWidget(self.system_prompt)
        form = QFormLayout()
        form.addRow("&Temperature", self.temperature)
        form.addRow("Top-&p", self.top_p)
        form.addRow("Max &tokens", self.max_tokens)
        for row in range(form.rowCount()):
            label = form.itemAt(row, QFormLayout.ItemRole.LabelRole)
            field = form.itemAt(row, QFormLayout.ItemRole.FieldRole)
            label_widget = label.widget() if label is not None else None
            field_widget = field.widget() if field is not None else None
            if isinstance(label_widget, QLabel) and field_widget is not None:
                label_widget.setBuddy(field_widget)
        box_layout.addLayout(form)
        box_layout.addStretch(1)
        self.settings_box = settings_box
        self.settings_toggle.toggled.connect(settings_box.setVisible)

        actions = QHBoxLayout()
        actions.addWidget(self.new_button)
        actions.addWidget(self.edit_button)
        actions.addWidget(self.regenerate_button)
        actions.addStretch(1)
        actions.addWidget(self.stats_label)
        actions.addWidget(self.settings_toggle)

        send_row = QHBoxLayout()
        send_row.addWidget(self.composer, 1)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        send_row.addLayout(buttons)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.transcript, 1)
        left_layout.addWidget(self.message_label)
        left_layout.addLayout(actions)
        left_layout.addLayout(send_row)

        split = QSplitter()
        split.addWidget(left)
        split.addWidget(settings_box)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 0)
        split.setSizes([800, 260])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 12)
        layout.addWidget(split)

        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(250)
        self._stats_timer.timeout.connect(self._show_live_stats)

        self.composer.submitted.connect(self.send)
        self.composer.stop_requested.connect(self.stop)
        self.composer.textChanged.connect(self._update_controls)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stop)
        self.regenerate_button.clicked.connect(self.regenerate)
        self.edit_button.clicked.connect(self.edit_last)
        self.new_button.clicked.connect(self.new_chat)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.stop)
        host.status_changed.connect(self._on_status)
        if self.recorder is not None:
            self.recorder.failed.connect(self.show_message)
        self._update_controls()

    # --- state ---------------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        return self._streaming

    @property
    def answer_task(self) -> asyncio.Future[None] | None:
        return self._task

    def options(self) -> SamplingOptions:
        return SamplingOptions(
            temperature=round(self.temperature.value(), 3),
            top_p=round(self.top_p.value(), 3),
            max_tokens=self.max_tokens.value(),
        )

    def messages(self) -> list[ChatMessage]:
        system = self.system_prompt.toPlainText().strip()
        head = [ChatMessage("system", system)] if system else []
        return head + list(self.conversation)

    def _on_status(self, _status: EngineStatus) -> None:
        self._update_controls()

    def _update_controls(self) -> None:
        ready = self._host.engine is not None and self._host.status.state in (
            EngineState.READY,
            EngineState.GENERATING,
        )
        streaming = self.streaming
        has_text = bool(self.composer.document().characterCount() > 1)
        self.send_button.setEnabled(ready and not streaming and has_text)
        self.stop_button.setEnabled(streaming)
        has_user = any(m.role == "user" for m in self.conversation)
        self.regenerate_button.setEnabled(ready and not streaming and has_user)
        self.edit_button.setEnabled(not streaming and has_user)
        self.new_button.setEnabled(bool(self.conversation) or streaming)
        if not ready and not streaming:
            self.send_button.setToolTip("Start the engine to send messages")
        else:
            self.send_button.setToolTip("Send (Enter)")

    def show_message(self, text: str) -> None:
        self.message_label.setText(text)
        self.message_label.setVisible(bool(text))

    # --- actions -------------------------------------------------------------------

    def send(self) -> None:
        """Send the composer's text (Enter)."""
        if self.streaming:
            self.show_message("An answer is still streaming: stop it (Escape) or wait.")
            return
        text = self.composer.toPlainText()
        if not text.strip():
            return
        if self._host.engine is None or not self._host.is_running:
            self.show_message("The engine is not running yet: start it at the top of the window.")
            return
        self.composer.clear()
        self.conversation.append(ChatMessage("user", text))
        self.transcript.add_user_message(text)
        if self.recorder is not None:
            system = self.system_prompt.toPlainText().strip() or None
            self.recorder.add_user(text, model_id=self._host.variant_id, system_prompt=system)
        self._start_answer()

    def stop(self) -> None:
        """Abort the streaming answer inside the engine (Escape)."""
        if not self.streaming:
            return
        engine, rid = self._host.engine, self._request_id
        if engine is not None and rid is not None:
            self._abort_task = asyncio.ensure_future(engine.abort(rid))
        elif self._task is not None:
            self._task.cancel()

    def regenerate(self) -> None:
        """Answer the last user message again, replacing the last answer."""
        if self.streaming or not self.conversation:
            return
        if self.conversation[-1].role == "assistant":
            self.conversation.pop()
            if self.recorder is not None:
                self.recorder.truncate(len(self.conversation))
        while self.transcript.message_count and self.transcript.last_role != "user":
            self.transcript.remove_last_message()
        self._start_answer()

    def edit_last(self) -> None:
        """Put the last user message back into the composer, removing it and its answer."""
        if self.streaming:
            return
        for index in range(len(self.conversation) - 1, -1, -1):
            if self.conversation[index].role == "user":
                text = self.conversation[index].content
                del self.conversation[index:]
                if self.recorder is not None:
                    self.recorder.truncate(index)
                while self.transcript.message_count:
                    if self.transcript.remove_last_message() == "user":
                        break
                self.composer.setPlainText(text)
                self.composer.moveCursor(QTextCursor.MoveOperation.End)
                self.composer.setFocus()
                self._update_controls()
                return

    def new_chat(self) -> None:
        if self._task is not None and not self._task.done():
            self.stop()
            self._task.cancel()
        # A new list: the stopped answer's task still ends into the old one.
        self.conversation = []
        if self.recorder is not None:
            self.recorder.start_new()
        self.transcript.clear_transcript()
        self.stats_label.clear()
        self.show_message("")
        self._update_controls()

    async def open_conversation(self, conversation_id: int) -> bool:
        """Show a conversation from the history and continue it; ``False`` if not now."""
        if self.recorder is None:
            return False
        if self.streaming:
            self.show_message("An answer is still streaming: stop it (Escape) first.")
            return False
        try:
            conversation, messages = await self.recorder.open(conversation_id)
        except GemmaDesktopError as exc:
            self.show_message(f"{exc.reason} {exc.hint}".strip())
            return False
        if self.streaming:  # an answer started while the history was read
            self.recorder.start_new()
            return False
        self.conversation = [ChatMessage(m.role, m.content) for m in messages]
        self.transcript.clear_transcript()
        for message in messages:
            if message.role == "user":
                self.transcript.add_user_message(message.content)
            else:
                self.transcript.add_assistant_message(message.content)
                if message.status not in ("complete", "streaming"):
                    self.transcript.add_notice(_STATUS_NOTES.get(message.status, message.status))
        self.system_prompt.setPlainText(conversation.system_prompt or "")
        self.stats_label.clear()
        self.show_message("")
        self._update_controls()
        return True

    def forget_conversation(self, conversation_id: int) -> None:
        """``conversation_id`` was deleted from the history: stop recording into it."""
        if self.recorder is not None and self.recorder.conversation_id == conversation_id:
            self.new_chat()

    def _start_answer(self) -> None:
        self.show_message("")
        self._streaming = True
        self._task = asyncio.ensure_future(self._stream(self.messages(), self.options()))
        self._update_controls()

    async def _stream(self, messages: list[ChatMessage], options: SamplingOptions) -> None:
        engine = self._host.engine
        if engine is None:
            self._streaming = False
            self.show_message("The engine is not running.")
            self._update_controls()
            return
        rid = f"chat-{uuid.uuid4().hex[:16]}"
        self._request_id = rid
        conversation = self.conversation
        recorder = self.recorder
        outcome: MessageStatus = "complete"
        if recorder is not None:
            recorder.begin_answer(model_id=engine.model_id)
        self._live = ResponseStats(request_id=rid)
        self._began = time.perf_counter()
        self.transcript.begin_answer()
        self._stats_timer.start()
        parts: list[str] = []
        stats: ResponseStats | None = None
        footer: str | None = None
        try:
            async for item in engine.chat(messages, options, rid):
                if isinstance(item, TextDelta):
                    if self._live.time_to_first_token_s is None:
                        self._live.time_to_first_token_s = time.perf_counter() - self._began
                    self._live.completion_tokens += item.token_count
                    parts.append(item.text)
                    self.transcript.append_delta(item.text)
                    if recorder is not None:
                        recorder.append(item.text)
                elif isinstance(item, StreamEnd):
                    stats = item.stats
        except PromptTooLongError as exc:
            self._fail_prompt(exc)
            return
        except EngineError as exc:
            footer = "The answer failed."
            outcome = "error"
            self.show_message(f"{exc.reason} {exc.hint}".strip())
        except asyncio.CancelledError:
            footer = "Stopped."
            outcome = "stopped"
            raise
        finally:
            self._streaming = False
            self._stats_timer.stop()
            self._request_id = None
            if stats is not None:
                footer = format_stats(stats)
                if stats.error:
                    self.show_message(stats.error)
            self.transcript.end_answer(footer)
            text = "".join(parts)
            if text:
                conversation.append(ChatMessage("assistant", text))
            if recorder is not None:
                if stats is not None and stats.finish_reason == "abort":
                    outcome = "stopped"
                elif stats is not None and (stats.finish_reason == "error" or stats.error):
                    outcome = "error"
                recorder.end_answer(outcome, _stats_dict(stats))
            self.last_stats = stats
            if stats is not None:
                self.stats_label.setText(format_stats(stats))
                self.answer_finished.emit(stats)
            self._update_controls()

    def _fail_prompt(self, exc: PromptTooLongError) -> None:
        """Nothing was generated: take the message back so it can be shortened."""
        self.transcript.remove_last_message()  # the empty answer
        if self.conversation and self.conversation[-1].role == "user":
            text = self.conversation.pop().content
            if self.recorder is not None:
                self.recorder.truncate(len(self.conversation), drop_if_empty=True)
            self.transcript.remove_last_message()
            if not self.composer.toPlainText():
                self.composer.setPlainText(text)
        self.show_message(f"{exc.reason} {exc.hint}".strip())

    def _show_live_stats(self) -> None:
        live = self._live
        live.total_time_s = time.perf_counter() - self._began
        if live.time_to_first_token_s is None:
            self.stats_label.setText(f"waiting for the first token… {live.total_time_s:.1f} s")
        else:
            self.stats_label.setText(format_stats(live))
