"""When ``gemma-desktop serve`` refuses or is stopped early, as a user meets it: beside the
running app, on a saved remote engine, with a model this machine cannot run (none of them
starts an engine), and SIGTERM while the engine is still starting."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from gemma_desktop.core.engine_owner import EngineOwner
from tests.commands.test_serve import SERVE, cli, user_env
from tests.fixtures.scripted_gemma4 import SCRIPTED_REPO_ID


def test_serve_beside_the_running_app_is_refused(tmp_path: Path) -> None:
    env = user_env(tmp_path, tmp_path / "hub")
    env.update(QT_QPA_PLATFORM="offscreen", ATOMR_INFER_GEMMA_AUTO="off")
    app = subprocess.Popen(
        [sys.executable, "-m", "gemma_desktop", "gui", "--no-auto-start"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        owner = EngineOwner("serve", Path(env["XDG_RUNTIME_DIR"]) / "gemma-desktop")
        deadline = time.monotonic() + 90
        while (holder := owner.holder()) is None or holder.pid != app.pid:
            assert app.poll() is None, app.stderr.read() if app.stderr else ""
            assert time.monotonic() < deadline, "the app never took its claim on the engine"
            time.sleep(0.2)
        assert holder.kind == "window"
        refused = cli("serve", env=env)
        assert refused.returncode == 1, refused.stderr[-2000:]
        assert f"Gemma Desktop (pid {app.pid}) is already running" in refused.stderr
        assert "hint: Quit the app first" in refused.stderr
        assert refused.stdout == ""
    finally:
        app.send_signal(signal.SIGTERM)
        try:
            app.wait(timeout=60)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()
    assert app.returncode == 0


def test_a_saved_remote_engine_is_not_served(tmp_path: Path) -> None:
    env = user_env(tmp_path, tmp_path / "hub")
    settings = Path(env["XDG_CONFIG_HOME"]) / "gemma-desktop" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(
        json.dumps({"engine": "remote", "remote_base_url": "http://gpu-server:8000"})
    )
    refused = cli("serve", env=env)
    assert refused.returncode == 1
    assert "remote vLLM server (http://gpu-server:8000)" in refused.stderr
    assert "gemma-desktop serve --local" in refused.stderr


def test_a_model_that_cannot_run_here_gets_the_probes_reason(tmp_path: Path) -> None:
    env = user_env(tmp_path, tmp_path / "hub")  # nothing downloaded, and no GPU here
    probe = cli("probe", "--json", "--variant", "google/gemma-4-E2B-it", env=env)
    report = json.loads(probe.stdout)
    assert (probe.returncode, report["outcome"]) == (3, "skipped")
    refused = cli("serve", "--variant", "google/gemma-4-E2B-it", env=env)
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert f"error: {report['reason']}\nhint: {report['hint']}\n" in refused.stderr
    assert refused.stdout == "" and "Traceback" not in refused.stderr


@pytest.mark.engine
def test_sigterm_while_the_model_loads_leaves_nothing(
    scripted_gemma4_cache: Path, tmp_path: Path
) -> None:
    """SIGTERM (a logout, ``systemctl stop``) as soon as the model starts loading: the start
    is cancelled, whatever it had started ends, and the claim is given back."""
    env = user_env(tmp_path, scripted_gemma4_cache)
    proc = subprocess.Popen(
        [*SERVE, "--variant", SCRIPTED_REPO_ID, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    err: list[str] = []
    loading = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            if line.startswith(f"[Loading {SCRIPTED_REPO_ID}]"):
                loading.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: set[psutil.Process] = set()
    try:
        assert loading.wait(timeout=300), "".join(err)[-2000:]
        with contextlib.suppress(psutil.Error):
            seen.update(psutil.Process(proc.pid).children(recursive=True))
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read() if proc.stdout else ""
        proc.wait(timeout=120)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(err)
    assert proc.returncode == 130, stderr[-2000:]
    assert out == "" and "interrupted" in stderr and "Traceback" not in stderr
    _, alive = psutil.wait_procs(list(seen), timeout=20)
    assert alive == [], f"left behind: {alive}"
    assert EngineOwner("window", Path(env["XDG_RUNTIME_DIR"]) / "gemma-desktop").acquire()
