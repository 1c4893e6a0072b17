"""The app loop accepts vLLM's keyword ``run_in_executor`` call; plain qasync does not."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest


def test_keyword_run_in_executor_works_on_the_app_loop(
    qloop: asyncio.AbstractEventLoop, arun: Callable[..., Any]
) -> None:
    async def call() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        assert loop is qloop
        with ThreadPoolExecutor(1, thread_name_prefix="kw") as pool:
            # exactly how vLLM 0.32 calls it inside generate()
            value = await loop.run_in_executor(executor=pool, func=lambda: 21 * 2)
            name = await loop.run_in_executor(pool, lambda: threading.current_thread().name)
        return value, name

    value, name = arun(call())
    assert value == 42
    assert name.startswith("kw")


def test_plain_qasync_loop_rejects_the_same_call(qapp: Any) -> None:
    import qasync

    # not already_running: that would make it the thread's running loop for the session
    plain = qasync.QEventLoop(qapp)
    try:
        with pytest.raises(TypeError, match="func"):
            plain.run_in_executor(executor=None, func=lambda: 1)
    finally:
        plain.close()
