"""The app's asyncio event loop on top of Qt (qasync), fixed for vLLM.

vLLM calls ``loop.run_in_executor(executor=..., func=...)`` with keyword
arguments, the standard asyncio signature. qasync 0.28 names the second
parameter ``callback``, so those calls fail with ``TypeError`` and every
``generate()`` ends in ``EngineGenerateError``. :class:`AppEventLoop` accepts
the standard names. The app, the CLI and the tests all create their loop here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

import qasync
from PySide6.QtWidgets import QApplication

T = TypeVar("T")


class AppEventLoop(qasync.QEventLoop):  # type: ignore[misc]
    """A ``qasync.QEventLoop`` whose ``run_in_executor`` takes asyncio's parameter names."""

    def run_in_executor(
        self,
        executor: Executor | None,
        func: Callable[..., T],
        *args: Any,
    ) -> asyncio.Future[T]:
        return super().run_in_executor(executor, func, *args)  # type: ignore[no-any-return]


def create_loop(app: QApplication, *, already_running: bool = False) -> AppEventLoop:
    """Create the app's loop and make it the current asyncio loop."""
    loop = AppEventLoop(app, already_running=already_running)
    # Plain Python threads for blocking calls: qasync's default pool of
    # QThreads aborts the process if one still runs when Qt tears down.
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="gemma-desktop"))
    asyncio.set_event_loop(loop)
    return loop
