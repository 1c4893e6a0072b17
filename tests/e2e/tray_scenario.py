"""The tray with a real engine on a real X display, driven step by step.

Run by ``test_tray.py`` under Xvfb with ``trayer`` as the tray host:
``python -m tests.e2e.tray_scenario``. It builds the real app
(:class:`GemmaDesktopApp` and the tray ``run_app`` installs, with the app's
own engine factory for the bundled model), uses the tray's menu actions, and
prints one JSON line per observation (``{"step": ..., ...}``) for the test to
check. The last menu action is Quit; after the event loop ends it prints
whether any engine process is still alive.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from PySide6.QtWidgets import QApplication


def emit(step: str, **data: Any) -> None:
    print(json.dumps({"step": step, **data}), flush=True)


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


def processes_of(pids: list[int]) -> dict[str, list[int]]:
    """Of ``pids``: those still running (holding memory), and those that ended but that
    the app has not collected (zombies: in the process table for as long as the app runs)."""
    import psutil

    alive, zombies = [], []
    for pid in pids:
        try:
            zombie = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            continue
        (zombies if zombie else alive).append(pid)
    return {"alive": alive, "zombies": zombies}


def main() -> int:
    import psutil

    from gemma_desktop.app import GemmaDesktopApp, install_tray
    from gemma_desktop.core.engine.protocol import (
        ChatMessage,
        EngineState,
        SamplingOptions,
        TextDelta,
    )
    from gemma_desktop.core.engine.vllm_local import preload_vllm
    from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID
    from gemma_desktop.ui.loop import create_loop
    from gemma_desktop.ui.tray import Tray

    app = QApplication(sys.argv[:1])
    app.setApplicationName("gemma-desktop")
    loop = create_loop(app)
    preload_vllm()
    desktop = GemmaDesktopApp(loop=loop, crash_dialogs=False)
    window, host = desktop.window, desktop.host
    host.set_variant(BUNDLED_MODEL_ID)
    window.show()
    tray = install_tray(desktop)
    assert isinstance(tray, Tray)
    desktop.quitter.finished.connect(app.quit)
    new_chats: list[int] = []
    tray.new_chat_requested.connect(lambda: new_chats.append(1))
    pids: list[int] = []
    failure: list[str] = []

    async def scenario() -> None:
        try:
            emit("installed", available=tray.available, quit_on_last=app.quitOnLastWindowClosed())
            await wait_for(lambda: tray.icon.geometry().width() > 0, 20, "icon embedded")
            g = tray.icon.geometry()
            emit(
                "icon",
                visible=tray.icon.isVisible(),
                geometry=[g.x(), g.y(), g.width(), g.height()],
                tooltip=tray.icon.toolTip(),
                engine_action=tray.engine_action.text(),
            )
            tray.engine_action.trigger()  # Start engine
            await wait_for(lambda: host.status.state is EngineState.STARTING, 30, "starting")
            emit(
                "starting",
                tooltip=tray.icon.toolTip(),
                engine_action=tray.engine_action.text(),
                engine_action_enabled=tray.engine_action.isEnabled(),
            )
            await wait_for(
                lambda: host.status.state in (EngineState.READY, EngineState.CRASHED), 400, "ready"
            )
            engine: Any = host.engine
            pids.extend(sorted(engine.engine_pids) if engine is not None else [])
            emit(
                "started",
                state=host.status.state.value,
                detail=host.status.detail,
                hint=host.status.hint,
                tooltip=tray.icon.toolTip(),
                engine_action=tray.engine_action.text(),
                pids=pids,
                free_visible=tray.free_action.isVisible(),
                free_enabled=tray.free_action.isEnabled(),
                free_text=tray.free_action.text(),
                menu_free_enabled=window.free_memory_action.isEnabled(),
            )
            probe = asyncio.get_running_loop().run_in_executor(None, lambda: 42)
            try:
                executor_answer = await asyncio.wait_for(probe, 20)
            except asyncio.TimeoutError:
                executor_answer = None
            emit("executor", answer=executor_answer)
            window.close()
            await asyncio.sleep(0.3)
            # The notice comes once the saved settings were read on a worker thread.
            await wait_for(lambda: tray.last_notification is not None, 30, "tray notice")
            emit(
                "closed",
                window_visible=window.isVisible(),
                state=host.status.state.value,
                notification=tray.last_notification,
                show_action=tray.show_action.text(),
            )
            text = ""
            async for item in engine.chat(
                [ChatMessage("user", "The capital of France is")],
                SamplingOptions(temperature=0.0, max_tokens=8),
            ):
                if isinstance(item, TextDelta):
                    text += item.text
            emit("answer_while_hidden", text=text, state=host.status.state.value)
            tray.show_action.trigger()
            await asyncio.sleep(0.2)
            emit("shown", window_visible=window.isVisible(), show_action=tray.show_action.text())
            tray.show_action.trigger()
            await asyncio.sleep(0.2)
            emit("hidden", window_visible=window.isVisible())
            tray.new_chat_action.trigger()
            await asyncio.sleep(0.2)
            emit("new_chat", requests=len(new_chats), window_visible=window.isVisible())
            # Free GPU memory: on the CPU build the engine stops...
            tray.free_action.trigger()
            await wait_for(lambda: host.is_sleeping, 60, "memory freed")
            await asyncio.sleep(0.2)
            first = list(pids)
            emit(
                "freed",
                state=host.status.state.value,
                detail=host.status.detail,
                **processes_of(first),
                free_text=tray.free_action.text(),
                free_enabled=tray.free_action.isEnabled(),
                menu_free_visible=window.free_memory_action.isVisible(),
            )
            # ... and the next message, sent from the chat page, starts it again.
            window.chat.composer.setPlainText("The capital of France is")
            window.chat.send()
            await wait_for(
                lambda: (
                    window.chat.transcript.last_role == "assistant"
                    and not window.chat.streaming
                    and host.status.state is EngineState.READY
                ),
                400,
                "the answer after freeing",
            )
            again: Any = host.engine
            pids[:] = sorted(again.engine_pids) if again is not None else []
            emit(
                "woken",
                state=host.status.state.value,
                sleeping=host.is_sleeping,
                messages=window.chat.transcript.message_count,
                pids=pids,
                first_pids=first,
            )
            emit("quitting", **processes_of(pids))
            tray.quit_action.trigger()
        except Exception as exc:
            failure.append(repr(exc))
            emit("error", error=repr(exc))
            desktop.quitter.request()

    task = asyncio.ensure_future(scenario())
    with loop:
        loop.run_forever()
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            children.append({"pid": child.pid, "cmd": " ".join(child.cmdline())[:200]})
        except psutil.NoSuchProcess:
            continue
    emit(
        "exited",
        state=host.status.state.value,
        alive=alive,
        children=children,
        scenario_done=task.done(),
    )
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
