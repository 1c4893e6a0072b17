"""The real app as a user meets it: ``gemma-desktop`` started as its own process on a real
X display, driven with the keyboard (xdotool), watched from outside (its windows, its
files, its processes), and killed.

Used by the end-to-end tests in this folder; nothing here reaches into the app's objects.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.fixtures.display import window_tree

REPO = Path(__file__).resolve().parents[2]
_KEYBOARD = threading.Lock()


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    poll: float = 0.1,
    details: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(poll)


@dataclass
class Tracked:
    """A process seen at some moment: pid and start time (together unique)."""

    pid: int
    create_time: float
    name: str

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return (
                abs(proc.create_time() - self.create_time) < 0.01
                and proc.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


@dataclass
class AppRun:
    """One launch of the app (``python -m gemma_desktop [args]``) with the test's dirs."""

    env: dict[str, str]
    home: Path
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.home / f"app-{time.monotonic_ns()}.out"

    # --- the process ----------------------------------------------------------------------

    def start(self) -> AppRun:
        out = open(self.log, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gemma_desktop", *self.args],
            env=self.env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def engine_processes(self) -> list[Tracked]:
        """The app's descendants that are vLLM engine processes."""
        found = []
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []
        for child in children:
            try:
                name = child.name()
                command = " ".join(child.cmdline())
                created = child.create_time()
            except psutil.Error:
                continue
            if "resource_tracker" in command:
                continue
            if "VLLM" in name or "VLLM::" in command or "--multiprocessing-fork" in command:
                found.append(Tracked(child.pid, created, name))
        return found

    def kill(self) -> None:
        """SIGKILL, like the OOM killer or a crashing desktop session."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int | None:
        """End the run if it still runs (SIGTERM, then SIGKILL); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode

    # --- what it shows and writes ------------------------------------------------------------

    def windows(self) -> str:
        return window_tree(self.env)

    def wait_window(self, title: str, timeout: float = 90.0) -> None:
        wait_until(
            lambda: f'"{title}"' in self.windows() or not self.running(),
            timeout,
            f"a window {title!r}",
        )
        assert self.running(), f"the app exited:\n{self.output()[-3000:]}"

    def xdotool(self, *args: str) -> str:
        result = subprocess.run(
            ["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def focus(self, window: str = "Gemma Desktop") -> str:
        """Give this run's ``window`` the keyboard focus (no window manager runs on Xvfb)."""
        found = self.xdotool(
            "search",
            "--all",
            "--sync",
            "--onlyvisible",
            "--pid",
            str(self.pid),
            "--name",
            f"^{window}$",
        )
        window_id = found.splitlines()[0]
        self.xdotool("windowfocus", "--sync", window_id)
        return window_id

    def type_message(self, text: str, window: str = "Gemma Desktop") -> None:
        """Type into whatever has the keyboard focus in ``window`` (as a user would), then Enter."""
        with _KEYBOARD:  # one keyboard on the display, shared by the runs a test drives
            self.focus(window)
            self.xdotool("type", "--delay", "20", text)
            self.xdotool("key", "Return")

    def keys(self, *keys: str, window: str = "Gemma Desktop") -> None:
        with _KEYBOARD:
            self.focus(window)
            self.xdotool("key", *keys)

    def data(self, *parts: str) -> Path:
        return self.home / "data" / "gemma-desktop" / Path(*parts)

    def config(self, *parts: str) -> Path:
        return self.home / "config" / "gemma-desktop" / Path(*parts)

    def state(self, *parts: str) -> Path:
        return self.home / "state" / "gemma-desktop" / Path(*parts)

    def answers(self) -> list[tuple[int, str, str]]:
        """(id, status, text) of every answer in the history database."""
        db = self.data("history.sqlite3")
        if not db.exists():
            return []
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                rows = conn.execute(
                    "SELECT id, status, content FROM messages WHERE role = 'assistant' ORDER BY id"
                ).fetchall()
        except sqlite3.Error:
            return []
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def app_env(display_env: dict[str, str], home: Path, **extra: str) -> dict[str, str]:
    """The test's isolated dirs and display, plus ``extra`` (for instance the model)."""
    env = {**display_env, "PYTHONUNBUFFERED": "1", **extra}
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        env[var] = str(home / sub)
    return env


def finished_setup(home: Path, **settings: Any) -> Path:
    """A settings.json as a finished setup leaves it (so the window, not the wizard, opens)."""
    path = home / "config" / "gemma-desktop" / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"setup_complete": True, "tray_notice_shown": True, **settings}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def gone_within(processes: list[Tracked], timeout: float) -> list[Tracked]:
    """Wait up to ``timeout`` for ``processes`` to end; returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if p.alive()]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if p.alive()]
    return alive


def end_strays(processes: list[Tracked]) -> None:
    """After a failed test: never leave an engine running for the next test."""
    for tracked in processes:
        if tracked.alive():
            try:
                os.kill(tracked.pid, signal.SIGKILL)
            except OSError:
                continue


def run_scenario(module: str, env: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
    """Run ``python -m module`` (a scenario that prints one ``{"step": ...}`` JSON line per
    observation) and return its steps by name; fails on a reported error or exit code."""
    proc = subprocess.run(
        [sys.executable, "-m", module],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    steps: dict[str, dict[str, Any]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            steps[data.pop("step")] = data
    assert "error" not in steps, (steps.get("error"), proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return steps
