"""The engine's whole life in the real app: no engine process is left unreaped at any step.

Run by ``test_engine_lifecycle.py`` on the session's Xvfb display:
``python -m tests.e2e.lifecycle_scenario``, with ``HF_HUB_CACHE`` holding the two tiny
Gemma 4 test checkpoints as ``google/gemma-4-E2B-it`` and ``google/gemma-4-E2B``. It
builds the real app (:class:`GemmaDesktopApp`, the app's own engine factory) and drives
it through the window's Engine menu and Model page, one step after another: start, stop,
start, a crash of the engine process (``kill -9``), restart, a switch of model, Free GPU
memory (which stops the engine on the CPU build), Quit. After each step it prints one
JSON line (``{"step": ..., ...}``) with the app's own child processes: an ended one that
the app has not collected shows as a *zombie*.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

from PySide6.QtWidgets import QApplication

from tests.e2e.tray_scenario import emit, wait_for

INSTRUCT_ID = "google/gemma-4-E2B-it"
BASE_ID = "google/gemma-4-E2B"
#: How long a step may take to collect an ended engine process ("as soon as it ends").
REAP_S = 5.0


def children() -> dict[str, list[int]]:
    """This process's direct children: those still running and those ended but uncollected."""
    import psutil

    running, zombies, names = [], [], {}
    for child in psutil.Process().children():
        try:
            names[str(child.pid)] = child.name()
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
            elif "resource_tracker" not in " ".join(child.cmdline()):
                running.append(child.pid)
        except psutil.Error:
            continue
    return {"running": sorted(running), "zombies": sorted(zombies), "names": names}


async def settled(pids: list[int]) -> dict[str, Any]:
    """The children once ``pids`` have ended (or ``REAP_S`` passed): what a user's
    process list shows a moment after the step."""
    import psutil

    deadline = time.monotonic() + REAP_S
    while time.monotonic() < deadline:
        now = children()
        if not now["zombies"] and not any(
            psutil.pid_exists(p) and p in now["running"] for p in pids
        ):
            break
        await asyncio.sleep(0.1)
    return {**children(), "ended": pids}


def main() -> int:
    from gemma_desktop.app import GemmaDesktopApp
    from gemma_desktop.core.engine.protocol import EngineState
    from gemma_desktop.core.engine.vllm_local import preload_vllm
    from gemma_desktop.ui.loop import create_loop

    app = QApplication(sys.argv[:1])
    app.setApplicationName("gemma-desktop")
    loop = create_loop(app)
    preload_vllm()
    desktop = GemmaDesktopApp(loop=loop, crash_dialogs=False)
    window, host = desktop.window, desktop.host
    host.set_variant(INSTRUCT_ID)
    window.show()
    desktop.quitter.finished.connect(app.quit)
    failure: list[str] = []

    def state() -> EngineState:
        return host.status.state

    async def ready(what: str) -> list[int]:
        """After an action that starts the engine: wait for it to begin, then to be ready."""
        await wait_for(lambda: state() is EngineState.STARTING, 60, what + " begun")
        await wait_for(lambda: state() in (EngineState.READY, EngineState.CRASHED), 400, what)
        if state() is not EngineState.READY:
            raise RuntimeError(f"{what}: {host.status.detail} {host.status.hint}")
        engine: Any = host.engine
        return sorted(engine.engine_pids)

    async def scenario() -> None:
        try:
            window.start_action.trigger()
            pids = await ready("first start")
            emit("started", pids=pids, model=host.variant_id, **children())

            window.stop_action.trigger()
            await wait_for(lambda: state() is EngineState.STOPPED, 120, "stopped")
            emit("stopped", state=state().value, **await settled(pids))

            window.start_action.trigger()
            pids = await ready("second start")
            core = [p for p in pids if p in children()["running"]]
            emit("restarted", pids=pids, core=core)
            for pid in core:
                os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: state() is EngineState.CRASHED, 120, "crash noticed")
            emit("crashed", state=state().value, **await settled(core))

            window.restart_action.trigger()
            pids = await ready("restart after the crash")
            emit("recovered", pids=pids)

            window._on_variant_chosen(BASE_ID)  # what picking a model on the Model page does
            new = await ready("the other model")
            emit("switched", model=host.variant_id, pids=new, **await settled(pids))

            window.free_memory_action.trigger()
            await wait_for(lambda: host.is_sleeping, 120, "memory freed")
            emit("freed", state=state().value, **await settled(new))
            window.quit_action.trigger()
        except Exception as exc:
            failure.append(repr(exc))
            emit("error", error=repr(exc), detail=host.status.detail)
            desktop.quitter.request()

    task = asyncio.ensure_future(scenario())
    with loop:
        loop.run_forever()
    emit("exited", scenario_done=task.done(), **children())
    return 1 if failure else 0


if __name__ == "__main__":
    raise SystemExit(main())
