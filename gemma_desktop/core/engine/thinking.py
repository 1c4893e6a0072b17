"""Telling a Gemma 4 model's thinking apart from its answer, as the local engine streams it.

Gemma 4 thinks in a channel: ``<|channel>thought\\n ... <channel|>`` then the
answer, then ``<turn|>``. The split is vLLM's own Gemma 4 reasoning parser
(the one ``vllm serve --reasoning-parser gemma4`` uses, reached through
:func:`gemma_desktop.core.engine.vllm_compat.gemma4_reasoning_parser`), fed the
stream step by step. It needs the markers in the text, so the engine samples
with ``skip_special_tokens=False``; :class:`ThinkingSplitter` then hides every
other special token (``<turn|>``, placeholders) from both parts.

Earlier turns never carry thinking: a
:class:`~gemma_desktop.core.engine.protocol.ChatMessage` has no place for it,
and Gemma 4's template strips a thought channel from model turns anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gemma_desktop.core.engine import vllm_compat


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The tokenizer's special tokens as text, longest first (so none hides inside another)."""
    names = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for token in decoder.values():
        if getattr(token, "special", False):
            names.add(str(token.content))
    return tuple(sorted((n for n in names if n), key=len, reverse=True))


def strip_special(text: str, specials: Sequence[str]) -> str:
    """``text`` without any of ``specials``."""
    for token in specials:
        if token in text:
            text = text.replace(token, "")
    return text


class ThinkingSplitter:
    """Splits one answer's stream into (thinking, answer) text, step by step.

    Create one per answer; :meth:`feed` each step's new text (detokenized with
    special tokens) and token ids, then :meth:`finish`.
    """

    def __init__(self, tokenizer: Any, thinking: bool) -> None:
        self._parser = vllm_compat.gemma4_reasoning_parser(tokenizer, thinking)
        self._specials = special_token_strings(tokenizer)
        self._text = ""
        self._ids: list[int] = []

    def feed(self, delta_text: str, delta_ids: Sequence[int]) -> tuple[str, str]:
        """The thinking and the answer text in this step (either may be empty)."""
        previous_text, previous_ids = self._text, list(self._ids)
        self._text += delta_text
        self._ids.extend(delta_ids)
        message = self._parser.extract_reasoning_streaming(
            previous_text, self._text, delta_text, previous_ids, list(self._ids), list(delta_ids)
        )
        return self._split(message)

    def finish(self) -> tuple[str, str]:
        """What the parser still held back when the stream ended."""
        return self._split(self._parser.finish_streaming())

    @property
    def thinking_tokens(self) -> int:
        """How many of the tokens so far were thinking (the parser's count)."""
        return int(self._parser.count_reasoning_tokens(self._ids)) if self._ids else 0

    def _split(self, message: Any) -> tuple[str, str]:
        if message is None:
            return "", ""
        reasoning = strip_special(message.reasoning or "", self._specials)
        content = strip_special(message.content or "", self._specials)
        return reasoning, content
