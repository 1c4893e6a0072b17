"""The real vLLM engine (CPU build) on the app's qasync loop, with the bundled model.

One engine for the whole session (``shared_engine``, float32); see
tests/fixtures/engine.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from gemma_desktop.core.engine.processes import living
from gemma_desktop.core.engine.protocol import (
    ChatMessage,
    Engine,
    EngineError,
    EngineState,
    EngineStatus,
    PromptTooLongError,
    SamplingOptions,
    StreamEnd,
    StreamItem,
    TextDelta,
)
from gemma_desktop.core.engine.vllm_local import VllmEngine
from tests.fixtures.engine import collect_stream

pytestmark = pytest.mark.engine

GREEDY = SamplingOptions(temperature=0.0, max_tokens=32)
Arun = Callable[..., Any]


async def collect(
    engine: VllmEngine,
    text: str,
    options: SamplingOptions = GREEDY,
    request_id: str | None = None,
) -> tuple[list[TextDelta], StreamEnd]:
    stream = engine.chat([ChatMessage("user", text)], options, request_id)
    deltas, end = await collect_stream(stream, StreamEnd)
    assert all(isinstance(item, TextDelta) for item in deltas)
    return deltas, end


def test_vllm_engine_satisfies_the_protocol(shared_engine: VllmEngine) -> None:
    assert isinstance(shared_engine, Engine)
    assert shared_engine.status.state == EngineState.READY
    assert shared_engine.max_model_len == 2048


def test_tokens_stream_through_the_app_event_loop(
    shared_engine: VllmEngine, arun: Arun, qloop: asyncio.AbstractEventLoop
) -> None:
    from gemma_desktop.ui.loop import AppEventLoop

    assert isinstance(qloop, AppEventLoop)
    states: list[EngineState] = []

    def listener(status: EngineStatus) -> None:
        states.append(status.state)

    shared_engine.add_state_listener(listener)
    try:
        deltas, end = arun(collect(shared_engine, "Once upon a time,"))
    finally:
        shared_engine.remove_state_listener(listener)
    assert len(deltas) >= 8, "tokens arrive one step at a time, not in one block"
    text = "".join(d.text for d in deltas)
    assert len(text.split()) >= 10
    stats = end.stats
    assert stats.finish_reason == "length"
    assert stats.completion_tokens == 32 == sum(d.token_count for d in deltas)
    assert stats.prompt_tokens == 6  # <bos> + "Once upon a time,"
    assert stats.time_to_first_token_s is not None and stats.time_to_first_token_s > 0
    assert stats.tokens_per_second > 0
    assert states == [EngineState.GENERATING, EngineState.READY]


PROMPTS = ["Once upon a time,", "The capital of France is", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def transformers_greedy(bundled_model_path: Path) -> dict[str, list[int]]:
    """Greedy token ids from transformers in float32, the reference implementation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path))
    model = AutoModelForCausalLM.from_pretrained(str(bundled_model_path), dtype=torch.float32)
    model.eval()
    out: dict[str, list[int]] = {}
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            assert ids[0, 0].item() == 2  # <bos>
            generated = model.generate(
                ids, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            out[prompt] = generated[0, ids.shape[1] :].tolist()
    del model
    return out


def test_greedy_output_equals_transformers_token_for_token(
    shared_engine: VllmEngine, arun: Arun, transformers_greedy: dict[str, list[int]]
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shared_engine.config.model)
    for prompt in PROMPTS:
        deltas, end = arun(collect(shared_engine, prompt))
        expected = transformers_greedy[prompt]
        expected_text = tokenizer.decode(expected, skip_special_tokens=True)
        assert "".join(d.text for d in deltas) == expected_text, prompt
        assert end.stats.completion_tokens == len(expected)


def test_stop_aborts_inside_the_engine_and_it_still_answers(
    shared_engine: VllmEngine, arun: Arun
) -> None:
    async def stop_after_three() -> tuple[int, StreamEnd]:
        count = 0
        end: StreamEnd | None = None
        async for item in shared_engine.chat(
            [ChatMessage("user", "Once upon a time,")],
            SamplingOptions(temperature=0.0, max_tokens=1000),
            "stop-me",
        ):
            if isinstance(item, TextDelta):
                count += 1
                if count == 3:
                    await shared_engine.abort("stop-me")
            else:
                end = item
        assert end is not None
        return count, end

    count, end = arun(stop_after_three())
    assert end.stats.finish_reason == "abort"
    assert count < 100
    llm = shared_engine._llm
    assert llm.get_num_unfinished_requests() == 0
    _, end = arun(collect(shared_engine, "The capital of France is"))
    assert end.stats.finish_reason == "length"


def test_closing_the_stream_aborts_the_request(shared_engine: VllmEngine, arun: Arun) -> None:
    async def read_two_then_close() -> None:
        stream = shared_engine.chat(
            [ChatMessage("user", "Once upon a time,")],
            SamplingOptions(temperature=0.0, max_tokens=1000),
        )
        async with contextlib.aclosing(stream):
            seen = 0
            async for item in stream:
                assert isinstance(item, TextDelta)
                seen += 1
                if seen == 2:
                    break
        await asyncio.sleep(0.2)

    arun(read_two_then_close())
    assert shared_engine._llm.get_num_unfinished_requests() == 0
    assert shared_engine.status.state == EngineState.READY


def test_two_concurrent_streams_interleave(shared_engine: VllmEngine, arun: Arun) -> None:
    order: list[str] = []

    async def one(name: str, text: str) -> StreamEnd:
        end: StreamEnd | None = None
        async for item in shared_engine.chat(
            [ChatMessage("user", text)], SamplingOptions(temperature=0.0, max_tokens=24)
        ):
            if isinstance(item, TextDelta):
                order.append(name)
            else:
                end = item
        assert end is not None
        return end

    async def both() -> Sequence[StreamEnd]:
        return await asyncio.gather(
            one("a", "Once upon a time,"), one("b", "The capital of France is")
        )

    ends = arun(both())
    assert [e.stats.finish_reason for e in ends] == ["length", "length"]
    assert ends[0].stats.request_id != ends[1].stats.request_id
    assert order.count("a") == ends[0].stats.completion_tokens
    # both made progress while the other was running, not one after the other
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches >= 2


def test_prompt_longer_than_max_model_len_is_refused(shared_engine: VllmEngine, arun: Arun) -> None:
    text = "word " * 2100

    async def run() -> None:
        async for _ in shared_engine.chat([ChatMessage("user", text)], GREEDY):
            pass

    with pytest.raises(PromptTooLongError) as info:
        arun(run())
    assert "2048" in info.value.reason
    assert shared_engine.status.state == EngineState.READY


def test_max_tokens_are_capped_to_the_context_and_end_with_length(
    shared_engine: VllmEngine, arun: Arun
) -> None:
    text = "word " * 2030
    prompt_tokens = shared_engine.count_prompt_tokens([ChatMessage("user", text)])
    assert prompt_tokens < 2048
    _, end = arun(collect(shared_engine, text, SamplingOptions(temperature=0, max_tokens=500)))
    assert end.stats.finish_reason == "length"
    assert end.stats.completion_tokens == 2048 - prompt_tokens


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.name().startswith("VLLM::EngineCore"):
                proc.kill()


def test_engine_process_killed_mid_stream_crashes_then_restart_works(
    shared_engine: VllmEngine, arun: Arun
) -> None:
    old_pids = set(shared_engine.engine_pids)
    assert old_pids
    states: list[EngineState] = []
    shared_engine.add_state_listener(lambda s: states.append(s.state))

    async def kill_mid_stream() -> list[StreamItem]:
        items: list[StreamItem] = []
        async for item in shared_engine.chat(
            [ChatMessage("user", "Once upon a time,")],
            SamplingOptions(temperature=0.0, max_tokens=1000),
        ):
            items.append(item)
            if len(items) == 3:
                _kill(old_pids)
        return items

    items = arun(kill_mid_stream(), timeout=60)
    end = items[-1]
    assert isinstance(end, StreamEnd)
    assert end.stats.finish_reason == "error"
    assert end.stats.error
    assert shared_engine.status.state == EngineState.CRASHED
    assert EngineState.CRASHED in states
    assert arun(shared_engine.check_health()) is False

    with pytest.raises(EngineError):  # a crashed engine refuses new chats with a hint
        arun(collect(shared_engine, "Hello"))

    arun(shared_engine.restart(), timeout=600)
    assert shared_engine.status.state == EngineState.READY
    assert not living(old_pids), "the dead engine's processes are gone"
    assert set(shared_engine.engine_pids).isdisjoint(old_pids)
    _, end = arun(collect(shared_engine, "The capital of France is"))
    assert end.stats.finish_reason == "length"
    assert arun(shared_engine.check_health()) is True


def test_not_started_engine_refuses_with_a_hint(
    engine_config_for: Callable[..., Any], arun: Arun
) -> None:
    engine = VllmEngine(engine_config_for())

    async def run() -> None:
        async for _ in engine.chat([ChatMessage("user", "Hi")], GREEDY):
            pass

    with pytest.raises(EngineError) as info:
        arun(run())
    assert info.value.hint
    assert engine.status.state == EngineState.NOT_STARTED


def test_missing_model_is_explained(engine_config_for: Callable[..., Any], arun: Arun) -> None:
    engine = VllmEngine(engine_config_for(model="google/gemma-4-E2B-it"))
    with pytest.raises(EngineError) as info:
        arun(engine.start())
    assert "not downloaded" in info.value.reason
    assert "gemma-desktop download google/gemma-4-E2B-it" in info.value.hint
    assert engine.status.state == EngineState.CRASHED
