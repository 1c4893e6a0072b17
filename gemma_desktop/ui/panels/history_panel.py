"""The History page: past conversations, full-text search, open, rename, delete, export.

Deleting a conversation also removes the attachment files no other message uses;
an export writes a conversation's images and recordings into a folder beside
the document (``<name>_files/``).

Every database call runs on the history's worker thread
(:class:`~gemma_desktop.core.chat.history.AsyncHistory`); questions and file dialogs
are shown with ``open()`` and never block the event loop.

Signals (HistoryPanel):
    open_requested(int): the user wants to continue this conversation in the chat.
    conversation_deleted(int): this conversation was deleted from the history.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from pathlib import Path

from PySide6.QtCore import QStandardPaths, Qt, QTimer, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop.core.chat.history import AsyncHistory, Conversation, SearchHit
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.ui.dialogs import ask
from gemma_desktop.ui.tasks import spawn

log = logging.getLogger(__name__)

#: Item data: the conversation id and its stored title.
ID_ROLE = Qt.ItemDataRole.UserRole
TITLE_ROLE = Qt.ItemDataRole.UserRole + 1
#: Pause after the last keystroke before searching.
SEARCH_DELAY_MS = 250

EXPORT_FORMATS = {
    "markdown": ("md", "Markdown (*.md)"),
    "json": ("json", "JSON (*.json)"),
}


class HistoryPanel(QWidget):
    """The list of past conversations and what can be done with them."""

    open_requested = Signal(int)
    conversation_deleted = Signal(int)

    def __init__(self, history: AsyncHistory | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = history
        self._generation = 0
        self._populating = False
        self.export_dialog: QFileDialog | None = None

        self.search_field = QLineEdit()
        self.search_field.setObjectName("historySearch")
        self.search_field.setAccessibleName("Search conversations")
        self.search_field.setPlaceholderText("Search all messages")
        self.search_field.setClearButtonEnabled(True)

        self.list = QListWidget()
        self.list.setObjectName("historyList")
        self.list.setAccessibleName("Conversations")
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.EditKeyPressed)
        self.list.setToolTip("Enter or double-click opens; F2 renames")

        self.details = QLabel("")
        self.details.setObjectName("historyDetails")
        self.details.setAccessibleName("Conversation details")
        self.details.setWordWrap(True)
        self.details.setProperty("role", "muted")
        self.details.setTextFormat(Qt.TextFormat.PlainText)
        self.status_label = QLabel("")
        self.status_label.setObjectName("historyStatus")
        self.status_label.setAccessibleName("History status")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.open_button = _button("Open", "Open conversation", "Continue it in the chat")
        self.rename_button = _button("Rename", "Rename conversation", "Change its title (F2)")
        self.delete_button = _button("Delete…", "Delete conversation", "Remove it for good")
        self.export_markdown_button = _button(
            "Export Markdown…", "Export as Markdown", "Save it as a Markdown file"
        )
        self.export_json_button = _button(
            "Export JSON…", "Export as JSON", "Save it as a JSON file"
        )
        self.buttons = (
            self.open_button,
            self.rename_button,
            self.delete_button,
            self.export_markdown_button,
            self.export_json_button,
        )

        actions = QHBoxLayout()
        for button in self.buttons:
            actions.addWidget(button)
        actions.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        title = QLabel("<h2>History</h2>")
        layout.addWidget(title)
        layout.addWidget(self.search_field)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.details)
        layout.addLayout(actions)
        layout.addWidget(self.status_label)

        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.refresh)
        self.search_field.textChanged.connect(lambda _text: self._search_timer.start())
        self.search_field.returnPressed.connect(self.refresh)
        self.list.currentItemChanged.connect(lambda *_: self._update_controls())
        self.list.itemActivated.connect(lambda _item: self.open_selected())
        self.list.itemChanged.connect(self._on_item_changed)
        self.open_button.clicked.connect(self.open_selected)
        self.rename_button.clicked.connect(self.rename_selected)
        self.delete_button.clicked.connect(lambda: spawn(self.delete_selected(), "History"))
        self.export_markdown_button.clicked.connect(lambda: self.export_selected("markdown"))
        self.export_json_button.clicked.connect(lambda: self.export_selected("json"))

        if history is None:
            self.search_field.setEnabled(False)
            self.list.setEnabled(False)
            self.status_label.setText("The conversation history is off in this window.")
        self._update_controls()

    # --- state -----------------------------------------------------------------------

    def selected_id(self) -> int | None:
        item = self.list.currentItem()
        return int(item.data(ID_ROLE)) if item is not None else None

    def conversation_ids(self) -> list[int]:
        """The ids in the list, top to bottom."""
        return [int(self.list.item(row).data(ID_ROLE)) for row in range(self.list.count())]

    def select(self, conversation_id: int) -> bool:
        for row in range(self.list.count()):
            if self.list.item(row).data(ID_ROLE) == conversation_id:
                self.list.setCurrentRow(row)
                return True
        return False

    def _update_controls(self) -> None:
        item = self.list.currentItem()
        for button in self.buttons:
            button.setEnabled(self.history is not None and item is not None)
        self.details.setText(str(item.data(Qt.ItemDataRole.ToolTipRole) or "") if item else "")

    def _fail(self, exc: GemmaDesktopError) -> None:
        self.status_label.setText(f"{exc.reason} {exc.hint}".strip())

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()

    # --- list and search -----------------------------------------------------------

    def refresh(self) -> None:
        """Reload the list (in the background); the search field's text filters it."""
        self._search_timer.stop()
        if self.history is not None:
            spawn(self.reload(), "History")

    async def reload(self) -> None:
        """Reload the list now: every conversation, newest first, or the search's hits."""
        if self.history is None:
            return
        self._generation += 1
        generation = self._generation
        store = self.history.store
        text = self.search_field.text().strip()
        try:
            if text:
                hits = await self.history.call(functools.partial(store.search, text))
                rows = _hits_by_conversation(hits)
            else:
                conversations = await self.history.call(store.list_conversations)
                rows = [(c.id, c.title, _describe(c)) for c in conversations]
        except GemmaDesktopError as exc:
            self._fail(exc)
            return
        if generation != self._generation:
            return  # a newer reload has started
        self._populate(rows)
        if text and not rows:
            self.status_label.setText(f"No message contains “{text}”.")
        elif not text and not rows:
            self.status_label.setText("No conversations yet: they appear here as you chat.")
        else:
            self.status_label.setText("")

    def _populate(self, rows: list[tuple[int, str, str]]) -> None:
        keep = self.selected_id()
        self._populating = True
        try:
            self.list.clear()
            for conversation_id, title, details in rows:
                item = QListWidgetItem(title, self.list)
                item.setData(ID_ROLE, conversation_id)
                item.setData(TITLE_ROLE, title)
                item.setToolTip(details)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
        finally:
            self._populating = False
        if keep is None or not self.select(keep):
            self.list.setCurrentRow(0 if rows else -1)
        self._update_controls()

    # --- actions ---------------------------------------------------------------------

    def open_selected(self) -> None:
        conversation_id = self.selected_id()
        if conversation_id is not None:
            self.open_requested.emit(conversation_id)

    def rename_selected(self) -> None:
        """Edit the selected title in place; the new one is saved when editing ends."""
        item = self.list.currentItem()
        if item is not None:
            self.list.editItem(item)

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        if self._populating:
            return
        title = " ".join(item.text().split())
        if not title:
            # An empty title is not a title: put the old one back.
            self._populating = True
            item.setText(str(item.data(TITLE_ROLE)))
            self._populating = False
            return
        if title != item.data(TITLE_ROLE):
            spawn(self.rename(int(item.data(ID_ROLE)), title), "History")

    async def rename(self, conversation_id: int, title: str) -> None:
        if self.history is None:
            return
        try:
            await self.history.call(self.history.store.rename_conversation, conversation_id, title)
        except GemmaDesktopError as exc:
            self._fail(exc)
        await self.reload()

    async def delete_selected(self) -> bool:
        """Ask, then delete the selected conversation; ``True`` when it was deleted."""
        item = self.list.currentItem()
        if self.history is None or item is None:
            return False
        conversation_id, title = int(item.data(ID_ROLE)), str(item.data(TITLE_ROLE))
        sure = await ask(
            self,
            "Delete conversation",
            f"Delete “{title}”?",
            informative=(
                "Its messages, and the images and recordings only it uses, are removed from "
                "the history. This cannot be undone."
            ),
            yes_text="Delete",
            no_text="Keep it",
        )
        if not sure:
            return False
        try:
            await self.history.call(self.history.store.delete_conversation, conversation_id)
        except GemmaDesktopError as exc:
            self._fail(exc)
            return False
        self.conversation_deleted.emit(conversation_id)
        await self.reload()
        self.status_label.setText(f"Deleted “{title}”.")
        return True

    def export_selected(self, kind: str) -> None:
        """Ask where to save the selected conversation (a dialog opened with ``open()``)."""
        item = self.list.currentItem()
        if self.history is None or item is None:
            return
        conversation_id = int(item.data(ID_ROLE))
        suffix, name_filter = EXPORT_FORMATS[kind]
        folder = QStandardPaths.writableLocation(
            QStandardPaths.StandardLocation.DocumentsLocation
        ) or str(Path.home())
        dialog = QFileDialog(self, "Export conversation")
        dialog.setObjectName("exportDialog")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setFileMode(QFileDialog.FileMode.AnyFile)
        dialog.setNameFilter(name_filter)
        dialog.setDefaultSuffix(suffix)
        dialog.setDirectory(folder)
        dialog.selectFile(f"{_file_stem(str(item.data(TITLE_ROLE)))}.{suffix}")
        dialog.fileSelected.connect(
            lambda path: spawn(self.export_to(conversation_id, Path(path)), "History")
        )
        dialog.finished.connect(lambda _result: self._dialog_done(dialog))
        if self.export_dialog is not None:
            self.export_dialog.reject()
        self.export_dialog = dialog
        dialog.open()

    def _dialog_done(self, dialog: QFileDialog) -> None:
        if self.export_dialog is dialog:
            self.export_dialog = None
        dialog.deleteLater()

    async def export_to(self, conversation_id: int, target: Path) -> Path | None:
        """Write the conversation to ``target`` (``.json`` as JSON, else Markdown)."""
        if self.history is None:
            return None
        try:
            written = await self.history.call(self.history.store.export, conversation_id, target)
        except GemmaDesktopError as exc:
            self._fail(exc)
            return None
        except OSError as exc:
            self.status_label.setText(
                f"Could not write {target}: {exc.strerror or exc}. Choose another folder."
            )
            return None
        files = written.parent / f"{written.stem}_files"
        beside = f" (attachments in {files.name}/ beside it)" if files.is_dir() else ""
        self.status_label.setText(f"Exported to {written}{beside}")
        return written


def _button(text: str, accessible: str, tip: str) -> QPushButton:
    button = QPushButton(text)
    button.setAccessibleName(accessible)
    button.setToolTip(tip)
    return button


def _describe(conversation: Conversation) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(conversation.updated_at))
    count = conversation.message_count
    return f"{count} message{'' if count == 1 else 's'} · last active {when}"


def _hits_by_conversation(hits: list[SearchHit]) -> list[tuple[int, str, str]]:
    """One row per conversation, in the order of its best hit."""
    rows: dict[int, tuple[int, str, str]] = {}
    for hit in hits:
        if hit.conversation_id not in rows:
            rows[hit.conversation_id] = (hit.conversation_id, hit.conversation_title, hit.snippet)
    return list(rows.values())


def _file_stem(title: str) -> str:
    stem = re.sub(r"[^\w\- ]+", "", title).strip().replace(" ", "-")
    return stem[:60] or "conversation"
