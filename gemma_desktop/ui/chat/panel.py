"""The chat page: transcript, composer, answer controls and settings, over the host's engine.

:class:`ChatPanel` drives an :class:`~gemma_desktop.ui.engine_host.EngineHost`'s
engine: send, Stop (aborts inside the engine), Regenerate, edit and resend the
last message, New chat, system prompt, sampling controls and live figures.
The transcript (:mod:`~gemma_desktop.ui.chat.transcript`) renders the stream;
the conversation's rules live in :mod:`gemma_desktop.core.chat.conversation`
and its recording in :mod:`gemma_desktop.core.chat.recorder`.

Images and sound clips: the Attach button, Ctrl+V of a picture or of copied
files, a drop on the chat, and the microphone (:mod:`~gemma_desktop.ui.chat.recorder`)
add attachments to the next message, shown as chips above the message box
(:mod:`~gemma_desktop.ui.chat.attachments`). They are offered only when the
running engine declares it takes them (:attr:`Engine.abilities`); otherwise
the controls are disabled and their tooltip says why. Each file is checked
with the engines' own decoders and written into the history's attachment
store when it is attached, so what is sent is what is kept. A file that
cannot be taken, or a message the engine refuses (too many images for the
context, an attachment it cannot take), is explained and nothing is sent:
the draft stays.

Think: for a model that can think, the answer's thinking streams into a
block of its own above the answer; it is kept in the history but never sent
back.

The message box has the keyboard focus whenever the page is shown and after
every message sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt, QTimer, Signal
from PySide6.QtGui import (
    QDragEnterEvent,
    QDropEvent,
    QImage,
    QImageWriter,
    QKeySequence,
    QShortcut,
    QShowEvent,
    QTextCursor,
)
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
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

from gemma_desktop.core.audio_capture import AudioDevices
from gemma_desktop.core.chat.attachments import (
    AttachmentError,
    AttachmentStore,
    PreparedFile,
    StoredAttachment,
    prepare_data,
    prepare_file,
    prepare_recording,
)
from gemma_desktop.core.chat.conversation import STATUS_NOTES, ChatSession, answer_status
from gemma_desktop.core.chat.history import AsyncHistory
from gemma_desktop.core.chat.recorder import ConversationRecorder
from gemma_desktop.core.engine.protocol import (
    ChatMessage,
    EngineAbilities,
    EngineError,
    EngineState,
    EngineStatus,
    PromptTooLongError,
    ResponseStats,
    SamplingOptions,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    UnsupportedInputError,
)
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.media import MAX_CLIP_S
from gemma_desktop.ui import theme
from gemma_desktop.ui.chat.attachments import (
    CHIP_THUMB,
    AttachmentTray,
    ImageViewer,
    load_thumbnail,
)
from gemma_desktop.ui.chat.composer import Composer, carries_attachment, files_in, image_in
from gemma_desktop.ui.chat.recorder import RecorderBar
from gemma_desktop.ui.chat.transcript import TranscriptView
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.tasks import run_blocking, spawn

#: What the Attach dialog offers (the engines' decoders take these).
ATTACH_FILTERS = (
    "Images and audio (*.png *.jpg *.jpeg *.webp *.gif *.bmp *.tif *.tiff "
    "*.wav *.flac *.mp3 *.ogg *.opus)",
    "Images (*.png *.jpg *.jpeg *.webp *.gif *.bmp *.tif *.tiff)",
    "Audio (*.wav *.flac *.mp3 *.ogg *.opus)",
    "All files (*)",
)


def _stats_dict(stats: ResponseStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    figures = dataclasses.asdict(stats)
    figures["tokens_per_second"] = round(stats.tokens_per_second, 2)
    return figures


def _png_bytes(image: QImage) -> bytes:
    """A pasted picture as PNG (any thread: a QImage is not a widget)."""
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    if not QImageWriter(buffer, QByteArray(b"png")).write(image):
        raise AttachmentError("The pasted picture could not be read.", "Copy it again and paste.")
    buffer.close()
    return bytes(data.data())


def _tool_button(text: str, icon_name: str, accessible: str) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setIcon(theme.icon(icon_name))
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    button.setAccessibleName(accessible)
    button.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
    button.setAutoRaise(True)
    return button


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

    ``attachments`` is where attached files are kept (default: the history's
    attachment store; without either, nothing can be attached). ``audio`` records
    from the microphone and plays clips back (without it, Record is off).

    Signals:
        answer_finished(ResponseStats): an answer ended (any finish reason).
        history_changed(): the recorder wrote or removed something.
        history_failed(str): a history write failed (reason and hint).
        attachment_added(StoredAttachment): a file was attached to the draft.
    """

    answer_finished = Signal(object)
    history_changed = Signal()
    history_failed = Signal(str)
    attachment_added = Signal(object)

    def __init__(
        self,
        host: EngineHost,
        parent: QWidget | None = None,
        *,
        history: AsyncHistory | None = None,
        attachments: AttachmentStore | None = None,
        audio: AudioDevices | None = None,
    ) -> None:
        super().__init__(parent)
        self._host = host
        self.recorder = ConversationRecorder(history) if history is not None else None
        self.attachment_store = attachments or (
            history.store.attachments if history is not None else None
        )
        self.audio = audio
        self._held: list[StoredAttachment] = []  # the files the conversation on screen uses
        self._attaching = 0
        self.file_dialog: QFileDialog | None = None
        self.viewer: ImageViewer | None = None
        #: How long a recording may be (Gemma 4 hears 30 s of one clip).
        self.recording_limit_s = MAX_CLIP_S
        self._thinking_began: float | None = None
        self._thinking_s: float | None = None
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
        self.tray = AttachmentTray()
        self.tray.can_play = audio is not None
        self.recorder_bar = RecorderBar()
        self.attach_button = _tool_button("Attach", "attach", "Attach image or audio")
        self.record_button = _tool_button("Record", "mic", "Record from the microphone")
        self.think_toggle = _tool_button("Think", "think", "Think before answering")
        self.think_toggle.setObjectName("thinkToggle")
        self.think_toggle.setCheckable(True)
        self.attach_button.setObjectName("attachButton")
        self.record_button.setObjectName("recordButton")
        self.tools_hint = QLabel("")
        self.tools_hint.setProperty("role", "muted")
        self.tools_hint.setObjectName("toolsHint")

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
        box = QVBoxLayout()
        box.setSpacing(2)
        box.addWidget(self.tray)
        box.addWidget(self.recorder_bar)
        box.addWidget(self.composer, 1)
        tools = QHBoxLayout()
        tools.setContentsMargins(0, 0, 0, 0)
        tools.addWidget(self.attach_button)
        tools.addWidget(self.record_button)
        tools.addWidget(self.think_toggle)
        tools.addWidget(self.tools_hint, 1)
        box.addLayout(tools)
        send_row.addLayout(box, 1)
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
        self.composer.stop_requested.connect(self._escape)
        self.composer.textChanged.connect(self._update_controls)
        self.composer.files_received.connect(self.attach_files)
        self.composer.image_received.connect(self.attach_image)
        self.attach_button.clicked.connect(self.open_attach_dialog)
        self.record_button.clicked.connect(self.start_recording)
        self.recorder_bar.finished.connect(self._on_recorded)
        self.recorder_bar.cancelled.connect(self._on_recording_cancelled)
        self.recorder_bar.failed.connect(self._on_recording_failed)
        self.tray.changed.connect(self._update_controls)
        self.tray.removed.connect(self._on_chip_removed)
        self.tray.view_requested.connect(self.view_image)
        self.tray.play_requested.connect(self.play)
        self.transcript.image_requested.connect(self.view_image)
        self.transcript.play_requested.connect(self.play)
        self.setAcceptDrops(True)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stop)
        self.regenerate_button.clicked.connect(self.regenerate)
        self.edit_button.clicked.connect(self.edit_last)
        self.new_button.clicked.connect(self.new_chat)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self._escape)
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
            thinking=self.think_toggle.isChecked() and self.abilities().thinking,
        )

    def abilities(self) -> EngineAbilities:
        """What the running engine takes besides text (nothing while none runs)."""
        engine = self._host.engine
        if engine is None or not (self._host.is_running or self._host.is_sleeping):
            return EngineAbilities(why_not="Start the engine first.")
        return engine.abilities

    @property
    def draft_attachments(self) -> list[StoredAttachment]:
        """The files the next message carries."""
        return self.tray.attachments

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
        has_files = bool(self.tray.attachments)
        self._update_tools(ready)
        self.send_button.setEnabled(ready and not streaming and (has_text or has_files))
        self.stop_button.setEnabled(streaming)
        has_user = self.session.has_user_message
        self.regenerate_button.setEnabled(ready and not streaming and has_user)
        self.edit_button.setEnabled(not streaming and has_user)
        self.new_button.setEnabled(bool(self.conversation) or streaming)
        if not ready and not streaming:
            self.send_button.setToolTip("Start the engine to send messages")
        else:
            self.send_button.setToolTip("Send (Enter)")

    def _update_tools(self, ready: bool) -> None:
        """Attach, Record and Think: on only when the running model takes them."""
        abilities = self.abilities()
        takes = abilities.images or abilities.audio
        why = abilities.why_not or "This model takes text only."
        if not ready:
            attach_tip = "Start the engine to attach images or audio."
        elif not takes:
            attach_tip = why
        elif self.attachment_store is None:
            attach_tip = (
                "Attachments are off: the conversation history's folder could not be opened."
            )
        else:
            kinds = " or ".join(
                k
                for k, on in (("an image", abilities.images), ("a sound file", abilities.audio))
                if on
            )
            attach_tip = f"Attach {kinds} (or paste one with Ctrl+V, or drop it here)"
        can_attach = ready and takes and self.attachment_store is not None
        self.attach_button.setEnabled(can_attach)
        self.attach_button.setToolTip(attach_tip)
        if not can_attach:
            record_tip = attach_tip
        elif not abilities.audio:
            record_tip = why
        elif self.audio is None:
            record_tip = "Recording is not available in this window."
        else:
            record_tip = (
                f"Record a question from the microphone (up to {MAX_CLIP_S:.0f} s, "
                "Gemma 4's limit for one clip)"
            )
        can_record = (
            can_attach
            and abilities.audio
            and self.audio is not None
            and not self.recorder_bar.recording
        )
        self.record_button.setEnabled(can_record)
        self.record_button.setToolTip(record_tip)
        self.think_toggle.setEnabled(ready and abilities.thinking)
        self.think_toggle.setToolTip(
            "Let the model think before it answers; its thinking shows apart from the answer"
            if ready and abilities.thinking
            else (
                "Start the engine first."
                if not ready
                else "This model does not think before answering."
            )
        )

    def show_message(self, text: str, *, error: bool = True) -> None:
        """A line above the composer: an error (the default) or a note."""
        role = "error" if error else "muted"
        if self.message_label.property("role") != role:
            self.message_label.setProperty("role", role)
            self.message_label.style().unpolish(self.message_label)
            self.message_label.style().polish(self.message_label)
        self.message_label.setText(text)
        self.message_label.setVisible(bool(text))

    # --- focus, drops, Escape --------------------------------------------------------

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        # After the page switch has settled: typed keys go to the message box.
        QTimer.singleShot(0, self._focus_composer)

    def _focus_composer(self) -> None:
        if self.isVisible() and not self.recorder_bar.recording:
            self.composer.setFocus(Qt.FocusReason.OtherFocusReason)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if carries_attachment(event.mimeData()):
            event.acceptProposedAction()
        else:
            super().dragEnterEvent(event)

    def dropEvent(self, event: QDropEvent) -> None:
        source = event.mimeData()
        files = files_in(source)
        image = None if files else image_in(source)
        if files:
            self.attach_files(files)
        elif image is not None:
            self.attach_image(image)
        else:
            super().dropEvent(event)
            return
        event.acceptProposedAction()

    def _escape(self) -> None:
        """Escape cancels a recording, else stops the answer."""
        if self.recorder_bar.recording:
            self.recorder_bar.cancel()
        else:
            self.stop()

    # --- attachments ------------------------------------------------------------------

    def _refusal(self, kinds: Sequence[str]) -> str | None:
        """Why the running engine cannot take these kinds of attachment (``None``: it can)."""
        if self.attachment_store is None:
            return "Attachments are off: the conversation history's folder could not be opened."
        engine = self._host.engine
        if engine is None or not (self._host.is_running or self._host.is_sleeping):
            return "Start the engine first: attachments go to the model that runs."
        abilities = engine.abilities
        for kind in kinds:
            if (kind == "image" and not abilities.images) or (
                kind == "audio" and not abilities.audio
            ):
                what = "images" if kind == "image" else "audio"
                why = abilities.why_not or "It takes text only."
                return f"{self._host.variant_id} cannot take {what}. {why}"
        return None

    def open_attach_dialog(self) -> None:
        """Pick files to attach (a dialog opened with ``open()``, never ``exec()``)."""
        refusal = self._refusal([])
        if refusal:
            self.show_message(refusal)
            return
        dialog = QFileDialog(self, "Attach images or audio")
        dialog.setObjectName("attachDialog")
        dialog.setFileMode(QFileDialog.FileMode.ExistingFiles)
        dialog.setNameFilters(list(ATTACH_FILTERS))
        dialog.filesSelected.connect(lambda paths: self.attach_files([Path(p) for p in paths]))
        dialog.finished.connect(lambda _result: self._dialog_done(dialog))
        if self.file_dialog is not None:
            self.file_dialog.reject()
        self.file_dialog = dialog
        dialog.open()

    def _dialog_done(self, dialog: QFileDialog) -> None:
        if self.file_dialog is dialog:
            self.file_dialog = None
        dialog.deleteLater()
        self._focus_composer()

    def attach_files(self, paths: list[Path]) -> asyncio.Task[int]:
        """Check and attach files (pasted, dropped or picked); returns the task (how many
        were attached)."""
        return spawn(self._attach(paths, None), "Attaching files")

    def attach_image(self, image: QImage) -> asyncio.Task[int]:
        """Attach a pasted or dropped picture (a screenshot); returns the task."""
        return spawn(self._attach([], image), "Attaching a picture")

    async def _attach(self, paths: list[Path], image: QImage | None) -> int:
        refusal = self._refusal([])
        if refusal:
            self.show_message(refusal)
            return 0
        store = self.attachment_store
        assert store is not None
        self._attaching += 1
        self._update_controls()
        attached = 0
        notes: list[str] = []
        try:
            jobs: list[Any] = [functools.partial(prepare_file, path) for path in paths]
            if image is not None:
                name = f"Pasted image {time.strftime('%H-%M-%S')}.png"
                picture = image.copy()
                jobs.append(lambda: prepare_data(_png_bytes(picture), name, store.scratch))
            for job in jobs:
                try:
                    prepared: PreparedFile = await run_blocking(job)
                except GemmaDesktopError as exc:
                    notes.append(f"{exc.reason} {exc.hint}".strip())
                    continue
                refusal = self._refusal([prepared.kind])
                if refusal:
                    notes.append(refusal)
                    continue
                stored, thumb = await run_blocking(self._store, store, prepared)
                self.tray.add(stored, thumb)
                store.hold([stored])
                attached += 1
                self.attachment_added.emit(stored)
                if prepared.note:
                    notes.append(prepared.note)
        finally:
            self._attaching -= 1
            self._update_controls()
        if notes:
            failed = attached < len(jobs)
            self.show_message(" ".join(notes), error=failed)
        elif attached:
            self.show_message("")
        return attached

    @staticmethod
    def _store(store: AttachmentStore, prepared: PreparedFile) -> tuple[StoredAttachment, QImage]:
        """(worker thread) Write the file into the store and make its chip's thumbnail."""
        stored = store.put(prepared)
        thumb = load_thumbnail(stored.path, CHIP_THUMB) if stored.kind == "image" else QImage()
        return stored, thumb

    def _on_chip_removed(self, attachment: StoredAttachment) -> None:
        if self.attachment_store is not None:
            self.attachment_store.release([attachment])
        if self.recorder is not None:
            self.recorder.let_go([attachment])
        if not self.tray.attachments:
            self._focus_composer()

    def _restore_draft(self, attachments: Sequence[StoredAttachment]) -> None:
        """Put a message's attachments back into the tray (Edit, a refused message)."""
        for attachment in attachments:
            thumb = (
                load_thumbnail(attachment.path, CHIP_THUMB)
                if attachment.kind == "image"
                else QImage()
            )
            self.tray.add(attachment, thumb)
        if self.attachment_store is not None:
            self.attachment_store.hold(attachments)

    def _hold_for_session(self, attachments: Sequence[StoredAttachment]) -> None:
        if self.attachment_store is not None and attachments:
            self.attachment_store.hold(attachments)
            self._held.extend(attachments)

    def _release_session(self) -> None:
        if self.attachment_store is not None and self._held:
            self.attachment_store.release(self._held)
            if self.recorder is not None:
                # Files of a conversation deleted while it was shown go now.
                self.recorder.let_go(self._held)
        self._held = []

    def view_image(self, attachment: StoredAttachment) -> None:
        """Show an attached image large (a window opened with ``open()``)."""
        if self.viewer is not None:
            self.viewer.close()
        viewer = ImageViewer(attachment.path, attachment.name, self)
        viewer.finished.connect(lambda _r: self._viewer_done(viewer))
        self.viewer = viewer
        viewer.open()

    def _viewer_done(self, viewer: ImageViewer) -> None:
        if self.viewer is viewer:
            self.viewer = None

    def play(self, attachment: StoredAttachment) -> asyncio.Task[None] | None:
        """Play an attached sound clip (through the window's sound service)."""
        if self.audio is None:
            self.show_message("Playback is not available in this window.")
            return None
        return spawn(self._play(self.audio, attachment), "Playing a clip")

    async def _play(self, audio: AudioDevices, attachment: StoredAttachment) -> None:
        try:
            await run_blocking(audio.play, attachment.path)
        except GemmaDesktopError as exc:
            self.show_message(f"{exc.reason} {exc.hint}".strip())

    # --- the microphone ---------------------------------------------------------------

    def start_recording(self) -> bool:
        """Record a question from the microphone (up to Gemma 4's 30 s clip limit)."""
        refusal = self._refusal(["audio"])
        if refusal:
            self.show_message(refusal)
            return False
        if self.audio is None:
            self.show_message("Recording is not available in this window.")
            return False
        self.show_message("")
        started = self.recorder_bar.start(self.audio, self.recording_limit_s)
        self._update_controls()
        return started

    def _on_recorded(self, samples: Any, limit: bool) -> None:
        spawn(self._attach_recording(samples, limit), "Attaching a recording")

    async def _attach_recording(self, samples: Any, limit: bool) -> None:
        store = self.attachment_store
        self._update_controls()
        if store is None:
            return
        name = f"Recording {time.strftime('%H-%M-%S')}.wav"
        try:
            prepared = await run_blocking(prepare_recording, samples, name)
        except GemmaDesktopError as exc:
            self.show_message(f"{exc.reason} {exc.hint}".strip())
            self._focus_composer()
            return
        stored, _thumb = await run_blocking(self._store, store, prepared)
        self.tray.add(stored)
        store.hold([stored])
        self.attachment_added.emit(stored)
        if limit:
            self.show_message(
                f"The recording stopped at its limit of {self.recorder_bar.limit_s:.0f} s "
                "(Gemma 4 hears 30 s of one clip); it is attached.",
                error=False,
            )
        else:
            self.show_message("")
        self._focus_composer()

    def _on_recording_cancelled(self) -> None:
        self._update_controls()
        self._focus_composer()

    def _on_recording_failed(self, text: str) -> None:
        self.show_message(text)
        self._update_controls()
        self._focus_composer()

    # --- actions -------------------------------------------------------------------

    def send(self) -> None:
        """Send the composer's text and attachments (Enter)."""
        if self.streaming:
            self.show_message("An answer is still streaming: stop it (Escape) or wait.")
            return
        if self.recorder_bar.recording:
            self.show_message("Stop the recording first (Stop attaches it, Escape cancels it).")
            return
        if self._attaching:
            self.show_message("An attachment is still being prepared: send again in a moment.")
            return
        text = self.composer.toPlainText()
        files = self.tray.attachments
        if not text.strip() and not files:
            return
        asleep = self._host.is_sleeping  # Free GPU memory: _stream wakes it first
        if not asleep and (self._host.engine is None or not self._host.is_running):
            self.show_message("The engine is not running yet: start it at the top of the window.")
            return
        refusal = self._refusal([a.kind for a in files]) if files else None
        if refusal:
            self.show_message(refusal + " Remove the attachment to send the text alone.")
            return
        self.composer.clear()
        self.tray.take_all()
        if self.attachment_store is not None:
            self._held.extend(files)  # the draft's holds pass to the session
        self.session.add_user(text, files)
        self.transcript.add_user_message(text, files)
        if self.recorder is not None:
            system = self.system_prompt.toPlainText().strip() or None
            self.recorder.add_user(
                text, model_id=self._host.variant_id, system_prompt=system, attachments=files
            )
        self._start_answer()
        self.composer.setFocus()

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
        # The draft holds its files before the history deletes the message.
        self._restore_draft(taken.attachments)
        if self.recorder is not None:
            self.recorder.truncate(taken.index)
        while self.transcript.message_count:
            if self.transcript.remove_last_message() == "user":
                break
        self.composer.setPlainText(taken.text)
        self.composer.moveCursor(QTextCursor.MoveOperation.End)
        self.composer.setFocus()
        self._update_controls()

    def new_chat(self) -> None:
        if self._task is not None and not self._task.done():
            self.stop()
            self._task.cancel()
        # A new session: the stopped answer's task still ends into the old one.
        self.session = ChatSession()
        self._release_session()
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
        self._release_session()
        self._hold_for_session(self.session.all_files)
        self.transcript.clear_transcript()
        for message in shown:
            if message.role == "user":
                self.transcript.add_user_message(message.content, message.attachments)
            else:
                seconds = message.stats.get("thinking_time_s")
                self.transcript.add_assistant_message(
                    message.content,
                    message.thinking,
                    float(seconds) if isinstance(seconds, (int, float)) else None,
                )
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
        await self._host.ensure_awake()  # after Free GPU memory: wake (or restart) the engine
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
        self._thinking_began = self._thinking_s = None
        self.transcript.begin_answer()
        self._stats_timer.start()
        parts: list[str] = []
        stats: ResponseStats | None = None
        footer: str | None = None
        cancelled = failed = False
        try:
            async for item in engine.chat(messages, options, rid):
                if isinstance(item, (TextDelta, ThinkingDelta)):
                    now = time.perf_counter()
                    if self._live.time_to_first_token_s is None:
                        self._live.time_to_first_token_s = now - self._began
                    self._live.completion_tokens += item.token_count
                if isinstance(item, ThinkingDelta):
                    if self._thinking_began is None:
                        self._thinking_began = time.perf_counter()
                    self._live.thinking_tokens += item.token_count
                    self.transcript.append_thinking(item.text, item.token_count)
                    if recorder is not None:
                        recorder.append_thinking(item.text)
                elif isinstance(item, TextDelta):
                    if self._thinking_began is not None and self._thinking_s is None:
                        self._thinking_s = time.perf_counter() - self._thinking_began
                    parts.append(item.text)
                    self.transcript.append_delta(item.text)
                    if recorder is not None:
                        recorder.append(item.text)
                elif isinstance(item, StreamEnd):
                    stats = item.stats
        except (PromptTooLongError, UnsupportedInputError) as exc:
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
                figures = _stats_dict(stats)
                if figures is not None and self._thinking_began is not None:
                    ended = self._thinking_s or (time.perf_counter() - self._thinking_began)
                    figures["thinking_time_s"] = round(ended, 3)
                recorder.end_answer(status, figures)
            self.last_stats = stats
            if stats is not None:
                self.stats_label.setText(format_stats(stats))
                self.answer_finished.emit(stats)
            self._update_controls()

    def _fail_prompt(self, exc: EngineError) -> None:
        """Nothing was generated (too long, an attachment the engine cannot take): take the
        message back, attachments and all, so it can be changed and sent again."""
        self.transcript.remove_last_message()  # the empty answer
        taken = self.session.take_unanswered_prompt()
        if taken is not None:
            if not self.composer.toPlainText() and not self.tray.attachments:
                self.composer.setPlainText(taken.text)
                self._restore_draft(taken.attachments)
            if self.recorder is not None:
                self.recorder.truncate(taken.index, drop_if_empty=True)
            self.transcript.remove_last_message()
        self.show_message(f"{exc.reason} {exc.hint}".strip())

    def _show_live_stats(self) -> None:
        live = self._live
        live.total_time_s = time.perf_counter() - self._began
        if live.time_to_first_token_s is None:
            self.stats_label.setText(f"waiting for the first token… {live.total_time_s:.1f} s")
        else:
            self.stats_label.setText(format_stats(live))
