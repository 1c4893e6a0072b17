"""The conversation as rich text, with an answer that streams in.

:class:`TranscriptView` is one ``QTextBrowser`` for the whole conversation.
Tokens are appended to a buffer (:meth:`TranscriptView.append_delta` costs
O(1)); at most ~30 times a second the buffer is cut into complete Markdown
blocks, each rendered once and inserted at the end of the document, and the
unfinished last block is rendered again in place. The cost of a refresh
depends on the size of the current block, not of the answer, so a
20 000-token answer streams as smoothly at its end as at its start.

A message's images show as thumbnails (a click, or Enter on the focused
link, opens them large: :attr:`TranscriptView.image_requested`) and its
sound clips as a line with their length and a Play link
(:attr:`TranscriptView.play_requested`).

An answer's thinking streams into a block of its own above the answer, in a
muted, indented style unlike the answer's: a header with its length and
time, which is also the link that opens and closes it, and the thinking
itself. The block collapses when the answer starts; its text stays in the
document (hidden blocks), so opening it again costs nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QColor,
    QDesktopServices,
    QFont,
    QGuiApplication,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
    QTextImageFormat,
)
from PySide6.QtWidgets import QTextBrowser, QWidget

from gemma_desktop.core.chat.attachments import StoredAttachment, format_duration
from gemma_desktop.ui import theme
from gemma_desktop.ui.chat.attachments import load_thumbnail
from gemma_desktop.ui.chat.markdown import (
    CODE_HEADER_STYLE,
    BlockSplitter,
    MarkdownRenderer,
    plain_to_html,
)

#: Refresh interval of the streaming answer (about 30 Hz).
REFRESH_MS = 33
#: Longest a refresh renders before letting the event loop run again.
RENDER_BUDGET_S = 0.016
#: Pause between budgeted refreshes while rendering catches up with a burst.
CATCH_UP_MS = 4
#: User messages longer than this are shown shortened in the transcript (sent in full).
PREVIEW_CHARS = 20_000


#: The largest thumbnail of an image in the transcript.
THUMBNAIL_SIZE = QSize(240, 180)


@dataclass
class _Message:
    role: str
    start: int  # document position where the message (and its separator) begins


@dataclass
class ThinkingBlock:
    """One answer's thinking in the document: its header line and the body below it."""

    id: int
    header: int  # position of the header block
    body: int  # position where the thinking text begins
    end: int = -1  # position after its last character (-1 while it streams)
    text_chars: int = 0
    words: int = 0
    tokens: int = 0
    began: float = 0.0
    seconds: float | None = None
    open: bool = True
    streaming: bool = True

    @property
    def summary(self) -> str:
        """``Thought for 2.1 s · 143 words`` (or ``Thinking… 1.2 s`` while it streams)."""
        length = f"{self.words} word{'' if self.words == 1 else 's'}"
        if self.streaming:
            elapsed = time.perf_counter() - self.began
            return f"Thinking… {elapsed:.1f} s · {length}"
        took = f" for {self.seconds:.1f} s" if self.seconds is not None else ""
        return f"Thought{took} · {length}"


class TranscriptView(QTextBrowser):
    """The conversation as rich text, with an answer that streams in.

    Public slots: :meth:`add_user_message`, :meth:`begin_answer`,
    :meth:`append_thinking`, :meth:`append_delta`, :meth:`flush`, :meth:`end_answer`,
    :meth:`remove_last_message`, :meth:`clear_transcript`.

    Signals:
        code_copied(str): a code block's Copy link put this text on the clipboard.
        image_requested(StoredAttachment): an image's thumbnail was clicked.
        play_requested(StoredAttachment): a sound clip's Play link was clicked.
        thinking_toggled(int, bool): a thinking block was opened (True) or closed.
    """

    code_copied = Signal(str)
    image_requested = Signal(object)
    play_requested = Signal(object)
    thinking_toggled = Signal(int, bool)

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
        #: The attachments shown, by link number, with where their message begins.
        self._attachments: dict[int, tuple[int, StoredAttachment]] = {}
        self._thinking: dict[int, ThinkingBlock] = {}
        self._live_thinking: ThinkingBlock | None = None
        self._pending_thinking: list[str] = []
        self._serial = 0
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

    def add_user_message(self, text: str, attachments: Sequence[StoredAttachment] = ()) -> None:
        cursor = self._begin_message("user", "You")
        if attachments:
            self._insert_attachments(cursor, attachments)
            if text:
                self._new_block(cursor, top_margin=4.0)
        shown = text
        if len(text) > PREVIEW_CHARS:
            shown = (
                text[:PREVIEW_CHARS]
                + f"\n… ({len(text):,} characters in all; the rest is not shown here)"
            )
        if shown:
            cursor.insertHtml(plain_to_html(shown))
        self._scroll_to_end()

    def _next_id(self) -> int:
        self._serial += 1
        return self._serial

    def _insert_attachments(
        self, cursor: QTextCursor, attachments: Sequence[StoredAttachment]
    ) -> None:
        """Images as thumbnails on one line, then one line per sound clip."""
        c = theme.colors()
        start = self._messages[-1].start
        images = [a for a in attachments if a.kind == "image"]
        clips = [a for a in attachments if a.kind == "audio"]
        for attachment in images:
            key = self._next_id()
            self._attachments[key] = (start, attachment)
            thumb = load_thumbnail(attachment.path, THUMBNAIL_SIZE)
            if thumb.isNull():
                link = QTextCharFormat()
                link.setAnchor(True)
                link.setAnchorHref(f"view:{key}")
                link.setForeground(QColor(c.accent))
                cursor.insertText(f"[{attachment.name}]", link)
            else:
                name = f"attachment://{key}"
                self.document().addResource(
                    QTextDocument.ResourceType.ImageResource, QUrl(name), thumb
                )
                image = QTextImageFormat()
                image.setName(name)
                image.setWidth(thumb.width())
                image.setHeight(thumb.height())
                image.setAnchor(True)
                image.setAnchorHref(f"view:{key}")
                image.setToolTip(f"{attachment.label}: click to view it large")
                cursor.insertImage(image)
            cursor.insertText("  ", QTextCharFormat())
        for index, attachment in enumerate(clips):
            if images or index:
                self._new_block(cursor, top_margin=4.0)
            key = self._next_id()
            self._attachments[key] = (start, attachment)
            link = QTextCharFormat()
            link.setAnchor(True)
            link.setAnchorHref(f"play:{key}")
            link.setForeground(QColor(c.accent))
            link.setFontWeight(QFont.Weight.DemiBold)
            link.setToolTip(f"Play {attachment.name}")
            cursor.insertText("▶ Play", link)
            muted = QTextCharFormat()
            muted.setForeground(QColor(c.muted))
            length = format_duration(attachment.duration_s or 0.0)
            cursor.insertText(f"   {attachment.name} · {length}", muted)

    @property
    def shown_attachments(self) -> list[StoredAttachment]:
        """The attachments the transcript shows, in order."""
        return [attachment for _start, attachment in self._attachments.values()]

    def attachment(self, key: int) -> StoredAttachment | None:
        """The attachment behind a ``view:N`` or ``play:N`` link."""
        entry = self._attachments.get(key)
        return entry[1] if entry is not None else None

    def add_assistant_message(
        self, text: str, thinking: str = "", thinking_s: float | None = None
    ) -> None:
        """A finished answer (from history, or an engine that does not stream), with its
        thinking (shown closed) when it had some."""
        self.begin_answer()
        if thinking:
            self.append_thinking(thinking)
            self.flush()
            block = self._live_thinking
            if block is not None:
                self._close_thinking()
                block.seconds = thinking_s
                self._set_header(block)
        self.append_delta(text)
        self.end_answer()

    # --- thinking -------------------------------------------------------------------

    @property
    def thinking_blocks(self) -> list[ThinkingBlock]:
        return list(self._thinking.values())

    def append_thinking(self, text: str, tokens: int = 0) -> None:
        """Queue thinking text of the streaming answer (rendered at the next refresh)."""
        if not self._streaming or not text:
            return
        if self._live_thinking is None:
            if self._pending or self._ready or self._splitter.tail:
                return  # the answer has begun: thinking after it is not shown
            self._open_thinking()
        block = self._live_thinking
        assert block is not None
        block.tokens += tokens
        self._pending_thinking.append(text)
        if not self._timer.isActive():
            self._timer.start(REFRESH_MS)

    def _thinking_formats(self) -> tuple[QTextBlockFormat, QTextCharFormat]:
        c = theme.colors()
        block = QTextBlockFormat()
        block.setLeftMargin(14.0)
        block.setBackground(QColor(c.alt_base if not c.dark else c.code_bg))
        char = QTextCharFormat()
        char.setForeground(QColor(c.muted))
        char.setFontItalic(True)
        return block, char

    def _open_thinking(self) -> None:
        cursor = self._end_cursor()
        block = ThinkingBlock(
            id=self._next_id(), header=cursor.position(), body=0, began=time.perf_counter()
        )
        self._thinking[block.id] = block
        self._live_thinking = block
        self._write_header(cursor, block)
        body_format, char = self._thinking_formats()
        cursor.insertBlock(body_format, char)
        block.body = cursor.position()

    def _write_header(self, cursor: QTextCursor, block: ThinkingBlock) -> None:
        c = theme.colors()
        header = QTextCharFormat()
        header.setAnchor(True)
        header.setAnchorHref(f"think:{block.id}")
        header.setForeground(QColor(c.warn))
        header.setFontWeight(QFont.Weight.DemiBold)
        header.setToolTip("Show or hide the model's thinking")
        arrow = "▾" if block.open else "▸"
        action = "hide" if block.open else "show"
        cursor.insertText(f"{arrow} {block.summary}", header)
        muted = QTextCharFormat()
        muted.setForeground(QColor(c.muted))
        cursor.insertText(f"  ({action})", muted)

    def _set_header(self, block: ThinkingBlock) -> None:
        line = self.document().findBlock(block.header)
        cursor = QTextCursor(self.document())
        cursor.beginEditBlock()
        cursor.setPosition(line.position())
        cursor.setPosition(line.position() + line.length() - 1, QTextCursor.MoveMode.KeepAnchor)
        before = cursor.selectionEnd() - cursor.selectionStart()
        cursor.removeSelectedText()
        self._write_header(cursor, block)
        after = cursor.position() - line.position()
        cursor.endEditBlock()
        shift = after - before
        if shift:
            # Everything after the header moved by the header's change in length.
            block.body += shift
            if block.end >= 0:
                block.end += shift
            if self._tail_start > block.header:
                self._tail_start += shift

    def _flush_thinking(self) -> None:
        block = self._live_thinking
        if block is None or not self._pending_thinking:
            return
        text = "".join(self._pending_thinking)
        self._pending_thinking.clear()
        if block.text_chars == 0:
            text = text.lstrip("\n")
        at_bottom = self._at_bottom()
        cursor = self._end_cursor()
        _body, char = self._thinking_formats()
        cursor.insertText(text, char)
        block.text_chars += len(text)
        block.words += len(text.split())
        self._set_header(block)
        if at_bottom:
            self._scroll_to_end()

    def _close_thinking(self) -> None:
        """The answer begins: the thinking block ends, closed, and the answer goes below it."""
        block = self._live_thinking
        if block is None:
            return
        self._flush_thinking()
        self._live_thinking = None
        block.streaming = False
        block.seconds = time.perf_counter() - block.began
        cursor = self._end_cursor()
        block.end = cursor.position()
        self._show_body(block, False)
        self._set_header(block)
        self._new_block(cursor, top_margin=6.0)
        self._tail_start = cursor.position()

    def _show_body(self, block: ThinkingBlock, visible: bool) -> None:
        block.open = visible
        doc = self.document()
        end = block.end if block.end >= 0 else doc.characterCount()
        line = doc.findBlock(block.body)
        while line.isValid() and line.position() < end:
            line.setVisible(visible)
            line = line.next()
        doc.markContentsDirty(block.body, max(1, end - block.body))

    def toggle_thinking(self, block_id: int) -> None:
        """Open or close a thinking block (its header link does this)."""
        block = self._thinking.get(block_id)
        if block is None or block.streaming:
            return
        self._show_body(block, not block.open)
        self._set_header(block)
        self.viewport().update()
        self.thinking_toggled.emit(block_id, block.open)

    def thinking_visible(self, block_id: int) -> bool:
        """Whether the thinking text of a block is shown (laid out) right now."""
        block = self._thinking[block_id]
        return self.document().findBlock(block.body).isVisible()

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
        self._live_thinking = None
        self._pending_thinking.clear()
        self._streaming = True

    def append_delta(self, text: str) -> None:
        """Queue new answer text; it is rendered at the next refresh."""
        if not self._streaming or not text:
            return
        if self._live_thinking is not None:
            self._close_thinking()
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
        live = self._live_thinking
        if live is not None:
            if self._pending_thinking:
                self._flush_thinking()
            else:
                self._set_header(live)  # the header's clock keeps going
            self._timer.start(REFRESH_MS * 6)
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
        if self._live_thinking is not None:  # thinking and no answer at all
            self._close_thinking()
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
        self._live_thinking = None
        self._pending_thinking.clear()
        for block_id in [k for k, b in self._thinking.items() if b.header >= message.start]:
            del self._thinking[block_id]
        for key in [k for k, (start, _a) in self._attachments.items() if start >= message.start]:
            del self._attachments[key]
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
        self._attachments.clear()
        self._thinking.clear()
        self._live_thinking = None
        self._pending_thinking.clear()
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
        scheme = url.scheme()
        if scheme in ("view", "play", "think"):
            try:
                key = int(url.path())
            except ValueError:
                return
            if scheme == "think":
                self.toggle_thinking(key)
                return
            attachment = self.attachment(key)
            if attachment is not None:
                (self.image_requested if scheme == "view" else self.play_requested).emit(attachment)
        elif scheme == "copy":
            with contextlib.suppress(ValueError):
                self.copy_code(int(url.path()))
        elif url.scheme() in ("http", "https"):
            QDesktopServices.openUrl(url)
