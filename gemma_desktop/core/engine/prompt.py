"""Turning a conversation into the token ids the engine is given.

A model whose tokenizer has a chat template (the Gemma 4 ``-it`` variants, the
provisioned bundled model) is prompted with it; any other model gets the
documented base-model format :data:`BASE_CHAT_TEMPLATE`, here and on a remote
server alike (:func:`render_base_prompt`):

* a conversation of exactly one user message is that text, to be continued
  (``gemma-desktop chat "Once upon a time,"`` continues the story);
* otherwise a system message comes first as a plain paragraph, then each turn
  as ``User: ...`` / ``Assistant: ...`` lines, ending with ``Assistant:`` for
  the model to fill in. Generation stops at the next ``User:`` line.
 The prompt is counted in tokens; one that
leaves no room for a single new token raises :class:`PromptTooLongError`.
Nothing is ever truncated silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemma_desktop.core.engine.protocol import ChatMessage, PromptTooLongError

#: What the model emits at a turn boundary in :data:`BASE_CHAT_TEMPLATE`.
BASE_STOP_STRINGS: tuple[str, ...] = ("\nUser:",)

#: The documented chat format of base models (see the module docstring).
BASE_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages | length == 1 and messages[0]['role'] == 'user' -%}"
    "{{ messages[0]['content'] }}"
    "{%- else -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'User: ' + message['content'] + '\\n' }}"
    "{%- else -%}"
    "{{ 'Assistant: ' + message['content'] + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
    "{%- endif -%}"
)


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


def render_base_prompt(
    messages: Sequence[ChatMessage], bos_token: str = ""
) -> tuple[str, tuple[str, ...]]:
    """The base-model prompt text and its stop strings.

    ``bos_token`` is written first (the local engine tokenizes the text as it
    is; a remote server's ``/v1/completions`` adds ``<bos>`` itself, so it
    passes none).
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if not messages:
        raise ValueError("a chat needs at least one message")
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        BASE_CHAT_TEMPLATE
    )
    text = template.render(
        messages=[{"role": m.role, "content": m.content} for m in messages],
        bos_token=bos_token,
        add_generation_prompt=True,
    )
    single = len(messages) == 1 and messages[0].role == "user"
    return text, () if single else BASE_STOP_STRINGS


def render_prompt(tokenizer: Any, messages: Sequence[ChatMessage]) -> tuple[str, bool]:
    """The prompt text, and whether the model's own chat template produced it.

    A model without a template is rendered with :data:`BASE_CHAT_TEMPLATE` by
    its tokenizer (which knows its ``<bos>``).
    """
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
