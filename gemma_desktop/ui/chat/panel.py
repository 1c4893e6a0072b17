"""The chat page: transcript, composer, answer controls and settings, over the host's engine.

:class:`ChatPanel` drives an :class:`~gemma_desktop.ui.engine_host.EngineHost`'s
engine: send, Stop (aborts inside the engine), Regenerate, edit and resend the
last message, New chat, system prompt, sampling controls and live figures.
The transcript (:mod:`~gemma_desktop.ui.chat.transcript`) renders the stream;
the conversation's rules live in :mod:`gemma_desktop.core.chat.conversation`
and its recording in :mod:`gemma_desktop.core.chat.recorder`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut, QTextCursor
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
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop.core.chat.conversation import STATUS_NOTES, ChatSession, answer_status
from gemma_desktop.core.chat.history import AsyncHistory
from gemma_desktop.core.chat.recorder import ConversationRecorder
from gemma_desktop.core.engine.protocol import (
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
from gemma_desktop.ui import theme
from gemma_desktop.ui.chat.composer import Composer
from gemma_desktop.ui.chat.transcript import TranscriptView
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.tasks import spawn


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
    :meth:`open_conversation` continues one from the history. What Regenerate,
    Edit and a refused prompt remove is decided by :attr:`session`
    (:class:`~gemma_desktop.core.chat.conversation.ChatSession`).

    Signals:
        answer_finished(ResponseStats): an answer ended (any finish reason).
        history_changed(): the recorder wrote or removed something.
        history_failed(str): a history write failed (reason and hint).
    """

    answer_finished = Signal(object)
    history_changed = Signal()
    history_failed = Signal(str)

    def __init__(
        self,
        host: EngineHost,
        parent: QWidget | None = None,
        *,
        history: AsyncHistory | None = None,
    ) -> None:
        super().__init__(parent)
        self._host = host
        self.recorder = ConversationRecorder(history) if history is not None else None
        self.session = ChatSession()
        self._task: asyncio.Future[None] | None = None
        self._streaming = False
        self._request_id: str | None = None
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
        self.history_failed.connect(self.show_message)
        if self.recorder is not None:
            # The recorder is Qt-free; its events reach the widgets through queued signals.
            self.recorder.changed.connect(self.history_changed.emit)
            self.recorder.failed.connect(self.history_failed.emit)
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

    @property
    def conversation(self) -> list[ChatMessage]:
        """The messages of the conversation on screen (without the system prompt)."""
        return self.session.messages

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
        has_user = self.session.has_user_message
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
        self.session.add_user(text)
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
            spawn(engine.abort(rid), "Stopping the answer")
        elif self._task is not None:
            self._task.cancel()

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """The app quits: stop the answer and wait (briefly) until it is recorded."""
        self.stop()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            task.cancel()
        if self.recorder is not None:
            await self.recorder.idle()

    def regenerate(self) -> None:
        """Answer the last user message again, replacing the last answer."""
        if self.streaming or not self.conversation:
            return
        dropped = self.session.drop_last_answer()
        if dropped is not None and self.recorder is not None:
            self.recorder.truncate(dropped)
        while self.transcript.message_count and self.transcript.last_role != "user":
            self.transcript.remove_last_message()
        self._start_answer()

    def edit_last(self) -> None:
        """Put the last user message back into the composer, removing it and its answer."""
        if self.streaming:
            return
        taken = self.session.take_last_user_message()
        if taken is None:
            return
        index, text = taken
        if self.recorder is not None:
            self.recorder.truncate(index)
        while self.transcript.message_count:
            if self.transcript.remove_last_message() == "user":
                break
        self.composer.setPlainText(text)
        self.composer.moveCursor(QTextCursor.MoveOperation.End)
        self.composer.setFocus()
        self._update_controls()

    def new_chat(self) -> None:
        if self._task is not None and not self._task.done():
            self.stop()
            self._task.cancel()
        # A new session: the stopped answer's task still ends into the old one.
        self.session = ChatSession()
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
        self.session, shown = ChatSession.from_history(messages)
        self.transcript.clear_transcript()
        for message in shown:
            if message.role == "user":
                self.transcript.add_user_message(message.content)
            else:
                self.transcript.add_assistant_message(message.content)
                if message.status not in ("complete", "streaming"):
                    self.transcript.add_notice(STATUS_NOTES.get(message.status, message.status))
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
        self._task = spawn(self._stream(self.messages(), self.options()), "The answer")
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
        session = self.session
        recorder = self.recorder
        if recorder is not None:
            recorder.begin_answer(model_id=engine.model_id)
        self._live = ResponseStats(request_id=rid)
        self._began = time.perf_counter()
        self.transcript.begin_answer()
        self._stats_timer.start()
        parts: list[str] = []
        stats: ResponseStats | None = None
        footer: str | None = None
        cancelled = failed = False
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
            failed = True
            self.show_message(f"{exc.reason} {exc.hint}".strip())
        except asyncio.CancelledError:
            footer = "Stopped."
            cancelled = True
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
            session.add_answer("".join(parts))
            if recorder is not None:
                status = answer_status(stats, cancelled=cancelled, failed=failed)
                recorder.end_answer(status, _stats_dict(stats))
            self.last_stats = stats
            if stats is not None:
                self.stats_label.setText(format_stats(stats))
                self.answer_finished.emit(stats)
            self._update_controls()

    def _fail_prompt(self, exc: PromptTooLongError) -> None:
        """Nothing was generated: take the message back so it can be shortened."""
        self.transcript.remove_last_message()  # the empty answer
        taken = self.session.take_unanswered_prompt()
        if taken is not None:
            index, text = taken
            if self.recorder is not None:
                self.recorder.truncate(index, drop_if_empty=True)
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
