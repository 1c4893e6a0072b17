"""A ``vllm serve`` killed in the middle of an answer.

This module sorts after every other user of the session's server, so the
server is killed once, at the end; the ``vllm_server`` fixture restarts it
for any test that still needs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from gemma_desktop.core.engine.protocol import EngineState, SamplingOptions, StreamEnd, TextDelta
from gemma_desktop.core.engine.remote import RemoteEngine, RemoteUnreachableError
from tests.core.engine.remote.conftest import VllmServer
from tests.core.engine.remote.test_remote_engine import GREEDY, STORY, collect

pytestmark = pytest.mark.engine

Arun = Callable[..., Any]


def test_server_killed_mid_stream(vllm_server: VllmServer, arun: Arun) -> None:
    engine = RemoteEngine(vllm_server.base_url, api_key=vllm_server.api_key)
    long_answer = SamplingOptions(temperature=0.0, max_tokens=1500)

    async def scenario() -> tuple[list[TextDelta], StreamEnd]:
        await engine.start()
        deltas: list[TextDelta] = []
        end: StreamEnd | None = None
        async for item in engine.chat(STORY, long_answer):
            if isinstance(item, TextDelta):
                deltas.append(item)
                if len(deltas) == 2:
                    await asyncio.get_running_loop().run_in_executor(None, vllm_server.kill)
            else:
                end = item
        assert end is not None
        return deltas, end

    try:
        deltas, end = arun(scenario(), timeout=180)
        assert len(deltas) >= 2
        assert end.stats.finish_reason == "error"
        assert end.stats.error is not None
        assert "broke in the middle" in end.stats.error
        assert "not reachable" in end.stats.error
        assert engine.status.state == EngineState.CRASHED
        assert "cannot be reached" in engine.status.detail

        with pytest.raises(RemoteUnreachableError):
            arun(collect(engine.chat(STORY, GREEDY)), timeout=30)
        assert engine.status.state == EngineState.CRASHED
    finally:
        arun(engine.shutdown())
