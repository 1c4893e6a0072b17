"""One prompt, one greedy answer: local engine, remote engine on ``vllm serve``, local endpoint.

All three run the bundled model in float32 with the same chat template, so
greedy decoding must pick the same tokens. (Multi-turn conversations in the
base-model format may differ in length: the local engine also stops at the
format's ``"\nUser:"`` line, a server only at what its template and the
request ask for.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from gemma_desktop.core.engine.local_api import LocalApiServer, server_for
from gemma_desktop.core.engine.protocol import ChatMessage, SamplingOptions, StreamEnd, TextDelta
from gemma_desktop.core.engine.remote import RemoteEngine
from tests.core.engine.remote.conftest import VllmServer

pytestmark = pytest.mark.engine

Arun = Callable[..., Any]
MAX_TOKENS = 32
PROMPTS = [
    [ChatMessage("user", "Once upon a time,")],
    [ChatMessage("user", "The capital of France is")],
]


async def engine_answer(engine: Any, messages: list[ChatMessage]) -> tuple[str, StreamEnd]:
    text = ""
    end: StreamEnd | None = None
    async for item in engine.chat(
        messages, SamplingOptions(temperature=0.0, max_tokens=MAX_TOKENS)
    ):
        if isinstance(item, TextDelta):
            text += item.text
        else:
            end = item
    assert end is not None
    return text, end


async def endpoint_answer(server: LocalApiServer, messages: list[ChatMessage]) -> str:
    assert server.address is not None and server.token is not None
    async with openai.AsyncOpenAI(
        base_url=server.address, api_key=server.token.value, max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="gemma-local",
            messages=[{"role": m.role, "content": m.content} for m in messages],  # type: ignore[misc]
            temperature=0,
            max_tokens=MAX_TOKENS,
            stream=True,
        )
        return "".join(
            [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        )


@pytest.mark.parametrize("messages", PROMPTS, ids=["story", "fact"])
def test_same_greedy_answer_everywhere(
    messages: list[ChatMessage], shared_engine: Any, vllm_server: VllmServer, arun: Arun
) -> None:
    local_text, local_end = arun(engine_answer(shared_engine, messages), timeout=180)

    remote = RemoteEngine(vllm_server.base_url, api_key=vllm_server.api_key)

    async def remote_run() -> tuple[str, StreamEnd]:
        async with remote:
            return await engine_answer(remote, messages)

    remote_text, remote_end = arun(remote_run(), timeout=180)

    endpoint = server_for(shared_engine, "gemma-local", port=0)
    arun(endpoint.start(), timeout=120)
    try:
        endpoint_text = arun(endpoint_answer(endpoint, messages), timeout=180)
    finally:
        arun(endpoint.stop(), timeout=60)

    assert local_text.strip(), "the local engine answered"
    assert remote_text == local_text
    assert endpoint_text == local_text
    assert remote_end.stats.prompt_tokens == local_end.stats.prompt_tokens
    assert remote_end.stats.completion_tokens == local_end.stats.completion_tokens
    assert remote_end.stats.finish_reason == local_end.stats.finish_reason
