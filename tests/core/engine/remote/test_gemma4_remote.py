"""Gemma 4 through the remote engine: vLLM's OpenAI server (``--reasoning-parser gemma4``) on
the downloaded test checkpoint, images and audio as OpenAI content parts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core.engine.protocol import (
    ChatMessage,
    SamplingOptions,
    StreamEnd,
    StreamItem,
    TextDelta,
    ThinkingDelta,
    UnsupportedInputError,
)
from gemma_desktop.core.engine.remote import RemoteEngine, RemoteModel, remote_abilities
from tests.core.engine.remote.conftest import GEMMA4_SERVED_NAME, VllmServer
from tests.fixtures.engine import collect_stream
from tests.fixtures.gemma4 import TransformersGemma4, gemma4_message

pytestmark = pytest.mark.engine

Arun = Callable[..., Any]
GREEDY16 = SamplingOptions(temperature=0.0, max_tokens=16)


async def collect(
    engine: RemoteEngine, messages: Sequence[ChatMessage], options: SamplingOptions = GREEDY16
) -> tuple[list[StreamItem], StreamEnd]:
    return await collect_stream(engine.chat(messages, options), StreamEnd)


@pytest.fixture
def remote(gemma4_server: VllmServer, arun: Arun) -> Any:
    engine = RemoteEngine(gemma4_server.base_url, GEMMA4_SERVED_NAME, gemma4_server.api_key)
    arun(engine.start(), timeout=60)
    yield engine
    arun(engine.shutdown(), timeout=60)


def test_the_server_model_is_recognised_by_the_folder_it_was_loaded_from(
    remote: RemoteEngine, gemma4_server: VllmServer
) -> None:
    entry = next(m for m in remote.models if m.id == GEMMA4_SERVED_NAME)
    assert entry.root == str(gemma4_server.model_path)  # what vLLM reports, nothing else
    abilities = remote.abilities
    assert (abilities.images, abilities.audio, abilities.thinking) == (True, True, True)


def test_the_name_rule_for_what_a_server_model_takes() -> None:
    assert remote_abilities(RemoteModel("google/gemma-4-E4B-it")).images
    assert remote_abilities(RemoteModel("gemma", root="/srv/models/gemma-4-e2b-it")).audio
    base = remote_abilities(RemoteModel("x", root="/hf/models--google--gemma-4-E2B/snapshots/a"))
    assert base.images and not base.thinking
    other = remote_abilities(RemoteModel("llama", root="meta-llama/Llama-3.1-8B"))
    assert not other.images and not other.audio and "llama" in other.why_not


def test_text_image_and_audio_stream_and_the_server_counts_the_soft_tokens(
    remote: RemoteEngine,
    gemma4_media: dict[str, Path],
    gemma4_transformers: TransformersGemma4,
    arun: Arun,
) -> None:
    ends = {}
    for kind in ("text", "image", "audio"):
        items, end = arun(collect(remote, [gemma4_message(kind, gemma4_media)]), timeout=120)
        assert end.stats.finish_reason in ("stop", "length"), end.stats.error
        assert [i for i in items if isinstance(i, (TextDelta, ThinkingDelta))], "tokens stream"
        assert 0 < end.stats.completion_tokens <= 16
        ends[kind] = end.stats.prompt_tokens
    assert ends["image"] == ends["text"] + gemma4_transformers.attachment_tokens(
        "image", gemma4_media
    )
    assert ends["audio"] == ends["text"] + gemma4_transformers.attachment_tokens(
        "audio", gemma4_media
    )
    assert ends["text"] == len(gemma4_transformers.prompt_ids("text", gemma4_media))


def test_thinking_reaches_the_servers_template(
    remote: RemoteEngine, gemma4_transformers: TransformersGemma4, arun: Arun
) -> None:
    question = [ChatMessage("user", "Hi")]
    _, plain = arun(collect(remote, question), timeout=60)
    options = dataclasses.replace(GREEDY16, thinking=True)
    _, thinking = arun(collect(remote, question, options), timeout=60)
    # the template's thinking switch: a system turn holding <|think|>
    tokenizer = gemma4_transformers.processor.tokenizer
    added = tokenizer("<|turn>system\n<|think|>\n<turn|>\n", add_special_tokens=False).input_ids
    assert thinking.stats.prompt_tokens == plain.stats.prompt_tokens + len(added)
    assert thinking.stats.finish_reason in ("stop", "length")
    assert 0 <= thinking.stats.thinking_tokens <= thinking.stats.completion_tokens


def test_an_unknown_server_model_refuses_attachments_before_sending(
    vllm_server: VllmServer, gemma4_media: dict[str, Path], arun: Arun
) -> None:
    """The bundled Gemma 3 server: text only, and nothing reaches it."""
    engine = RemoteEngine(vllm_server.base_url, None, vllm_server.api_key)
    arun(engine.start(), timeout=60)
    try:
        with pytest.raises(UnsupportedInputError) as info:
            arun(collect(engine, [gemma4_message("image", gemma4_media)]), timeout=30)
        assert "photo.png" in info.value.reason
        assert "Gemma 4" in info.value.hint
    finally:
        arun(engine.shutdown(), timeout=60)
