"""Gemma 4 prompts and the thinking split, on the test checkpoint's real tokenizer and
vLLM's own Gemma 4 reasoning parser (no engine needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core.engine.prompt import BASE_STOP_STRINGS, Placeholders, build_prompt
from gemma_desktop.core.engine.protocol import ChatMessage
from gemma_desktop.core.engine.thinking import ThinkingSplitter, special_token_strings

#: What a thinking Gemma 4 writes after ``<|turn>model\n``: the thought channel, the
#: answer, the end of its turn (the format of vLLM's Gemma 4 parser and example template).
THOUGHT = "The user asks for 17 * 3. 17 * 3 = 51."
ANSWER = "17 x 3 = **51**."
RECORDED = f"<|channel>thought\n{THOUGHT}<channel|>{ANSWER}<turn|>"


@pytest.fixture(scope="module")
def instruct_tokenizer(gemma4_checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma4_checkpoint)


@pytest.fixture(scope="module")
def base_tokenizer(gemma4_base_checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma4_base_checkpoint)


def stream(tokenizer: Any, text: str, thinking: bool) -> tuple[str, str, ThinkingSplitter]:
    """Feed ``text``'s tokens one step at a time, detokenized as vLLM does with
    ``skip_special_tokens=False``."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    splitter = ThinkingSplitter(tokenizer, thinking)
    thought, answer = [], []
    shown = ""
    for n in range(len(ids)):
        decoded = tokenizer.decode(ids[: n + 1], skip_special_tokens=False)
        part = splitter.feed(decoded[len(shown) :], [ids[n]])
        shown = decoded
        thought.append(part[0])
        answer.append(part[1])
    tail = splitter.finish()
    return "".join(thought) + tail[0], "".join(answer) + tail[1], splitter


@pytest.mark.parametrize("thinking", [True, False])
def test_a_recorded_thinking_answer_is_split_by_vllms_parser(
    instruct_tokenizer: Any, thinking: bool
) -> None:
    thought, answer, splitter = stream(instruct_tokenizer, RECORDED, thinking)
    assert thought == THOUGHT
    assert answer == ANSWER
    # the parser counts the thought channel's tokens (markers included), not the answer's
    answer_tokens = len(instruct_tokenizer(ANSWER, add_special_tokens=False).input_ids)
    total = len(instruct_tokenizer(RECORDED, add_special_tokens=False).input_ids)
    assert 0 < splitter.thinking_tokens <= total - answer_tokens


def test_an_answer_without_thinking_is_all_answer(instruct_tokenizer: Any) -> None:
    thought, answer, splitter = stream(instruct_tokenizer, "Hello there.<turn|>", False)
    assert (thought, answer) == ("", "Hello there.")
    assert splitter.thinking_tokens == 0


def test_special_tokens_are_hidden_longest_first(instruct_tokenizer: Any) -> None:
    specials = special_token_strings(instruct_tokenizer)
    assert {"<turn|>", "<|image|>", "<|channel>", "<bos>"} <= set(specials)
    assert [len(s) for s in specials] == sorted((len(s) for s in specials), reverse=True)


def test_thinking_and_attachments_in_gemma4s_turn_format(instruct_tokenizer: Any) -> None:
    question = [ChatMessage("user", "  What is this?  ")]
    plain = build_prompt(instruct_tokenizer, question)
    assert plain.text == "<bos><|turn>user\nWhat is this?<turn|>\n<|turn>model\n"
    assert plain.token_ids[:2] == instruct_tokenizer.convert_tokens_to_ids(["<bos>", "<|turn>"])
    assert plain.token_ids.count(instruct_tokenizer.bos_token_id) == 1
    thinking = build_prompt(instruct_tokenizer, question, thinking=True)
    assert thinking.text.startswith("<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\n")
    assert thinking.thinking
    media = build_prompt(
        instruct_tokenizer, question, placeholders=Placeholders(((1, 2),), extra_tokens=100)
    )
    assert "<|turn>user\n<|image|><|audio|><|audio|>What is this?<turn|>" in media.text
    assert media.token_count == len(media.token_ids) + 100


def test_earlier_thinking_is_never_sent_back(instruct_tokenizer: Any) -> None:
    """A ChatMessage has no place for thinking; even text that carries a thought channel
    is sent back without it, as Gemma 4's template prescribes."""
    history = [
        ChatMessage("user", "What is 17*3?"),
        ChatMessage("assistant", f"<|channel>thought\n{THOUGHT}<channel|>It is 51."),
        ChatMessage("user", "And 17*4?"),
    ]
    prompt = build_prompt(instruct_tokenizer, history, thinking=True)
    assert "<|turn>model\nIt is 51.<turn|>" in prompt.text
    assert THOUGHT not in prompt.text


def test_the_template_less_base_copy_gets_the_base_model_format(base_tokenizer: Any) -> None:
    assert not getattr(base_tokenizer, "chat_template", None)
    single = build_prompt(base_tokenizer, [ChatMessage("user", "Once upon a time,")])
    assert single.text == "<bos>Once upon a time,"
    assert not single.uses_model_template and single.stop == ()
    turns = [ChatMessage("user", "Hi"), ChatMessage("assistant", "Yo"), ChatMessage("user", "Q")]
    prompt = build_prompt(base_tokenizer, turns, thinking=True)  # a base model cannot think
    assert prompt.text == "<bos>User: Hi\nAssistant: Yo\nUser: Q\nAssistant:"
    assert prompt.stop == BASE_STOP_STRINGS and not prompt.thinking
    pictured = build_prompt(
        base_tokenizer, [ChatMessage("user", "A photo of")], placeholders=Placeholders(((1, 0),))
    )
    assert pictured.text == "<bos><|image|>A photo of"
