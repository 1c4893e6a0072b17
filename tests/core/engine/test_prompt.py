"""Prompt building with the bundled model's real tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core.engine.prompt import (
    BASE_CHAT_TEMPLATE,
    BASE_STOP_STRINGS,
    build_prompt,
    check_fits,
    max_new_tokens,
)
from gemma_desktop.core.engine.protocol import ChatMessage, PromptTooLongError
from gemma_desktop.core.models.bundled import BOS_TOKEN_ID


@pytest.fixture(scope="module")
def tokenizer(bundled_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_path))


def test_bundled_tokenizer_adds_bos_and_has_the_documented_template(tokenizer: Any) -> None:
    assert tokenizer("x").input_ids[0] == BOS_TOKEN_ID
    assert tokenizer.chat_template == BASE_CHAT_TEMPLATE


def test_single_user_message_is_continued_after_exactly_one_bos(tokenizer: Any) -> None:
    prompt = build_prompt(tokenizer, [ChatMessage("user", "Once upon a time,")], 2048)
    assert prompt.text == "<bos>Once upon a time,"
    assert prompt.token_ids[0] == BOS_TOKEN_ID
    assert prompt.token_ids.count(BOS_TOKEN_ID) == 1
    assert prompt.token_ids == tokenizer("Once upon a time,").input_ids
    assert prompt.stop == ()


def test_conversation_uses_user_assistant_turns_and_stops_at_next_user(tokenizer: Any) -> None:
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello."),
        ChatMessage("user", "Name a colour."),
    ]
    prompt = build_prompt(tokenizer, messages, 2048)
    assert (
        prompt.text
        == "<bos>Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: Name a colour.\nAssistant:"
    )
    assert prompt.stop == BASE_STOP_STRINGS
    assert not prompt.uses_model_template


class _TemplateTokenizer:
    """Wraps the real tokenizer with a different (model-own) chat template."""

    def __init__(self, inner: Any, template: str | None) -> None:
        self._inner = inner
        self.chat_template = template

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        if kwargs.get("chat_template") is None:
            kwargs["chat_template"] = self.chat_template
        return self._inner.apply_chat_template(conversation, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner(*args, **kwargs)


def test_model_own_template_is_used_when_present(tokenizer: Any) -> None:
    own = (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
        "{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n"
    )
    prompt = build_prompt(_TemplateTokenizer(tokenizer, own), [ChatMessage("user", "Hi")])
    assert prompt.text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model"
    assert prompt.uses_model_template
    assert prompt.stop == ()


def test_fallback_template_when_the_tokenizer_has_none(tokenizer: Any) -> None:
    messages = [ChatMessage("user", "Hi"), ChatMessage("assistant", "Yo"), ChatMessage("user", "Q")]
    prompt = build_prompt(_TemplateTokenizer(tokenizer, None), messages)
    assert prompt.text == "<bos>User: Hi\nAssistant: Yo\nUser: Q\nAssistant:"
    assert prompt.stop == BASE_STOP_STRINGS


def test_too_long_prompt_raises_with_reason_and_hint(tokenizer: Any) -> None:
    long_text = "word " * 300
    prompt = build_prompt(tokenizer, [ChatMessage("user", long_text)])
    with pytest.raises(PromptTooLongError) as info:
        build_prompt(tokenizer, [ChatMessage("user", long_text)], prompt.token_count)
    assert str(prompt.token_count) in info.value.reason
    assert "max_model_len" in info.value.reason
    assert info.value.hint
    # one free token is enough
    assert build_prompt(tokenizer, [ChatMessage("user", long_text)], prompt.token_count + 1)


def test_check_fits_boundary_and_new_token_cap() -> None:
    check_fits(99, 100)
    with pytest.raises(PromptTooLongError):
        check_fits(100, 100)
    assert max_new_tokens(512, 90, 100) == 10
    assert max_new_tokens(5, 90, 100) == 5
    assert max_new_tokens(5, 90, None) == 5
