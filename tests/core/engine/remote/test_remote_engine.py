"""RemoteEngine against a real ``vllm serve`` (CPU build, bundled model) on 127.0.0.1.

Killing the server is in ``test_server_crash.py``, which runs after the other
users of the session's server; the ``vllm_server`` fixture would restart it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gemma_desktop.core.engine.protocol import (
    ChatMessage,
    Engine,
    EngineState,
    EngineStatus,
    PromptTooLongError,
    SamplingOptions,
    StreamEnd,
    StreamItem,
    TextDelta,
)
from gemma_desktop.core.engine.remote import (
    RemoteAuthError,
    RemoteEngine,
    RemoteEngineError,
    RemoteModelNotFoundError,
    RemoteUnreachableError,
    _http_error,
    fetch_models,
)
from tests.core.engine.remote.conftest import SERVED_NAME, VllmServer, free_port
from tests.fixtures.engine import collect_stream

pytestmark = pytest.mark.engine

Arun = Callable[..., Any]
GREEDY = SamplingOptions(temperature=0.0, max_tokens=16)
STORY = [ChatMessage("user", "Once upon a time,")]


async def collect(stream: Any) -> tuple[list[TextDelta], StreamEnd]:
    deltas, end = await collect_stream(stream, StreamEnd)
    assert all(isinstance(item, TextDelta) for item in deltas)
    return deltas, end


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    pytest.fail(f"gave up waiting: {what}")


def test_lists_models_and_streams_with_stats(vllm_server: VllmServer, arun: Arun) -> None:
    engine = RemoteEngine(vllm_server.base_url + "/v1/", api_key=vllm_server.api_key)
    assert isinstance(engine, Engine)
    states: list[EngineState] = []
    engine.add_state_listener(lambda status: states.append(status.state))

    async def scenario() -> tuple[list[TextDelta], StreamEnd]:
        async with engine:
            assert engine.model_id == SERVED_NAME
            assert engine.max_model_len == 2048
            return await collect(engine.chat(STORY, GREEDY))

    deltas, end = arun(scenario(), timeout=180)
    text = "".join(d.text for d in deltas)
    assert len(deltas) >= 2, "the answer arrives in pieces, not at once"
    assert text.strip()
    stats = end.stats
    assert stats.finish_reason == "length"
    assert stats.completion_tokens == 16
    assert sum(d.token_count for d in deltas) == 16
    assert stats.prompt_tokens > 0
    assert stats.time_to_first_token_s is not None
    assert stats.total_time_s >= stats.time_to_first_token_s
    assert stats.tokens_per_second > 0
    assert states[:4] == [
        EngineState.STARTING,
        EngineState.READY,
        EngineState.GENERATING,
        EngineState.READY,
    ]
    assert states[-1] == EngineState.STOPPED


def test_multi_turn_chat_uses_the_servers_template(vllm_server: VllmServer, arun: Arun) -> None:
    engine = RemoteEngine(vllm_server.base_url, SERVED_NAME, vllm_server.api_key)
    messages = [
        ChatMessage("system", "You answer briefly."),
        ChatMessage("user", "Name a colour."),
    ]

    async def scenario() -> tuple[list[TextDelta], StreamEnd]:
        async with engine:
            return await collect(engine.chat(messages, SamplingOptions(0.0, max_tokens=8)))

    deltas, end = arun(scenario(), timeout=120)
    assert engine.api_mode == "chat"
    assert end.stats.finish_reason in ("stop", "length")
    assert end.stats.completion_tokens == sum(d.token_count for d in deltas)


def test_stop_aborts_the_request_on_the_server(vllm_server: VllmServer, arun: Arun) -> None:
    engine = RemoteEngine(vllm_server.base_url, api_key=vllm_server.api_key)
    long_answer = SamplingOptions(temperature=0.0, max_tokens=1500)
    closed_id = f"close-{uuid.uuid4().hex[:8]}"
    aborted_id = f"abort-{uuid.uuid4().hex[:8]}"

    async def stop_by_closing() -> list[StreamItem]:
        await engine.start()
        items: list[StreamItem] = []
        stream = engine.chat(STORY, long_answer, request_id=closed_id)
        async for item in stream:
            items.append(item)
            if len(items) == 3:
                break
        await stream.aclose()  # what the chat view does on Stop
        return items

    items = arun(stop_by_closing(), timeout=120)
    assert all(isinstance(item, TextDelta) for item in items)
    wait_for(
        lambda: vllm_server.aborted(closed_id),
        timeout=60,
        what="the server to log the closed request as aborted",
    )

    async def stop_by_abort() -> tuple[list[TextDelta], StreamEnd]:
        stopping: list[asyncio.Future[None]] = []
        deltas: list[TextDelta] = []
        end: StreamEnd | None = None
        async for item in engine.chat(STORY, long_answer, request_id=aborted_id):
            if isinstance(item, TextDelta):
                deltas.append(item)
                if len(deltas) == 2:
                    stopping.append(asyncio.ensure_future(engine.abort(aborted_id)))
            else:
                end = item
        assert end is not None
        return deltas, end

    _, end = arun(stop_by_abort(), timeout=120)
    assert end.stats.finish_reason == "abort"
    assert end.stats.completion_tokens < 1500
    wait_for(
        lambda: vllm_server.aborted(aborted_id),
        timeout=60,
        what="the server to log the aborted request as aborted",
    )

    finished_id = f"finish-{uuid.uuid4().hex[:8]}"

    async def still_usable() -> StreamEnd:
        try:
            stream = engine.chat(STORY, SamplingOptions(0.0, max_tokens=4), finished_id)
            return (await collect(stream))[1]
        finally:
            await engine.shutdown()

    assert arun(still_usable(), timeout=120).stats.finish_reason == "length"
    assert not vllm_server.aborted(finished_id), "a request that finished is not aborted"
    assert engine.status.state == EngineState.STOPPED


def test_wrong_or_missing_key_is_a_401_with_a_hint(vllm_server: VllmServer, arun: Arun) -> None:
    for key in ("sk-wrong", None):
        engine = RemoteEngine(vllm_server.base_url, api_key=key)
        with pytest.raises(RemoteAuthError) as info:
            arun(engine.start(), timeout=60)
        assert "401" in info.value.reason
        assert "--api-key" in info.value.hint
        assert vllm_server.api_key not in str(info.value)
        assert engine.status.state == EngineState.CRASHED
        arun(engine.shutdown())

    # A key changed on the server while connected: the next request says so.
    engine = RemoteEngine(vllm_server.base_url, api_key=vllm_server.api_key)

    async def key_rejected_mid_session() -> None:
        await engine.start()
        engine.set_api_key("sk-revoked")
        try:
            await collect(engine.chat(STORY, GREEDY))
        finally:
            await engine.shutdown()

    with pytest.raises(RemoteAuthError):
        arun(key_rejected_mid_session(), timeout=60)


def test_wrong_model_names_the_served_ones(vllm_server: VllmServer, arun: Arun) -> None:
    engine = RemoteEngine(vllm_server.base_url, "gemma-nonexistent", vllm_server.api_key)
    with pytest.raises(RemoteModelNotFoundError) as info:
        arun(engine.start(), timeout=60)
    assert SERVED_NAME in info.value.hint
    arun(engine.shutdown())

    models = arun(fetch_models(vllm_server.base_url, vllm_server.api_key))
    assert [m.id for m in models] == [SERVED_NAME]

    # The server's own 404 for a model it does not serve maps to the same error.
    response = httpx.post(
        f"{vllm_server.base_url}/v1/chat/completions",
        json={"model": "gemma-nonexistent", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {vllm_server.api_key}"},
        timeout=60,
    )
    assert response.status_code == 404
    error = _http_error(404, response.content, vllm_server.base_url, "gemma-nonexistent")
    assert isinstance(error, RemoteModelNotFoundError)


def test_prompt_longer_than_the_context_is_refused(vllm_server: VllmServer, arun: Arun) -> None:
    engine = RemoteEngine(vllm_server.base_url, api_key=vllm_server.api_key)
    huge = [ChatMessage("user", "word " * 3000)]

    async def scenario() -> None:
        await engine.start()
        try:
            await collect(engine.chat(huge, GREEDY))
        finally:
            await engine.shutdown()

    with pytest.raises(PromptTooLongError) as info:
        arun(scenario(), timeout=120)
    assert "2048" in info.value.reason
    assert "max-model-len" in info.value.hint


def test_unreachable_server(arun: Arun) -> None:
    engine = RemoteEngine(f"http://127.0.0.1:{free_port()}", connect_timeout_s=2.0)
    seen: list[EngineStatus] = []
    engine.add_state_listener(seen.append)
    with pytest.raises(RemoteUnreachableError) as info:
        arun(engine.start(), timeout=30)
    assert "cannot be reached" in info.value.reason
    assert "vllm serve" in info.value.hint
    assert seen[-1].state == EngineState.CRASHED
    assert seen[-1].detail == info.value.reason
    assert arun(engine.check_health()) is False
    arun(engine.shutdown())


def test_not_a_server_address() -> None:
    with pytest.raises(RemoteEngineError):
        RemoteEngine("gpu-server:8000")
