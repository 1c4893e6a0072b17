"""Turning a conversation into the token ids the engine is given.

A model whose tokenizer has a chat template (the Gemma 4 ``-it`` variants, the
provisioned bundled model) is prompted with it; any other model gets the
documented base-model format :data:`gemma_desktop.core.bundled.BASE_CHAT_TEMPLATE`
(one user message is continued as plain text; longer conversations become
``User:`` / ``Assistant:`` turns). The prompt is counted in tokens; one that
leaves no room for a single new token raises :class:`PromptTooLongError`.
Nothing is ever truncated silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemma_desktop.core.bundled import BASE_CHAT_TEMPLATE, BASE_STOP_STRINGS
from gemma_desktop.core.engine import ChatMessage, PromptTooLongError


@dataclass(frozen=True)
class BuiltPrompt:
    """A rendered conversation: its text, token ids and the stop strings of its format."""

    text: str
    token_ids: list[int]
    stop: tuple[str, ...]
    uses_model_template: bool

    @property
    def token_count(self) -> int:
        return len(self.token_ids)


def render_prompt(tokenizer: Any, messages: Sequence[ChatMessage]) -> tuple[str, bool]:
    """The prompt text, and whether the model's own chat template produced it."""
    if not messages:
        raise ValueError("a chat needs at least one message")
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    own = bool(getattr(tokenizer, "chat_template", None))
    text = tokenizer.apply_chat_template(
        conversation,
        chat_template=None if own else BASE_CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    return str(text), own and tokenizer.chat_template != BASE_CHAT_TEMPLATE


def build_prompt(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    max_model_len: int | None = None,
) -> BuiltPrompt:
    """Render and tokenize ``messages``; raise :class:`PromptTooLongError` if it cannot fit.

    The templates write ``<bos>`` themselves, so the text is tokenized without
    adding special tokens (adding them again would double ``<bos>``).
    """
    text, own_template = render_prompt(tokenizer, messages)
    token_ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    base_format_turns = not own_template and not (len(messages) == 1 and messages[0].role == "user")
    prompt = BuiltPrompt(
        text=text,
        token_ids=token_ids,
        stop=BASE_STOP_STRINGS if base_format_turns else (),
        uses_model_template=own_template,
    )
    if max_model_len is not None:
        check_fits(prompt.token_count, max_model_len)
    return prompt


def check_fits(prompt_tokens: int, max_model_len: int) -> None:
    """Raise :class:`PromptTooLongError` unless the prompt leaves room for one token."""
    if prompt_tokens + 1 > max_model_len:
        raise PromptTooLongError(
            f"The conversation is {prompt_tokens} tokens long; the model's limit "
            f"(max_model_len) is {max_model_len} tokens including the answer.",
            "Start a new conversation, shorten the message, or raise max_model_len in "
            "the settings (ATOMR_INFER_GEMMA_MAX_LEN) if the model and memory allow.",
        )


def max_new_tokens(requested: int, prompt_tokens: int, max_model_len: int | None) -> int:
    """``requested`` capped to what fits after the prompt; the answer then ends with ``length``."""
    if max_model_len is None:
        return requested
    return max(1, min(requested, max_model_len - prompt_tokens))
