"""Questions that can be awaited without blocking the event loop.

``QDialog.exec()`` inside a coroutine breaks qasync (FACTS.md), so every
question is shown with ``open()`` and its answer awaited through the
``finished`` signal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

from PySide6.QtWidgets import QMessageBox, QWidget


class AskFunction(Protocol):
    """The signature of :func:`ask` (panels take one, so tests can answer for the user)."""

    def __call__(
        self,
        parent: QWidget | None,
        title: str,
        text: str,
        *,
        informative: str = "",
        yes_text: str = "Yes",
        no_text: str = "Cancel",
    ) -> Awaitable[bool]: ...


async def ask(
    parent: QWidget | None,
    title: str,
    text: str,
    *,
    informative: str = "",
    yes_text: str = "Yes",
    no_text: str = "Cancel",
) -> bool:
    """Ask a yes/no question; ``True`` when the user chose ``yes_text``."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle(title)
    box.setText(text)
    if informative:
        box.setInformativeText(informative)
    yes = box.addButton(yes_text, QMessageBox.ButtonRole.AcceptRole)
    box.addButton(no_text, QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(yes)
    box.setObjectName("question")
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_finished(_result: int) -> None:
        if not done.done():
            done.set_result(box.clickedButton() is yes)

    box.finished.connect(on_finished)
    box.open()
    try:
        return await done
    finally:
        box.deleteLater()
