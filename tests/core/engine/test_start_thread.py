"""The engine is built on one owner thread that lives as long as the engine (the kernel's
parent-death signal follows that thread); a cancelled start never leaks the late engine."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from gemma_desktop.core.engine.vllm_local import _EngineOwner


class Built:
    """What the owner built; records which thread shut it down."""

    def __init__(self) -> None:
        self.built_on = threading.current_thread().name
        self.shut_down_on: str | None = None
        self.shut_down = threading.Event()

    def shutdown(self) -> None:
        self.shut_down_on = threading.current_thread().name
        self.shut_down.set()


def test_the_owner_thread_builds_lives_with_the_engine_and_shuts_it_down(
    arun: Callable[..., Any],
) -> None:
    owner = _EngineOwner(Built, registry=None)

    async def run() -> Built:
        return await owner.start(asyncio.get_running_loop())

    built = arun(run())
    assert built.built_on == "vllm-engine-owner"
    time.sleep(0.2)
    assert owner._thread.is_alive(), "the thread that started the engine must outlive the start"
    arun(owner.shutdown(timeout_s=10))
    assert built.shut_down_on == "vllm-engine-owner"
    owner._thread.join(timeout=5)
    assert not owner._thread.is_alive()


def test_a_failed_build_comes_back_to_the_loop(arun: Callable[..., Any]) -> None:
    def boom() -> None:
        raise ValueError("bad config")

    owner = _EngineOwner(boom, registry=None)

    async def run() -> None:
        await owner.start(asyncio.get_running_loop())

    with pytest.raises(ValueError, match="bad config"):
        arun(run())
    owner._thread.join(timeout=5)
    assert not owner._thread.is_alive()


def test_a_cancelled_start_shuts_the_late_engine_down(arun: Callable[..., Any]) -> None:
    late: list[Built] = []

    def slow() -> Built:
        time.sleep(0.3)
        late.append(Built())
        return late[-1]

    owner = _EngineOwner(slow, registry=None)

    async def run() -> None:
        task = asyncio.ensure_future(owner.start(asyncio.get_running_loop()))
        await asyncio.sleep(0.05)
        task.cancel()
        owner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    arun(run())
    owner._thread.join(timeout=5)
    assert late and late[0].shut_down.is_set(), "the engine built after the cancel was shut down"
