"""The conversation as rich text, with an answer that streams in.

:class:`TranscriptView` is one ``QTextBrowser`` for the whole conversation.
Tokens are appended to a buffer (:meth:`TranscriptView.append_delta` costs
O(1)); at most ~30 times a second the buffer is cut into complete Markdown
blocks, each rendered once and inserted at the end of the document, and the
unfinished last block is rendered again in place. The cost of a refresh
depends on the size of the current block, not of the answer, so a
20 000-token answer streams as smoothly at its end as at its start.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass

from PySide6.QtCore import QEvent, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QColor,
    QDesktopServices,
    QFont,
    QGuiApplication,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
)
from PySide6.QtWidgets import QTextBrowser, QWidget

from gemma_desktop.ui import theme
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
