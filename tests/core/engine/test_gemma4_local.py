"""Gemma 4 through the app's local engine: the tiny real-architecture checkpoint, downloaded
from the loopback hub (now stopped), on vLLM's CPU build.

Random weights answer gibberish: the tests assert structure (tokens stream, counts, finish
reasons) and parity with transformers' own ``generate``, never content.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from gemma_desktop.core.engine.processes import living
from gemma_desktop.core.engine.protocol import (
    ChatMessage,
    EngineState,
    SamplingOptions,
    StreamItem,
    TextDelta,
    ThinkingDelta,
    UnsupportedInputError,
)
from gemma_desktop.core.engine.vllm_local import VllmEngine, VllmStreamEnd
from tests.fixtures.engine import collect_stream
from tests.fixtures.gemma4 import (
    INSTRUCT_ID,
    QUESTION,
    Gemma4Download,
    TransformersGemma4,
    assemble_gemma4_engine,
)
from tests.fixtures.gemma4 import gemma4_message as message_for

pytestmark = pytest.mark.engine

Arun = Callable[..., Any]
GREEDY16 = SamplingOptions(temperature=0.0, max_tokens=16)


async def collect(
    engine: Any, messages: Sequence[ChatMessage], options: SamplingOptions = GREEDY16
) -> tuple[list[StreamItem], VllmStreamEnd]:
    return await collect_stream(engine.chat(messages, options), VllmStreamEnd)


# --- the tests -------------------------------------------------------------------------------


def test_a_downloaded_gemma4_starts_from_its_snapshot_folder_with_the_hub_gone(
    gemma4_engine: VllmEngine, gemma4_download: Gemma4Download
) -> None:
    assert gemma4_engine.status.state == EngineState.READY
    assert gemma4_engine.model_id == INSTRUCT_ID
    assert Path(gemma4_engine.config.model) == gemma4_download.instruct.resolve()
    assert "models--google--gemma-4-E2B-it" in gemma4_engine.config.model
    with pytest.raises(httpx.TransportError):  # the hub it came from is stopped
        httpx.get(gemma4_download.hub_url + "/api/whoami-v2", timeout=2)
    abilities = gemma4_engine.abilities
    assert (abilities.images, abilities.audio, abilities.thinking) == (True, True, True)


def test_text_image_and_audio_stream_and_vllm_counts_the_soft_tokens(
    gemma4_engine: VllmEngine,
    gemma4_transformers: TransformersGemma4,
    gemma4_media: dict[str, Path],
    arun: Arun,
) -> None:
    ends = {}
    for kind in ("text", "image", "audio"):
        items, end = arun(collect(gemma4_engine, [message_for(kind, gemma4_media)]), timeout=120)
        assert len([i for i in items if isinstance(i, TextDelta)]) >= 2, "tokens stream"
        assert end.stats.finish_reason in ("stop", "length"), end.stats.error
        assert end.stats.completion_tokens == len(end.output_token_ids) > 0
        assert end.stats.prompt_tokens == len(end.prompt_token_ids)
        ends[kind] = end
        # the audio request did not take the engine down
        assert gemma4_engine.status.state == EngineState.READY
        assert arun(gemma4_engine.check_health())
    # transformers' processor says how many tokens these attachments become
    image_tokens = gemma4_transformers.attachment_tokens("image", gemma4_media)
    audio_tokens = gemma4_transformers.attachment_tokens("audio", gemma4_media)
    text = ends["text"].stats.prompt_tokens
    # the same question with an attachment: its soft tokens, between begin and end markers
    assert ends["image"].stats.prompt_tokens == text + image_tokens
    assert ends["audio"].stats.prompt_tokens == text + audio_tokens
    assert image_tokens > 2 and audio_tokens > 2
    # a text request after audio still works
    _, after = arun(collect(gemma4_engine, [message_for("text", gemma4_media)]), timeout=60)
    assert after.output_token_ids == ends["text"].output_token_ids


@pytest.mark.parametrize("kind", ["text", "image", "audio"])
def test_greedy_float32_output_equals_transformers_generate(
    gemma4_engine: VllmEngine,
    gemma4_transformers: TransformersGemma4,
    gemma4_media: dict[str, Path],
    arun: Arun,
    kind: str,
) -> None:
    """16 greedy tokens, the same ids as transformers. One exception, not the app's: random
    weights may emit a multimodal placeholder token (``<|image|>``, ``<|audio|>``...), which
    transformers embeds as padding on the next step and vLLM as itself, so the two may part
    right after one; the comparison runs to the first such token (a real model never writes
    one) and must cover at least 8 tokens."""
    prompt_ids = gemma4_transformers.prompt_ids(kind, gemma4_media)
    expected = gemma4_transformers.generate(kind, gemma4_media)
    _, end = arun(collect(gemma4_engine, [message_for(kind, gemma4_media)]), timeout=120)
    assert list(end.prompt_token_ids) == prompt_ids
    placeholders = set(gemma4_transformers.placeholder_ids)
    upto = next((i + 1 for i, t in enumerate(expected) if t in placeholders), len(expected))
    assert upto >= 8, f"too short a comparison: {expected}"
    assert list(end.output_token_ids)[:upto] == expected[:upto]


def test_thinking_turns_on_the_templates_thinking_and_streams_through_the_parser(
    gemma4_engine: VllmEngine, arun: Arun
) -> None:
    question = [ChatMessage("user", QUESTION)]
    plain = gemma4_engine.build_prompt(question)
    thinking = gemma4_engine.build_prompt(question, thinking=True)
    assert "<|think|>" in thinking.text and "<|think|>" not in plain.text
    options = dataclasses.replace(GREEDY16, thinking=True)
    items, end = arun(collect(gemma4_engine, question, options), timeout=60)
    assert end.stats.prompt_tokens == thinking.token_count
    assert end.stats.finish_reason in ("stop", "length")
    shown = sum(i.token_count for i in items if isinstance(i, (TextDelta, ThinkingDelta)))
    assert shown <= end.stats.completion_tokens == len(end.output_token_ids)
    assert 0 <= end.stats.thinking_tokens <= end.stats.completion_tokens
    # nothing of the model's markup reaches the answer or the thinking
    for item in items:
        assert isinstance(item, (TextDelta, ThinkingDelta))
        assert "<turn|>" not in item.text and "<|channel>" not in item.text


def test_without_the_audio_adjustment_the_first_audio_request_kills_the_engine(
    gemma4_download: Gemma4Download,
    gemma4_media: dict[str, Path],
    arun: Arun,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shows that vllm_compat.gemma4_audio_contiguous_input is still needed on this vLLM:
    with it off in the engine's processes, audio crashes the engine (the shared engine,
    with it on, survives the same request above)."""
    from gemma_desktop.core.engine import vllm_compat

    monkeypatch.setenv(vllm_compat.ADJUSTMENTS_OFF_ENV, "gemma4-audio")
    engine = arun(assemble_gemma4_engine(gemma4_download), timeout=60)
    arun(engine.start(), timeout=600)
    pids = set(engine.engine_pids)
    try:
        _, end = arun(collect(engine, [message_for("audio", gemma4_media)]), timeout=120)
        assert end.stats.finish_reason == "error"
        assert engine.status.state == EngineState.CRASHED
    finally:
        arun(engine.shutdown(), timeout=120)
    assert not living(pids)


def test_text_only_mode_refuses_images_and_audio_naming_the_setting(
    gemma4_download: Gemma4Download, gemma4_media: dict[str, Path], arun: Arun
) -> None:
    engine = arun(
        assemble_gemma4_engine(gemma4_download, ATOMR_INFER_GEMMA_TEXT_ONLY="1"), timeout=60
    )
    assert engine.config.limit_mm_per_prompt == {"image": 0, "audio": 0, "video": 0}
    assert engine.config.text_only
    abilities = engine.abilities
    assert not abilities.images and not abilities.audio and abilities.thinking
    assert "ATOMR_INFER_GEMMA_TEXT_ONLY" in abilities.why_not
    for kind in ("image", "audio"):
        with pytest.raises(UnsupportedInputError) as info:
            arun(collect(engine, [message_for(kind, gemma4_media)]), timeout=30)
        assert "ATOMR_INFER_GEMMA_TEXT_ONLY" in info.value.reason + info.value.hint
    assert engine.status.state == EngineState.NOT_STARTED  # nothing was started or sent


def test_the_bundled_model_refuses_attachments(
    engine_config_for: Callable[..., Any], gemma4_media: dict[str, Path], arun: Arun
) -> None:
    engine = VllmEngine(engine_config_for())
    assert not engine.abilities.images and not engine.abilities.thinking
    assert engine.abilities.why_not == "The bundled Gemma 3 270M reads text only."
    with pytest.raises(UnsupportedInputError) as info:
        arun(collect(engine, [message_for("image", gemma4_media)]), timeout=30)
    assert "Gemma 3 270M reads text only" in info.value.reason
    assert "Gemma 4" in info.value.hint
