"""The engine-process record: leftovers of a dead app are ended, nothing else ever is.

Real processes stand in for engine processes: ``python -c 'sleep' --multiprocessing-fork``
has the command line of a spawned engine process, and the "apps" that own them are real
processes too (alive, or killed).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gemma_desktop.core.engine.processes import (
    PTH_LINE,
    EngineRegistry,
    ProcessRecord,
    install_early_guard,
)

_SLEEPER = "import time; time.sleep(600)"


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _engine_like(procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A process whose command line is that of a spawned vLLM engine process."""
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPER, "--multiprocessing-fork"])
    procs.append(proc)
    return proc


def _owner(procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPER])
    procs.append(proc)
    return proc


def _record(path: Path, owner: ProcessRecord, *processes: ProcessRecord) -> None:
    from dataclasses import asdict

    run = {
        "owner": asdict(owner),
        "started": time.time(),
        "processes": [asdict(p) for p in processes],
    }
    data = {"version": 1, "runs": [run]}
    path.write_text(json.dumps(data), encoding="utf-8")


def test_leftovers_of_a_dead_app_are_ended_and_reported(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "engine-processes.json"
    owner = _owner(spawned)
    engine = _engine_like(spawned)
    time.sleep(0.2)
    owner_record = ProcessRecord.of(owner.pid)
    _record(path, owner_record, ProcessRecord.of(engine.pid))
    owner.send_signal(signal.SIGKILL)  # the app died; its engine did not
    owner.wait()
    assert engine.poll() is None

    ended = EngineRegistry(path).end_leftovers()
    assert [r.pid for r in ended] == [engine.pid]
    engine.wait(timeout=10)  # (already reaped by the registry's wait, as our own child)
    assert not psutil.pid_exists(engine.pid), "the leftover engine process still runs"
    assert json.loads(path.read_text())["runs"] == []  # forgotten once ended


def test_a_running_apps_engines_and_a_reused_pid_are_never_touched(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "engine-processes.json"
    live_owner = _owner(spawned)
    live_engine = _engine_like(spawned)
    stranger = _engine_like(spawned)  # looks like an engine, but the record's start time differs
    time.sleep(0.2)
    _record(path, ProcessRecord.of(live_owner.pid), ProcessRecord.of(live_engine.pid))
    assert EngineRegistry(path).end_leftovers() == []
    assert live_engine.poll() is None, "another running instance's engine was ended"

    dead_owner = ProcessRecord(pid=2**22 - 7, create_time=1.0, label="app")
    reused = ProcessRecord(stranger.pid, psutil.Process(stranger.pid).create_time() - 50, "")
    _record(path, dead_owner, reused)
    assert EngineRegistry(path).end_leftovers() == []
    assert stranger.poll() is None, "a process with a recycled pid was ended"


def test_a_process_that_does_not_look_like_an_engine_is_never_ended(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "engine-processes.json"
    other = _owner(spawned)  # no engine command line
    time.sleep(0.2)
    _record(path, ProcessRecord(2**22 - 9, 1.0, "app"), ProcessRecord.of(other.pid))
    assert EngineRegistry(path).end_leftovers() == []
    assert other.poll() is None


def test_this_instance_records_and_forgets_its_processes(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "engine-processes.json"
    engine = _engine_like(spawned)
    registry = EngineRegistry(path)
    registry.add(engine.pid)
    registry.add(engine.pid)
    runs = json.loads(path.read_text())["runs"]
    assert len(runs) == 1 and [p["pid"] for p in runs[0]["processes"]] == [engine.pid]
    assert registry.end_leftovers() == [], "its own processes are not leftovers"
    registry.clear()
    assert json.loads(path.read_text())["runs"] == []


def test_the_early_guard_line_is_installed_once_and_cheap(tmp_path: Path) -> None:
    target = install_early_guard(tmp_path)
    assert target.read_text(encoding="utf-8") == PTH_LINE
    stamp = target.stat().st_mtime_ns
    assert install_early_guard(tmp_path) == target
    assert target.stat().st_mtime_ns == stamp, "rewritten although unchanged"
    # Outside the app's process tree the line does nothing but read one variable.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"exec({PTH_LINE!r}); import sys; print('gemma_desktop' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.stdout.strip() == "False", result.stderr


def _exit_at_once() -> None:
    """A multiprocessing child that ends at once (module level: spawn pickles it by name)."""


def _status(pid: int) -> str | None:
    try:
        return str(psutil.Process(pid).status())
    except psutil.NoSuchProcess:
        return None


def test_ended_children_are_collected_not_left_as_zombies() -> None:
    """What vLLM's shutdown leaves: an ended EngineCore (a multiprocessing child) that
    nobody waits for. ``reap`` collects it through multiprocessing, whose own record then
    says it ended, and any other ended child by pid; a running child and a process that
    is not this one's child are left alone."""
    import multiprocessing

    from gemma_desktop.core.engine.processes import reap

    engine_like = multiprocessing.get_context("spawn").Process(target=_exit_at_once)
    engine_like.start()
    other = subprocess.Popen([sys.executable, "-c", "pass"])
    running = subprocess.Popen([sys.executable, "-c", _SLEEPER])
    try:
        deadline = time.monotonic() + 60
        pids = [engine_like.pid, other.pid]
        while any(_status(p) != psutil.STATUS_ZOMBIE for p in pids):
            assert time.monotonic() < deadline, [_status(p) for p in pids]
            time.sleep(0.05)

        collected = reap([*pids, running.pid, 1])

        assert collected == sorted(pids)
        assert [_status(p) for p in pids] == [None, None]  # gone from the process table
        assert engine_like.exitcode == 0 and not engine_like.is_alive()
        assert _status(running.pid) not in (None, psutil.STATUS_ZOMBIE)
        assert reap(pids) == []  # nothing left to collect
    finally:
        running.kill()
        running.wait()
        other.poll()


def test_a_child_is_collected_the_moment_it_ends_whenever_that_is() -> None:
    """An engine process may end long after the app last looked (a crash, vLLM's shutdown
    returning before EngineCore exits): ``collect_when_ended`` waits for each end."""
    import multiprocessing

    from gemma_desktop.core.engine.processes import collect_when_ended

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    engine_like = multiprocessing.get_context("spawn").Process(target=_exit_at_once)
    engine_like.start()
    collect_when_ended([child.pid, engine_like.pid])
    deadline = time.monotonic() + 60
    while _status(child.pid) is not None or _status(engine_like.pid) is not None:
        assert time.monotonic() < deadline, (_status(child.pid), _status(engine_like.pid))
        time.sleep(0.05)
    assert engine_like.exitcode == 0
    assert child.poll() is not None
