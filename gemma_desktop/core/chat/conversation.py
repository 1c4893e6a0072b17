"""The rules of a conversation in the chat: what Regenerate, Edit and a failed prompt remove,
what a reopened conversation continues from, and what an ended answer is saved as.

:class:`ChatSession` holds the messages the engine is sent (without the system
prompt, which the panel adds in front). Each editing rule returns the index
from which messages were removed, so the history recorder can remove the same
ones. :func:`answer_status` turns how a stream ended into the status the
history stores.

A user message keeps its attachments through Regenerate (the message stays)
and Edit (they come back with its text, to be sent again). Each message's
attachments are the protocol's parts (a file and its type); the files behind
them, with the names the user knows them by, are in :meth:`ChatSession.files_of`.
An answer's thinking is never part of the conversation: it is not sent back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gemma_desktop.core.chat.attachments import StoredAttachment
from gemma_desktop.core.chat.history import Message, MessageStatus
from gemma_desktop.core.engine.protocol import ChatMessage, ResponseStats

#: The note the transcript shows under an answer saved with this status.
STATUS_NOTES: dict[str, str] = {
    "stopped": "Stopped.",
    "error": "The answer failed.",
    "interrupted": "Interrupted: the app stopped while this answer was written.",
}


def continues_from(message: Message) -> bool:
    """Whether a reopened conversation continues from ``message``: every user message and
    every answer with text (one cut off before its first token has nothing to give)."""
    return message.role == "user" or (message.role == "assistant" and bool(message.content.strip()))


@dataclass(frozen=True)
class TakenMessage:
    """A user message taken back into the composer: where it was, its text and files."""

    index: int
    text: str
    attachments: tuple[StoredAttachment, ...] = ()


@dataclass
class ChatSession:
    """The messages of the conversation on screen, and the rules that change them."""

    messages: list[ChatMessage] = field(default_factory=list)
    #: The stored files behind the messages' parts, by path.
    files: dict[str, StoredAttachment] = field(default_factory=dict)

    @classmethod
    def from_history(cls, stored: Iterable[Message]) -> tuple[ChatSession, list[Message]]:
        """Continue a stored conversation: every user message and every answer with text
        (an answer cut off before its first token has nothing to continue from). User
        messages keep their attachments (they are sent again); answers never carry their
        thinking."""
        kept = [m for m in stored if continues_from(m)]
        session = cls()
        for m in kept:
            if m.role == "user":
                session.add_user(m.content, m.attachments)
            else:
                session.messages.append(ChatMessage(m.role, m.content))
        return session, kept

    @property
    def has_user_message(self) -> bool:
        return any(m.role == "user" for m in self.messages)

    @property
    def all_files(self) -> list[StoredAttachment]:
        """Every stored file the conversation's messages use."""
        return [
            self.files[str(part.path)]
            for m in self.messages
            for part in m.attachments
            if str(part.path) in self.files
        ]

    def files_of(self, message: ChatMessage) -> tuple[StoredAttachment, ...]:
        """The stored files behind ``message``'s parts."""
        return tuple(
            self.files[str(part.path)]
            for part in message.attachments
            if str(part.path) in self.files
        )

    def add_user(self, text: str, attachments: Sequence[StoredAttachment] = ()) -> None:
        for attachment in attachments:
            self.files[str(attachment.path)] = attachment
        self.messages.append(
            ChatMessage("user", text, tuple(attachment.part() for attachment in attachments))
        )

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

    def take_last_user_message(self) -> TakenMessage | None:
        """Edit last: remove the last user message and everything after it.

        Returns where it was, its text and its attachments (``None`` when there is no
        user message).
        """
        for index in range(len(self.messages) - 1, -1, -1):
            if self.messages[index].role == "user":
                message = self.messages[index]
                del self.messages[index:]
                return TakenMessage(index, message.content, self.files_of(message))
        return None

    def take_unanswered_prompt(self) -> TakenMessage | None:
        """A prompt the engine refused (too long, an attachment it cannot take): take it
        back, with its attachments, so it can be changed and sent again."""
        if self.messages and self.messages[-1].role == "user":
            message = self.messages.pop()
            return TakenMessage(len(self.messages), message.content, self.files_of(message))
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
