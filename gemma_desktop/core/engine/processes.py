"""The engine's processes: they never outlive the app that started them.

vLLM's engine runs in child processes the app starts (``VLLM::EngineCore``
and, on the CPU build, its ``VLLM::Worker``). Nothing in vLLM 0.32 ends them
when the app dies: after ``kill -9``, a crash of Qt, an OOM kill or a logout
they would keep running, computing, holding the model in RAM or VRAM. Three
layers, from the operating system up:

1. **The parent-death signal** (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``):
   each engine process asks the kernel to kill it the moment its parent
   *thread* ends. :func:`arm_parent_death_signal` does it, from vLLM's plugin
   hook (:mod:`gemma_desktop.core.engine.vllm_plugin`, in every vLLM process)
   and, earlier, from :func:`early_guard` at interpreter start (a ``.pth``
   line the Makefile installs: vLLM's hook runs only after EngineCore's
   start-up handshake, seconds in). A process that finds its parent already
   gone when it arms ends itself. It acts only in processes started by this
   app (:data:`ENV_APP_PID`, set by :func:`mark_app_process`), never in the
   app itself, never in multiprocessing's resource tracker (which must
   outlive a crash to clean shared memory up).
2. **One long-lived owner thread per engine**
   (:class:`~gemma_desktop.core.engine.vllm_local.VllmEngine` builds the
   engine on it and shuts it down from it): the signal follows the thread
   that started the child, so that thread lives exactly as long as the engine.
3. **A record of the engine processes** (:class:`EngineRegistry`, pid and
   start time in the state dir): the next launch ends leftovers of its own
   earlier runs (a kernel without the signal, an engine started by an older
   version) and says so. A process is ended only when its pid *and* start
   time match the record, it still looks like a vLLM process, and the app
   instance that recorded it is gone: never a process this app did not
   start, never by name.

:class:`ProcessWatch` finds the engine's processes while it starts (so a
cancelled start can end them at once) and ends them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Set by the app before it starts an engine: its pid. Children inherit it.
ENV_APP_PID = "GEMMA_DESKTOP_APP_PID"
#: The pid a child expects as its parent (the app, or an EngineCore for its Worker).
ENV_PARENT_PID = "GEMMA_DESKTOP_ENGINE_PARENT"
#: ``off`` disables the guard (a test that shows what happens without it).
ENV_GUARD = "GEMMA_DESKTOP_ENGINE_GUARD"
#: What an engine process looks like: vLLM's process titles and the spawn command line.
ENGINE_MARKERS = ("VLLM::", "--multiprocessing-fork", "multiprocessing.spawn")
#: The ``.pth`` line that runs :func:`early_guard` at every interpreter start in
#: the app's environment; it costs one environment lookup elsewhere.
PTH_NAME = "gemma_desktop_engine_guard.pth"
PTH_LINE = (
    "import os; os.environ.get('GEMMA_DESKTOP_APP_PID') and "
    "__import__('gemma_desktop.core.engine.processes').core.engine.processes.early_guard()\n"
)

_PR_SET_PDEATHSIG = 1
_armed = False


# --- layer 1: the parent-death signal ------------------------------------------------


def mark_app_process() -> None:
    """In the app: let the engine processes it starts know it, and expect it as parent."""
    os.environ[ENV_APP_PID] = str(os.getpid())
    os.environ[ENV_PARENT_PID] = str(os.getpid())


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)


def _guard(expected_parent: int | None, where: str) -> None:
    global _armed
    if _armed:
        return
    _armed = True
    if not _set_pdeathsig(signal.SIGKILL):
        return
    if expected_parent is not None and os.getppid() != expected_parent:
        # The parent died before the signal was armed: nobody will ever stop us.
        log.warning(
            "%s: the app is gone (parent %s), ending this engine process", where, expected_parent
        )
        os.kill(os.getpid(), signal.SIGKILL)
    # This process's own children (EngineCore's Worker) expect it as their parent.
    os.environ[ENV_PARENT_PID] = str(os.getpid())


def _active() -> int | None:
    """The app's pid when this is one of its child processes (and the guard is on)."""
    value = os.environ.get(ENV_APP_PID)
    if not value or os.environ.get(ENV_GUARD, "on") == "off":
        return None
    try:
        app_pid = int(value)
    except ValueError:
        return None
    return None if app_pid == os.getpid() else app_pid


def arm_parent_death_signal() -> None:
    """In a vLLM child process of the app: die with the parent. No-op elsewhere; never raises."""
    try:
        if _active() is None:
            return
        import multiprocessing

        parent = multiprocessing.parent_process()
        _guard(parent.pid if parent is not None else None, "vLLM plugin")
    except Exception:  # the guard must never break the engine
        log.exception("could not tie this engine process to the app")


def early_guard() -> None:
    """At interpreter start (the ``.pth`` line): arm in a spawned child of the app."""
    try:
        if _active() is None:
            return
        argv = getattr(sys, "orig_argv", None) or sys.argv
        if not argv or argv[-1] != "--multiprocessing-fork":
            return  # not a spawned engine process (the resource tracker, a helper)
        parent = os.environ.get(ENV_PARENT_PID)
        _guard(int(parent) if parent else None, "start-up")
    except Exception as exc:  # never break an interpreter start
        sys.stderr.write(f"gemma-desktop engine guard failed: {exc!r}\n")


def install_early_guard(site_packages: Path) -> Path:
    """Write the ``.pth`` line into ``site_packages`` (the Makefile calls this); idempotent."""
    target = site_packages / PTH_NAME
    if not target.is_file() or target.read_text(encoding="utf-8") != PTH_LINE:
        from gemma_desktop.core.fsutil import atomic_write

        atomic_write(target, PTH_LINE)
    return target


# --- finding and ending the engine's processes -------------------------------------------------


def engine_children() -> list[Any]:
    """This process's descendants that are engine processes (not the resource tracker)."""
    import psutil

    found = []
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    for child in children:
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" in command:
            continue  # multiprocessing's own, shared; exits by itself
        found.append(child)
    return found


def living(pids: Iterable[int]) -> set[int]:
    """Those of ``pids`` that still run (zombies waiting to be reaped do not count)."""
    import psutil

    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.Error:
            continue
    return alive


def end_processes(procs: Iterable[Any], *, grace_s: float = 5.0) -> None:
    """Wait up to ``grace_s`` for ``procs`` (and their children) to exit; kill what lingers."""
    import psutil

    everything: list[psutil.Process] = []
    for proc in procs:
        try:
            everything.extend([proc, *proc.children(recursive=True)])
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(everything, timeout=grace_s)
    kill_now(alive)


def reap(pids: Iterable[int]) -> list[int]:
    """Collect the exit status of those of ``pids`` that are this process's ended children.

    An ended child stays in the kernel's process table (a zombie) until its parent
    waits for it. vLLM 0.32's shutdown leaves EngineCore so: nothing waits for it
    until multiprocessing starts its next process. Multiprocessing's own children
    are collected through it (``active_children`` waits for every finished one, so
    its records stay right); any other ended child among ``pids`` with ``waitpid``.
    Never blocks; returns the pids collected.
    """
    import multiprocessing

    import psutil

    wanted = set(pids)
    if not wanted:
        return []
    me = os.getpid()
    zombies = set()
    for pid in wanted:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.ppid() == me and proc.status() == psutil.STATUS_ZOMBIE:
                zombies.add(pid)
    if not zombies:
        return []
    multiprocessing.active_children()
    for pid in zombies:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    return sorted(zombies)


def collect_when_ended(pids: Iterable[int]) -> None:
    """Collect each of ``pids`` that is this process's child the moment it ends.

    An engine process can end at any time: at Stop, at Free GPU memory, when it crashes,
    and after vLLM's shutdown has returned (its process manager does not always wait for
    EngineCore). A daemon thread per child waits for its end on a pidfd (no polling, no
    cost while it runs) and then collects it (:func:`reap`), so no ended engine process
    stays in the process table while the app runs.
    """
    import psutil

    me = os.getpid()
    for pid in set(pids):
        try:
            if psutil.Process(pid).ppid() != me:
                continue  # a grandchild (EngineCore's Worker): its parent collects it
        except psutil.Error:
            continue
        threading.Thread(
            target=_collect_at_end, args=(pid,), name=f"engine-reaper-{pid}", daemon=True
        ).start()


def _collect_at_end(pid: int) -> None:
    import select

    import psutil

    try:
        handle = os.pidfd_open(pid)  # readable once the process has ended
    except (AttributeError, OSError):  # not Linux 5.3+, or the process is gone already
        handle = None
    if handle is not None:
        try:
            select.select([handle], [], [])
        finally:
            os.close(handle)
    else:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            while proc.status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.5)
    reap([pid])


def kill_now(procs: Iterable[Any]) -> None:
    """SIGKILL ``procs`` and reap them (a cancelled start, a quit during start-up)."""
    import psutil

    targets = list(procs)
    for proc in targets:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(targets, timeout=5)


class ProcessWatch:
    """Watches this process for new engine processes while an engine starts.

    Each one is recorded in the :class:`EngineRegistry` the moment it appears;
    :meth:`cancel` kills those found so far, and every one that appears until
    :meth:`stop` (the start that spawns them has been abandoned).
    """

    def __init__(self, registry: EngineRegistry | None, poll_s: float = 0.05) -> None:
        self.registry = registry
        self.poll_s = poll_s
        self.pids: dict[int, float] = {}
        self._known: set[int] = {p.pid for p in engine_children()}
        self._stop = threading.Event()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-watch", daemon=True)

    def start(self) -> ProcessWatch:
        self._thread.start()
        return self

    def _sweep(self) -> None:
        import psutil

        for proc in engine_children():
            if proc.pid in self._known:
                continue
            if proc.pid not in self.pids:
                try:
                    self.pids[proc.pid] = proc.create_time()
                except psutil.Error:
                    continue
                if self.registry is not None:
                    self.registry.add(proc.pid)
            if self._cancelled.is_set():
                with contextlib.suppress(psutil.Error):
                    proc.kill()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sweep()
            self._stop.wait(self.poll_s)
        self._sweep()

    def cancel(self) -> None:
        """Kill every engine process of this start, now and as they appear."""
        self._cancelled.set()
        self._sweep()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def processes(self) -> list[Any]:
        """The engine processes this start created that still run."""
        import psutil

        out = []
        for pid, created in self.pids.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
            except psutil.Error:
                continue
        return out


# --- layer 3: the record ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessRecord:
    """One process: its pid and kernel start time (together unique), and what it was."""

    pid: int
    create_time: float
    label: str = ""

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        import psutil

        proc = psutil.Process(pid)
        try:
            label = " ".join(proc.cmdline())[:80]
        except psutil.Error:
            label = ""
        return cls(pid, proc.create_time(), label)

    def running(self, *, engine: bool) -> Any:
        """The live process this record describes, or ``None`` (gone, a zombie, a reused pid)."""
        import psutil

        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01:
                return None  # the kernel gave this pid to another program
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if engine and not any(m in " ".join(proc.cmdline()) for m in ENGINE_MARKERS):
                return None
            return proc
        except psutil.Error:
            return None


class EngineRegistry:
    """``engine-processes.json`` in the state dir: which engine processes which app started.

    ``add`` records a process of this app instance, ``clear`` forgets them
    after a clean shutdown, ``end_leftovers`` (at launch) ends the recorded
    processes of app instances that no longer run and returns what it ended.
    """

    def __init__(self, path: Path | None = None) -> None:
        import psutil

        from gemma_desktop.core import paths

        self.path = path or paths.state_dir() / "engine-processes.json"
        me = psutil.Process()
        self.owner = ProcessRecord(me.pid, me.create_time(), "app")

    def _lock(self) -> Any:
        from gemma_desktop.core.fsutil import FileLock

        return FileLock(self.path.with_name(self.path.name + ".lock"))

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        runs = data.get("runs", []) if isinstance(data, dict) else []
        return [r for r in runs if isinstance(r, dict) and isinstance(r.get("owner"), dict)]

    def _write(self, runs: list[dict[str, Any]]) -> None:
        from gemma_desktop.core.fsutil import atomic_write

        atomic_write(self.path, json.dumps({"version": 1, "runs": runs}, indent=1))

    def _is_mine(self, run: dict[str, Any]) -> bool:
        return bool(ProcessRecord(**run["owner"]) == self.owner)

    def add(self, pid: int) -> None:
        """Record an engine process of this app instance (idempotent)."""
        import psutil

        try:
            record = ProcessRecord.of(pid)
        except psutil.Error:
            return
        with self._lock():
            runs = self._read()
            mine = next((r for r in runs if self._is_mine(r)), None)
            if mine is None:
                mine = {"owner": asdict(self.owner), "started": time.time(), "processes": []}
                runs.append(mine)
            if all(p.get("pid") != record.pid for p in mine["processes"]):
                mine["processes"].append(asdict(record))
            self._write(runs)

    def clear(self) -> None:
        """Forget this instance's processes (they were shut down cleanly)."""
        with self._lock():
            runs = self._read()
            kept = [r for r in runs if not self._is_mine(r)]
            if kept != runs:
                self._write(kept)

    def end_leftovers(self) -> list[ProcessRecord]:
        """End the recorded engine processes of app instances that are gone; returns them."""
        import psutil

        ended: list[ProcessRecord] = []
        live: list[psutil.Process] = []
        with self._lock():
            runs = self._read()
            kept = []
            for run in runs:
                owner = ProcessRecord(**run["owner"])
                if self._is_mine(run) or owner.running(engine=False) is not None:
                    kept.append(run)  # this instance, or another one still running
                    continue
                for entry in run.get("processes", []):
                    try:
                        record = ProcessRecord(**entry)
                    except TypeError:
                        continue
                    proc = record.running(engine=True)
                    if proc is not None:
                        live.append(proc)
                        ended.append(record)
            if kept != runs:
                self._write(kept)
        if live:
            log.warning(
                "ended %d engine process(es) left by an earlier run: %s",
                len(live),
                ", ".join(str(r.pid) for r in ended),
            )
            kill_now(live)
        return ended


def _main(argv: list[str]) -> int:
    """``python -m gemma_desktop.core.engine.processes install-early-guard`` (the Makefile's)."""
    import sysconfig

    if argv != ["install-early-guard"]:
        print("usage: python -m gemma_desktop.core.engine.processes install-early-guard")
        return 2
    print(install_early_guard(Path(sysconfig.get_paths()["purelib"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
