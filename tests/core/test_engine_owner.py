"""The claim on the local engine: one owner per user, released by the kernel with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gemma_desktop.core.engine_owner import EngineOwnedError, EngineOwner, OwnerInfo, refusal

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gemma_desktop.core.engine_owner import EngineOwner
    owner = EngineOwner(sys.argv[1], Path(sys.argv[2]))
    assert owner.acquire()
    owner.set_address(sys.argv[3] or None)
    print("held", flush=True)
    time.sleep(120)
    """
)


def hold(kind: str, directory: Path, address: str = "") -> subprocess.Popen[str]:
    """Another process holding the claim (until killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, kind, str(directory), address],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_one_owner_at_a_time_and_the_holder_is_named(tmp_path: Path) -> None:
    proc = hold("serve", tmp_path, "http://127.0.0.1:11435")
    try:
        window = EngineOwner("window", tmp_path)
        assert not window.acquire()
        assert window.holder() == OwnerInfo("serve", proc.pid, "http://127.0.0.1:11435")
        with pytest.raises(EngineOwnedError) as info:
            window.require()
        assert f"gemma-desktop serve (pid {proc.pid}) at http://127.0.0.1:11435" in (
            info.value.reason
        )
        assert "Remote vLLM server" in info.value.hint and "api-token" in info.value.hint
    finally:
        proc.kill()
        proc.wait()
    # A killed holder's claim is gone at once: no stale lock after a crash.
    window = EngineOwner("window", tmp_path)
    window.require()
    assert window.held and window.holder() == OwnerInfo("window", os.getpid())
    window.release()
    assert not window.held and window.holder() is None


def test_serve_is_told_that_the_app_runs(tmp_path: Path) -> None:
    proc = hold("window", tmp_path)
    try:
        serve = EngineOwner("serve", tmp_path)
        assert not serve.acquire()
        error = refusal("serve", serve.holder())
        assert f"Gemma Desktop (pid {proc.pid}) is already running" in error.reason
        assert "Quit the app" in error.hint
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def test_taking_it_twice_in_one_process_is_one_claim(tmp_path: Path) -> None:
    owner = EngineOwner("serve", tmp_path)
    assert owner.acquire() and owner.acquire()
    assert not EngineOwner("window", tmp_path).acquire()  # another claim, even here
    owner.release()
    owner.release()
    assert refusal("window", None).reason.startswith("Another Gemma Desktop process")
