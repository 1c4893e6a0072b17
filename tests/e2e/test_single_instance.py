"""Single instance with real processes: a second launch activates the first and exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gemma_desktop.ui.single_instance import server_name

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Short on purpose: a Unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="gd-") as d:
        yield Path(d) / "run"


def _launch(run_dir: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.instance_app", str(run_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen", **env},
    )


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def test_second_launch_activates_the_first_and_exits(run_dir: Path) -> None:
    first = _launch(run_dir)
    try:
        assert _first_line(first) == "primary"
        for n in (1, 2):
            second = _launch(run_dir)
            out, err = second.communicate(timeout=60)
            assert (second.returncode, out.strip()) == (0, "secondary"), err
            assert _first_line(first) == f"activated {n} visible=True"
        first.wait(timeout=30)  # it quits after two activations
        assert first.returncode == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # After a clean exit the next launch is primary again.
    again = _launch(run_dir, EXIT_AFTER="1")
    try:
        assert _first_line(again) == "primary"
    finally:
        again.kill()
        again.wait()


def test_stale_lock_and_socket_after_a_crash(run_dir: Path) -> None:
    first = _launch(run_dir)
    assert _first_line(first) == "primary"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    # The crash left the lock file and the socket behind.
    assert (run_dir / "gemma-desktop.lock").exists()
    assert Path(server_name(run_dir)).exists()
    second = _launch(run_dir, EXIT_AFTER="1")
    try:
        assert _first_line(second) == "primary"
        third = _launch(run_dir)
        out, _ = third.communicate(timeout=60)
        assert out.strip() == "secondary"
        assert _first_line(second) == "activated 1 visible=True"
        second.wait(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()


def test_long_runtime_dir_uses_a_short_socket_name(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    name = server_name(deep)
    assert "/" not in name and name.startswith("gemma-desktop-")
    assert server_name(deep) == name  # stable, so both processes agree
