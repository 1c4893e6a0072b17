"""The rules of a conversation in the chat: what Regenerate, Edit and a failed prompt remove,
what a reopened conversation continues from, and what an ended answer is saved as.

:class:`ChatSession` holds the messages the engine is sent (without the system
prompt, which the panel adds in front). Each editing rule returns the index
from which messages were removed, so the history recorder can remove the same
ones. :func:`answer_status` turns how a stream ended into the status the
history stores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gemma_desktop.core.chat.history import Message, MessageStatus
from gemma_desktop.core.engine.protocol import ChatMessage, ResponseStats

#: The note the transcript shows under an answer saved with this status.
STATUS_NOTES: dict[str, str] = {
    "stopped": "Stopped.",
    "error": "The answer failed.",
    "interrupted": "Interrupted: the app stopped while this answer was written.",
}


@dataclass
class ChatSession:
    """The messages of the conversation on screen, and the rules that change them."""

    messages: list[ChatMessage] = field(default_factory=list)

    @classmethod
    def from_history(cls, stored: Iterable[Message]) -> tuple[ChatSession, list[Message]]:
        """Continue a stored conversation: every user message and every answer with text
        (an answer cut off before its first token has nothing to continue from)."""
        kept = [
            m for m in stored if m.role == "user" or (m.role == "assistant" and m.content.strip())
        ]
        return cls([ChatMessage(m.role, m.content) for m in kept]), kept

    @property
    def has_user_message(self) -> bool:
        return any(m.role == "user" for m in self.messages)

    def add_user(self, text: str) -> None:
        self.messages.append(ChatMessage("user", text))

    def add_answer(self, text: str) -> bool:
        """Keep an answer; one without text is not part of the conversation."""
        if not text:
            return False
        self.messages.append(ChatMessage("assistant", text))
        return True

    def drop_last_answer(self) -> int | None:
        """Regenerate: remove the last answer, if the conversation ends with one.

        Returns the index it had (``None`` when there was none to remove).
        """
        if self.messages and self.messages[-1].role == "assistant":
            self.messages.pop()
            return len(self.messages)
        return None

    def take_last_user_message(self) -> tuple[int, str] | None:
        """Edit last: remove the last user message and everything after it.

        Returns its index and text (``None`` when there is no user message).
        """
        for index in range(len(self.messages) - 1, -1, -1):
            if self.messages[index].role == "user":
                text = self.messages[index].content
                del self.messages[index:]
                return index, text
        return None

    def take_unanswered_prompt(self) -> tuple[int, str] | None:
        """A prompt the engine refused (too long): take it back so it can be shortened."""
        if self.messages and self.messages[-1].role == "user":
            text = self.messages.pop().content
            return len(self.messages), text
        return None


def answer_status(
    stats: ResponseStats | None, *, cancelled: bool = False, failed: bool = False
) -> MessageStatus:
    """The status an ended answer is saved with.

    ``cancelled``: the stream's task was cancelled (New chat, quit);
    ``failed``: the engine refused the request before it began.
    """
    if cancelled:
        return "stopped"
    if stats is not None and stats.finish_reason == "abort":
        return "stopped"
    if failed or (stats is not None and (stats.finish_reason == "error" or stats.error)):
        return "error"
    return "complete"
