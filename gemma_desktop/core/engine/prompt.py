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

Attachments (images, audio clips) become the template's content parts, before
the message's text (``{"type": "image"}``, ``{"type": "audio"}``; Gemma 4's
template writes one ``<|image|>`` / ``<|audio|>`` placeholder for each, which
vLLM's processor expands into the soft tokens). The base-model format writes
the same placeholders inline. ``thinking`` renders the template with
``enable_thinking`` (Gemma 4: ``<|think|>`` in the system turn).

The prompt is counted in tokens; one that leaves no room for a single new
token raises :class:`PromptTooLongError`. Nothing is ever truncated silently.
With attachments the count before sending is an upper bound
(:class:`~gemma_desktop.core.media.SoftTokenBudget`: an image's placeholder
may expand to at most ``max_soft_tokens`` + 2 tokens, a clip's to its length in
40 ms steps + 3); the figures an answer reports are vLLM's own count.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
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


#: Placeholders of an image and an audio clip when the tokenizer names none (Gemma 4's).
IMAGE_PLACEHOLDER = "<|image|>"
AUDIO_PLACEHOLDER = "<|audio|>"


@dataclass(frozen=True)
class Placeholders:
    """How many images and audio clips each message carries, and what they add to the
    prompt once vLLM's processor expands their placeholders (at most)."""

    #: Per message (same order as the messages): (images, audio clips).
    counts: tuple[tuple[int, int], ...] = ()
    #: Tokens the expansion adds beyond the placeholders themselves (an upper bound).
    extra_tokens: int = 0


@dataclass(frozen=True)
class BuiltPrompt:
    """A rendered conversation: its text, token ids and the stop strings of its format.

    ``token_ids`` hold one placeholder per attachment; ``token_count`` adds what
    their expansion may take (exact without attachments).
    """

    text: str
    token_ids: list[int]
    stop: tuple[str, ...]
    uses_model_template: bool
    attachment_tokens: int = 0
    thinking: bool = field(default=False)

    @property
    def token_count(self) -> int:
        return len(self.token_ids) + self.attachment_tokens


def render_base_prompt(
    messages: Sequence[ChatMessage], bos_token: str = ""
) -> tuple[str, tuple[str, ...]]:
    """The base-model prompt text and its stop strings.

    ``bos_token`` is written first (the local engine tokenizes the text as it
    is; a remote server's ``/v1/completions`` adds ``<bos>`` itself, so it
    passes none).
    """
    if not messages:
        raise ValueError("a chat needs at least one message")
    text = _base_template().render(
        messages=[{"role": m.role, "content": m.content} for m in messages],
        bos_token=bos_token,
        add_generation_prompt=True,
    )
    return text, _base_stop(messages)


@functools.cache
def _base_template() -> Any:
    """:data:`BASE_CHAT_TEMPLATE`, compiled once."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(BASE_CHAT_TEMPLATE)


def _base_stop(messages: Sequence[ChatMessage]) -> tuple[str, ...]:
    """The base format's stop strings: none when one user message is continued as plain
    text, the next turn's marker once it is a conversation."""
    single = len(messages) == 1 and messages[0].role == "user"
    return () if single else BASE_STOP_STRINGS


def has_own_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries the model's own chat template."""
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and template != BASE_CHAT_TEMPLATE


def _conversation(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    counts: Sequence[tuple[int, int]],
    own_template: bool,
) -> list[dict[str, Any]]:
    image_token = getattr(tokenizer, "image_token", None) or IMAGE_PLACEHOLDER
    audio_token = getattr(tokenizer, "audio_token", None) or AUDIO_PLACEHOLDER
    conversation: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        images, clips = counts[index] if index < len(counts) else (0, 0)
        if not images and not clips:
            conversation.append({"role": message.role, "content": message.content})
        elif own_template:
            parts: list[dict[str, Any]] = [{"type": "image"}] * images + [{"type": "audio"}] * clips
            parts.append({"type": "text", "text": message.content})
            conversation.append({"role": message.role, "content": parts})
        else:
            inline = image_token * images + audio_token * clips + message.content
            conversation.append({"role": message.role, "content": inline})
    return conversation


def render_prompt(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    *,
    thinking: bool = False,
    counts: Sequence[tuple[int, int]] = (),
) -> tuple[str, bool]:
    """The prompt text, and whether the model's own chat template produced it.

    A model without a template is rendered with :data:`BASE_CHAT_TEMPLATE` by
    its tokenizer (which knows its ``<bos>``). ``counts`` gives each message's
    (images, audio clips); ``thinking`` is passed to the model's own template as
    ``enable_thinking``.
    """
    if not messages:
        raise ValueError("a chat needs at least one message")
    own = has_own_template(tokenizer)
    extra: dict[str, Any] = {"enable_thinking": True} if thinking and own else {}
    text = tokenizer.apply_chat_template(
        _conversation(tokenizer, messages, counts, own),
        chat_template=None if getattr(tokenizer, "chat_template", None) else BASE_CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
        **extra,
    )
    return str(text), own


def build_prompt(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    max_model_len: int | None = None,
    *,
    thinking: bool = False,
    placeholders: Placeholders | None = None,
) -> BuiltPrompt:
    """Render and tokenize ``messages``; raise :class:`PromptTooLongError` if it cannot fit.

    The templates write ``<bos>`` themselves, so the text is tokenized without
    adding special tokens (adding them again would double ``<bos>``; vLLM is
    then given these ids, with the attachments beside them, in every mode).
    ``placeholders`` says what each message carries and what it may add
    (see the module docstring).
    """
    placeholders = placeholders or Placeholders()
    text, own_template = render_prompt(
        tokenizer, messages, thinking=thinking, counts=placeholders.counts
    )
    token_ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    prompt = BuiltPrompt(
        text=text,
        token_ids=token_ids,
        stop=() if own_template else _base_stop(messages),
        uses_model_template=own_template,
        attachment_tokens=placeholders.extra_tokens,
        thinking=thinking and own_template,
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
