"""The app as a user starts it: a real process, its log, Ctrl+C, and auto-start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.cli import main as cli_main
from gemma_desktop.core import paths
from gemma_desktop.core.engine.protocol import EngineState
from gemma_desktop.crash import LOG_FILE_NAME

pytestmark = pytest.mark.usefixtures("fail_keyring")


def test_gui_command_help(capsys: Any) -> None:
    assert cli_main(["gui", "--help"]) == 0
    assert "--no-auto-start" in capsys.readouterr().out


def test_app_process_starts_logs_and_stops_on_interrupt() -> None:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    log = paths.state_dir() / LOG_FILE_NAME
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_desktop.app", "--no-auto-start"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and "starting" in log.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(1.0)  # let the window and the hardware check come up
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Gemma Desktop 0.1.0 starting" in text
    assert "Gemma Desktop stopped" in text
    assert "Traceback" not in text


def test_auto_start_shows_a_notice_and_a_failed_start_explains(
    make_app: Any, arun: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemma_desktop.core.engine.assembly import MachineFacts, local_config
    from gemma_desktop.core.engine.vllm_local import VllmEngine
    from gemma_desktop.core.models.catalog import VariantCatalog
    from gemma_desktop.core.settings import load_settings

    monkeypatch.setenv("ATOMR_INFER_GEMMA_AUTO", "on")
    monkeypatch.setenv("ATOMR_INFER_GEMMA_MODEL", "bundled/gemma-3-270m")
    missing = Path(tempfile.mkdtemp()) / "not-there"
    built: list[str] = []

    async def factory(variant_id: str, progress: Any) -> Any:
        built.append(variant_id)
        return VllmEngine(
            local_config(
                load_settings(), VariantCatalog().bundled, MachineFacts.cpu(), model_path=missing
            )
        )

    app = make_app(engine_factory=factory)
    arun(app.startup(), timeout=60)
    assert built == ["bundled/gemma-3-270m"]
    assert "automatically" in app.window.notice_label.text()
    status = app.host.status
    assert status.state is EngineState.CRASHED
    assert "missing or incomplete" in status.detail and status.hint
    indicator = app.window.indicator
    assert indicator.action_button.isVisibleTo(app.window)
    assert indicator.action_button.accessibleName() == "Restart engine"
    assert "missing or incomplete" in indicator.detail_label.text()


def test_auto_start_off_quietly(make_app: Any, arun: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOMR_INFER_GEMMA_AUTO", "skip-quietly")
    monkeypatch.setenv("ATOMR_INFER_GEMMA_MODEL", "bundled/gemma-3-270m")
    built: list[str] = []

    async def factory(variant_id: str, progress: Any) -> Any:
        built.append(variant_id)
        raise AssertionError("must not start")

    app = make_app(engine_factory=factory)
    arun(app.startup(), timeout=60)
    assert built == []
    assert app.host.status.state is EngineState.NOT_STARTED
    assert "automatically" not in app.window.notice_label.text()
