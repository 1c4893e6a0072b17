"""Free GPU memory through the engine host, the tray and the Engine menu, for an engine that
can sleep (vLLM's sleep mode exists only on CUDA, so a stand-in engine declares it here; the
CPU build's stop-and-restart runs with the real engine in tests/e2e/test_tray.py)."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QMainWindow

from gemma_desktop.core.engine.base import EngineBase
from gemma_desktop.core.engine.protocol import (
    SLEEPING,
    EngineAbilities,
    EngineState,
    EngineStatus,
    ProgressListener,
)
from gemma_desktop.core.settings import SettingsStore
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.tray import Tray

MODEL = "google/gemma-4-E2B-it"


class SleepyEngine(EngineBase):
    """Stands in for the CUDA engine: declares sleep and records the calls."""

    def __init__(self) -> None:
        super().__init__(EngineStatus(EngineState.NOT_STARTED, model_id=MODEL))
        self.calls: list[str] = []

    @property
    def model_id(self) -> str:
        return MODEL

    @property
    def abilities(self) -> EngineAbilities:
        return EngineAbilities(sleep=True)

    def _set_state(self, state: EngineState, detail: str = "", hint: str = "") -> None:
        self._publish(EngineStatus(state, detail, MODEL, hint))

    async def start(self, progress: ProgressListener | None = None) -> None:
        self.calls.append("start")
        self._set_state(EngineState.READY)

    async def shutdown(self) -> None:
        self.calls.append("shutdown")
        self._set_state(EngineState.STOPPED)

    async def sleep(self) -> None:
        self.calls.append("sleep")
        self._publish(EngineStatus(EngineState.READY, "Sleeping", MODEL, extra={SLEEPING: "1"}))

    async def wake_up(self) -> None:
        self.calls.append("wake_up")
        self._set_state(EngineState.READY, "Awake again")


def test_free_gpu_memory_sleeps_and_the_next_message_wakes(
    qloop: Any, qtbot: Any, arun: Any
) -> None:
    engine = SleepyEngine()

    async def factory(variant_id: str, progress: ProgressListener) -> SleepyEngine:
        return engine

    host = EngineHost(factory, MODEL)
    window = QMainWindow()
    qtbot.addWidget(window)
    tray = Tray(window, host, store=SettingsStore(), available=True, quit_app=lambda: None)
    tray.refresh()
    assert not tray.free_action.isVisible()  # nothing to free yet
    arun(host.start())
    tray.refresh()
    assert tray.free_action.isVisible() and tray.free_action.isEnabled()
    assert "to RAM" in tray.free_action.toolTip()

    tray.free_action.trigger()
    qtbot.waitUntil(lambda: host.is_sleeping)
    tray.refresh()
    assert engine.calls == ["start", "sleep"]
    assert host.engine is engine and host.status.state is EngineState.READY
    assert tray.free_action.text() == "GPU memory freed" and not tray.free_action.isEnabled()
    arun(host.free_memory())  # a second press does nothing
    assert engine.calls == ["start", "sleep"]

    arun(host.ensure_awake())  # what the chat does before it sends
    assert engine.calls == ["start", "sleep", "wake_up"]
    assert not host.is_sleeping and host.can_free_memory
    arun(host.ensure_awake())  # awake: nothing to do
    assert engine.calls == ["start", "sleep", "wake_up"]
