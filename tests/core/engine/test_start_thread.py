"""Engine construction runs on a thread; a cancelled start never leaks the late engine."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from gemma_desktop.core.engine.vllm_local import _in_thread


def test_result_and_errors_come_back_to_the_loop(arun: Callable[..., Any]) -> None:
    async def run() -> str:
        return await _in_thread(lambda: threading.current_thread().name, on_abandoned=print)

    assert arun(run()) == "vllm-engine-start"

    def boom() -> None:
        raise ValueError("bad config")

    async def fail() -> None:
        await _in_thread(boom, on_abandoned=print)

    with pytest.raises(ValueError, match="bad config"):
        arun(fail())


def test_cancelled_start_hands_the_late_result_to_on_abandoned(arun: Callable[..., Any]) -> None:
    abandoned: list[str] = []
    done = threading.Event()

    def slow() -> str:
        time.sleep(0.3)
        return "engine"

    def on_abandoned(result: str) -> None:
        abandoned.append(result)
        done.set()

    async def run() -> None:
        task = asyncio.ensure_future(_in_thread(slow, on_abandoned=on_abandoned))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    arun(run())
    assert done.wait(5)
    assert abandoned == ["engine"]
