"""Background work for widgets: one way to start it, one place its failures go.

:func:`spawn` runs a coroutine as a task on the app's loop, keeps it alive
until it ends (asyncio holds only weak references to tasks), and hands an
unexpected exception to the loop's exception handler, which is the app's
crash handler: nothing fails silently. Expected failures
(:class:`~gemma_desktop.core.errors.GemmaDesktopError`) are the coroutine's
business: it shows them where they belong (a status line, a banner) and
should not let them escape.

:func:`run_blocking` runs a blocking call (keyring over D-Bus, NVML, disk,
a download) on the loop's worker threads and awaits its result. Never touch a
widget from inside ``func``: it runs on another thread.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_RUNNING: set[asyncio.Future[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], what: str) -> asyncio.Task[T]:
    """Run ``coro`` in the background; ``what`` names it in a crash report."""
    task = asyncio.ensure_future(coro)
    _RUNNING.add(task)
    task.add_done_callback(functools.partial(_finished, what))
    return task


def _finished(what: str, task: asyncio.Future[Any]) -> None:
    _RUNNING.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        task.get_loop().call_exception_handler(
            {"message": f"{what} failed unexpectedly", "exception": exc, "future": task}
        )


async def run_blocking(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` on a worker thread; the loop (and the window) stay free."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(func, *args))
