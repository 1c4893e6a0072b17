"""The tray: a real tray host (trayer under Xvfb) with a real engine, and the close policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest
from PySide6.QtWidgets import QMainWindow, QMessageBox

from gemma_desktop.core.engine.protocol import EngineState, EngineStatus
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID
from gemma_desktop.core.settings import SettingsStore
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.tray import NOTICE_KEY, Tray, describe
from tests.e2e.app_process import run_scenario

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.engine
@pytest.mark.display
def test_tray_under_trayer_with_a_real_engine(tray_host: Any, isolated_dirs: Path) -> None:
    steps = run_scenario("tests.e2e.tray_scenario", tray_host.env, timeout=600)

    assert steps["installed"] == {"available": True, "quit_on_last": False}
    icon = steps["icon"]
    assert icon["visible"] and icon["geometry"][2] > 0  # embedded in trayer's panel
    assert "engine not started" in icon["tooltip"] and icon["engine_action"] == "Start engine"
    assert "engine starting" in steps["starting"]["tooltip"]
    assert steps["starting"]["engine_action_enabled"] is False

    started = steps["started"]
    assert started["state"] == "ready", (started["detail"], started["hint"])
    assert "engine ready" in started["tooltip"] and BUNDLED_MODEL_ID in started["tooltip"]
    assert started["engine_action"] == "Stop engine"
    assert started["pids"], "the engine started no EngineCore process"
    # Free GPU memory is offered while the engine runs (tray and Engine menu).
    assert started["free_visible"] is True and started["free_enabled"] is True
    assert started["free_text"] == "Free GPU memory" and started["menu_free_enabled"] is True

    closed = steps["closed"]
    assert closed["window_visible"] is False and closed["state"] == "ready"
    assert closed["notification"][0] == "Gemma Desktop is still running"
    assert closed["show_action"] == "Show window"
    assert steps["answer_while_hidden"]["text"].strip()  # the engine still answers
    assert steps["shown"] == {"window_visible": True, "show_action": "Hide window"}
    assert steps["hidden"] == {"window_visible": False}
    assert steps["new_chat"] == {"requests": 1, "window_visible": True}
    # On the CPU build Free GPU memory stops the engine (its processes end) ...
    freed = steps["freed"]
    assert freed["state"] == "stopped" and "next message starts it again" in freed["detail"]
    assert freed["alive"] == [], "an engine process still runs, holding its memory"
    assert freed["zombies"] == [], "the app left an ended engine process uncollected"
    assert freed["free_text"] == "GPU memory freed" and freed["free_enabled"] is False
    assert freed["menu_free_visible"] is True
    # ... and the next message from the chat page starts it again and is answered.
    woken = steps["woken"]
    assert woken["state"] == "ready" and woken["sleeping"] is False
    assert woken["messages"] >= 2 and woken["pids"]
    assert set(woken["pids"]).isdisjoint(started["pids"])
    assert steps["quitting"] == {"alive": woken["pids"], "zombies": []}

    exited = steps["exited"]
    assert exited["state"] == "stopped"
    assert exited["alive"] == []
    # Only multiprocessing's resource tracker may outlive the engine: it exits with its parent.
    others = [c for c in exited["children"] if "resource_tracker" not in c["cmd"]]
    assert others == []
    leftovers = []
    for child in exited["children"]:
        try:
            leftovers.append(psutil.Process(child["pid"]))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(leftovers, timeout=30)
    assert alive == []
    assert not [p for p in started["pids"] + woken["pids"] if psutil.pid_exists(p)]
    # The notice is remembered in this test's own settings file, so it shows only once.
    assert SettingsStore().load()[NOTICE_KEY] is True


# --- the close policy and menu, offscreen with the real EngineHost ----------------------


@pytest.fixture
def window(qtbot: Any) -> QMainWindow:
    w = QMainWindow()
    qtbot.addWidget(w)
    w.show()
    return w


def test_close_hides_to_tray_and_notifies_once(qloop: Any, qtbot: Any, window: QMainWindow) -> None:
    host = EngineHost(None, BUNDLED_MODEL_ID)
    quits: list[int] = []
    tray = Tray(
        window, host, store=SettingsStore(), available=True, quit_app=lambda: quits.append(1)
    ).install()
    window.close()
    qtbot.waitUntil(lambda: tray.last_notification is not None)
    assert not window.isVisible()
    assert quits == []
    qtbot.waitUntil(lambda: SettingsStore().load().get(NOTICE_KEY) is True)
    tray.last_notification = None
    tray.show_action.trigger()
    assert window.isVisible()
    window.close()
    qtbot.wait(200)
    assert not window.isVisible() and tray.last_notification is None  # only the first time
    # A new Tray (next launch) remembers the notice was shown.
    tray2 = Tray(
        window, host, store=SettingsStore(), available=True, quit_app=lambda: None
    ).install()
    tray.window.removeEventFilter(tray)
    window.show()
    window.close()
    qtbot.wait(200)
    assert tray2.last_notification is None


def test_start_failure_shows_in_menu_and_tooltip(
    qloop: Any, qtbot: Any, window: QMainWindow
) -> None:
    host = EngineHost(None, BUNDLED_MODEL_ID)  # no engine installed
    tray = Tray(
        window, host, store=SettingsStore(), available=True, quit_app=lambda: None
    ).install()
    assert tray.engine_action.text() == "Start engine"
    tray.engine_action.trigger()
    qtbot.waitUntil(lambda: host.status.state is EngineState.CRASHED)
    qtbot.waitUntil(lambda: tray.engine_action.text() == "Restart engine")
    assert "engine crashed" in tray.icon.toolTip()
    assert "No engine is available" in tray.icon.toolTip()


def test_without_tray_closing_asks_while_streaming_then_quits(
    qloop: Any, qtbot: Any, window: QMainWindow
) -> None:
    host = EngineHost(None, BUNDLED_MODEL_ID)
    quits: list[int] = []
    streaming = [True]
    tray = Tray(
        window,
        host,
        store=SettingsStore(),
        available=False,
        is_streaming=lambda: streaming[0],
        quit_app=lambda: quits.append(1),
    ).install()

    def question() -> QMessageBox | None:
        boxes = [b for b in window.findChildren(QMessageBox) if b.isVisible()]
        return boxes[0] if boxes else None

    window.close()
    qtbot.waitUntil(lambda: question() is not None)
    box = question()
    assert box is not None and "still being written" in box.text()
    keep = next(b for b in box.buttons() if b.text() == "Keep running")
    keep.click()
    qtbot.wait(200)
    assert window.isVisible() and quits == []

    window.close()
    qtbot.waitUntil(lambda: question() is not None)
    box = question()
    assert box is not None
    next(b for b in box.buttons() if b.text() == "Quit").click()
    qtbot.waitUntil(lambda: quits == [1])
    assert not window.isVisible() and tray.quitting

    # Not streaming: closing quits at once, without a question.
    window2 = QMainWindow()
    qtbot.addWidget(window2)
    window2.show()
    streaming[0] = False
    quits2: list[int] = []
    Tray(
        window2,
        host,
        store=SettingsStore(),
        available=False,
        is_streaming=lambda: streaming[0],
        quit_app=lambda: quits2.append(1),
    ).install()
    window2.close()
    qtbot.waitUntil(lambda: quits2 == [1])
    assert not [b for b in window2.findChildren(QMessageBox) if b.isVisible()]


def test_engines_declare_their_abilities_and_the_tooltip() -> None:
    from gemma_desktop.core.engine.base import EngineBase
    from gemma_desktop.core.engine.protocol import EngineAbilities

    class Plain(EngineBase):
        pass

    class Capable(EngineBase):
        @property
        def abilities(self) -> EngineAbilities:
            return EngineAbilities(sleep=True)

    status = EngineStatus(EngineState.READY, "Started in 40 s", BUNDLED_MODEL_ID)
    assert Plain(status).abilities.sleep is False  # declared, never guessed
    assert Capable(status).abilities.sleep is True
    assert describe(status) == f"Gemma Desktop — engine ready\n{BUNDLED_MODEL_ID}\nStarted in 40 s"
