"""A Qt-free signal for core services: connect callbacks, emit to all of them.

Core services (the conversation recorder, ...) announce changes through
:class:`Event` so the UI can connect Qt slots, and tests plain functions,
without core importing Qt. A callback that raises is logged and skipped: a
broken listener (a widget already deleted) must not break the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Event:
    """Callbacks to call with the same arguments, in the order they connected."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._callbacks: list[Callable[..., Any]] = []

    def connect(self, callback: Callable[..., Any]) -> None:
        self._callbacks.append(callback)

    def disconnect(self, callback: Callable[..., Any]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, *args: Any) -> None:
        for callback in list(self._callbacks):
            try:
                callback(*args)
            except RuntimeError:  # a Qt receiver deleted meanwhile
                log.debug("%s: a listener is gone", self.name, exc_info=True)
            except Exception:
                log.exception("%s: a listener failed", self.name)
