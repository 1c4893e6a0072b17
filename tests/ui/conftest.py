"""Fixtures for the main window's tests: the app built on the session loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest


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
