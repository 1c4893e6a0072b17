"""Fixtures for the main window's tests: the app built on the session loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gemma_desktop.ui import qtcompat

qtcompat.keep_none_alive()


@pytest.fixture(scope="session", autouse=True)
def python_threads_for_executor(qloop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Run the loop's blocking calls on Python threads instead of qasync's QThreads.

    qasync's default executor is a pool of QThreads that nothing shuts down while
    the session loop stays open; at interpreter exit Qt aborts the process
    ("QThread: Destroyed while thread is still running"). The app does the same
    in :func:`gemma_desktop.app.run_app`.
    """
    previous = getattr(qloop, "_QEventLoop__default_executor", None)
    if previous is not None and not isinstance(previous, ThreadPoolExecutor):
        previous.shutdown(wait=True)  # a QThread pool an earlier test created
    # Left running at teardown: session fixtures torn down later (the shared
    # engine's shutdown) still use it; Python joins its idle threads at exit.
    qloop.set_default_executor(ThreadPoolExecutor(max_workers=8, thread_name_prefix="ui-tests"))
    yield


@pytest.fixture
def no_auto_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOMR_INFER_GEMMA_AUTO", "off")


@pytest.fixture
def make_app(
    qapp: Any, qloop: asyncio.AbstractEventLoop, qtbot: Any, no_auto_start: None
) -> Iterator[Callable[..., Any]]:
    """``make_app(**kwargs)`` builds a :class:`GemmaDesktopApp` shown on screen; closed after."""
    from gemma_desktop.app import GemmaDesktopApp

    qapp.setQuitOnLastWindowClosed(False)
    apps: list[Any] = []

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("crash_dialogs", False)
        app = GemmaDesktopApp(loop=qloop, **kwargs)
        apps.append(app)
        qtbot.addWidget(app.window)
        app.window.show()
        return app

    yield make
    for app in apps:
        if not app.window.is_closed:
            app.window.close()
            qtbot.waitUntil(lambda app=app: app.window.is_closed, timeout=60_000)
        app.close()
