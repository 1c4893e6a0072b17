"""Nothing leaks, nothing blocks, nothing is lost: the real app process, killed and relaunched.

Each test launches ``python -m gemma_desktop`` on the session's Xvfb display with the
test's own folders, drives it with the keyboard and watches it from outside: its windows,
its log, its history database and its process tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.app_process import (
    REPO,
    AppRun,
    Tracked,
    app_env,
    end_strays,
    finished_setup,
    gone_within,
    wait_until,
)

pytestmark = [pytest.mark.display]

#: How many times the kill test kills the streaming window and terminal: 3 each in
#: ``make test``; ``make soak`` sets 10 and prints the figures.
KILLS = int(os.environ.get("GEMMA_DESKTOP_TEST_KILLS", "3"))
#: Where ``make soak`` finds the figures of the last kill run.
FIGURES = REPO / "bench" / "results" / "soak.json"
PROMPT = "Once upon a time,"


@pytest.fixture
def home(isolated_dirs: Path) -> Path:
    return isolated_dirs


@pytest.fixture
def launched(xvfb_display: Any, home: Path) -> Iterator[list[AppRun]]:
    """Every run a test starts; whatever still runs (or left engines) is ended after it."""
    runs: list[AppRun] = []
    seen: list[Tracked] = []
    yield runs
    for run in runs:
        if run.running():
            seen.extend(run.engine_processes())
            run.stop(timeout=30)
    end_strays(seen)


def _log(run: AppRun) -> str:
    try:
        return run.state("gemma-desktop.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _engine_ready(run: AppRun, since: int) -> bool:
    return "engine ready:" in _log(run)[since:]


def _streaming_answer(run: AppRun, known: set[int]) -> tuple[int, str, str] | None:
    for answer in run.answers():
        if answer[0] not in known and answer[1] == "streaming" and answer[2].strip():
            return answer
    return None


def _log_file_text(home: Path) -> str:
    try:
        return (home / "state" / "gemma-desktop" / "gemma-desktop.log").read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError:
        return ""


def _window_kills(
    display_env: dict[str, str],
    home: Path,
    kills: int,
    runs: list[AppRun],
    figures: list[dict[str, Any]],
) -> None:
    """Launch the window, let it start its engine, send a message, SIGKILL it mid-answer;
    ``kills`` times, then once more: each launch finds the cut answer marked interrupted
    and starts a working engine; no engine process outlives a kill by 10 s."""
    finished_setup(home, model_id="bundled/gemma-3-270m")
    env = app_env(display_env, home, ATOMR_INFER_GEMMA_AUTO="on")
    cut: list[int] = []
    for round_no in range(kills + 1):
        offset = len(_log_file_text(home))
        launched_at = time.monotonic()
        run = AppRun(env, home).start()
        runs.append(run)
        run.wait_window("Gemma Desktop")
        wait_until(
            lambda run=run, offset=offset: _engine_ready(run, offset) or not run.running(),
            300,
            "the engine to start by itself",
            details=lambda run=run: _log(run)[-3000:] + run.output()[-2000:],
        )
        assert run.running(), run.output()[-3000:]
        ready_s = time.monotonic() - launched_at
        # The answer the previous round cut off is kept, marked interrupted.
        statuses = {answer_id: status for answer_id, status, _ in run.answers()}
        for answer_id in cut:
            assert statuses.get(answer_id) == "interrupted", (answer_id, statuses)
        if round_no == kills:
            assert run.stop(timeout=60) == 0, run.output()[-3000:]
            return
        known = {answer[0] for answer in run.answers()}
        run.type_message(PROMPT)
        answer = wait_until(
            lambda run=run, known=known: _streaming_answer(run, known),
            120,
            "the answer to stream into the history",
            details=lambda run=run: f"{run.answers()}\n{_log(run)[-3000:]}",
        )
        engines = run.engine_processes()
        assert any("EngineCore" in p.name for p in engines), engines
        run.kill()
        killed_at = time.monotonic()
        left = gone_within(engines, timeout=10)
        assert left == [], (
            f"{home.name} round {round_no}: engine processes outlived the app: {left}"
        )
        figures.append(
            {"who": "window", "ready_s": ready_s, "gone_s": time.monotonic() - killed_at}
        )
        cut.append(answer[0])


def _cli_kills(home: Path, kills: int, seen: list[Tracked], figures: list[dict[str, Any]]) -> None:
    """``gemma-desktop chat`` SIGKILLed while it streams, ``kills`` times."""
    for round_no in range(kills):
        launched_at = time.monotonic()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gemma_desktop",
                "chat",
                "--json",
                "--max-tokens",
                "2000",
                "--variant",
                "bundled/gemma-3-270m",
                PROMPT,
            ],
            cwd=REPO,
            env=app_env({**os.environ}, home),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if json.loads(line).get("type") == "delta":
                    break
            ready_s = time.monotonic() - launched_at
            run = AppRun({}, home)
            run.proc = proc  # type: ignore[assignment]
            engines = run.engine_processes()
            seen.extend(engines)
            assert any("EngineCore" in p.name for p in engines), engines
            proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            proc.wait(timeout=30)
            left = gone_within(engines, timeout=10)
            assert left == [], f"CLI round {round_no}: engine processes outlived it: {left}"
            figures.append(
                {"who": "terminal", "ready_s": ready_s, "gone_s": time.monotonic() - killed_at}
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.engine
def test_sigkill_while_streaming_leaves_no_engine_window_and_terminal_alike(
    xvfb_display: Any, home: Path, launched: list[AppRun], bundled_model_path: Path
) -> None:
    """The window (two users' homes, half the kills each) and the terminal chat, at once:
    each launch is mostly a single-core import, so the three run side by side."""
    import threading

    failures: list[BaseException] = []
    cli_seen: list[Tracked] = []
    figures: list[dict[str, Any]] = []

    def run(work: Any, *args: Any) -> None:
        try:
            work(*args)
        except BaseException as exc:
            failures.append(exc)

    homes = [home / "user1", home / "user2", home / "cli"]
    for each in homes:
        each.mkdir()
    window_kills = [KILLS - KILLS // 2, KILLS // 2]
    threads = [
        threading.Thread(
            target=run, args=(_window_kills, xvfb_display.env, h, k, launched, figures)
        )
        for h, k in zip(homes[:2], window_kills, strict=True)
        if k
    ]
    threads.append(
        threading.Thread(target=run, args=(_cli_kills, homes[2], KILLS, cli_seen, figures))
    )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=1500)
    end_strays(cli_seen)
    _report_kills(figures)
    assert not any(t.is_alive() for t in threads), "a kill loop did not finish"
    if failures:
        raise failures[0]
    assert len(figures) == 2 * KILLS


def _report_kills(figures: list[dict[str, Any]]) -> None:
    """Print the kill loops' figures (``make soak`` shows them) and keep them for the bench."""
    lines = [f"kills: {len(figures)} ({KILLS} each for the window and the terminal)"]
    for who in ("window", "terminal"):
        rows = [f for f in figures if f["who"] == who]
        if not rows:
            continue
        ready = sorted(f["ready_s"] for f in rows)
        gone = sorted(f["gone_s"] for f in rows)
        lines.append(
            f"{who:8}  launch to ready: median {ready[len(ready) // 2]:.1f} s, "
            f"max {ready[-1]:.1f} s; kill to no engine process: median "
            f"{gone[len(gone) // 2]:.2f} s, max {gone[-1]:.2f} s"
        )
    print("\n".join(lines))
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps({"kills": KILLS, "rounds": figures}, indent=1) + "\n")


@pytest.mark.engine
def test_quit_while_the_engine_starts_exits_at_once_and_leaves_nothing(
    xvfb_display: Any, home: Path, launched: list[AppRun], bundled_model_path: Path
) -> None:
    finished_setup(home, model_id="bundled/gemma-3-270m")
    env = app_env(xvfb_display.env, home, ATOMR_INFER_GEMMA_AUTO="on")
    run = AppRun(env, home).start()
    launched.append(run)
    run.wait_window("Gemma Desktop")
    # vLLM's EngineCore exists: the start is well under way (it takes 10-60 s more).
    engines = wait_until(
        lambda: [p for p in run.engine_processes() if "EngineCore" in p.name],
        240,
        "the engine process to be started",
    )
    assert "engine ready:" not in _log(run)
    began = time.monotonic()
    run.keys("ctrl+q")  # File → Quit
    assert run.proc is not None
    code = run.proc.wait(timeout=30)
    took = time.monotonic() - began
    print(f"quit during the engine start: the app exited {took:.2f} s after Ctrl+Q")
    assert code == 0, run.output()[-3000:]
    assert gone_within(engines + run.engine_processes(), timeout=5) == []
    assert "Start cancelled" in _log(run) or "engine stopped" in _log(run)


@pytest.mark.engine
def test_leftovers_of_a_killed_run_are_ended_by_the_next_launch_which_says_so(
    xvfb_display: Any, home: Path, launched: list[AppRun], bundled_model_path: Path
) -> None:
    """The record of engine processes, on its own: with the parent-death guard switched
    off, an engine outlives its killed app; the next launch ends it and says so."""
    finished_setup(home, model_id="bundled/gemma-3-270m")
    unguarded = app_env(
        xvfb_display.env, home, ATOMR_INFER_GEMMA_AUTO="on", GEMMA_DESKTOP_ENGINE_GUARD="off"
    )
    first = AppRun(unguarded, home).start()
    launched.append(first)
    first.wait_window("Gemma Desktop")
    wait_until(lambda: _engine_ready(first, 0), 300, "the engine to start")
    engines = first.engine_processes()
    assert any("EngineCore" in p.name for p in engines), engines
    first.kill()
    try:
        time.sleep(3)
        assert [p for p in engines if p.alive()], "without the guard the engine should outlive it"

        offset = len(_log_file_text(home))
        second = AppRun(app_env(xvfb_display.env, home, ATOMR_INFER_GEMMA_AUTO="off"), home)
        launched.append(second.start())
        second.wait_window("Gemma Desktop")
        wait_until(
            lambda: "left by an earlier run" in _log_file_text(home)[offset:],
            60,
            "the launch to report the leftovers",
            details=lambda: _log_file_text(home)[offset:][-3000:],
        )
        assert gone_within(engines, timeout=10) == []
        assert second.running()
        assert second.stop(timeout=60) == 0
        record = json.loads(first.state("engine-processes.json").read_text(encoding="utf-8"))
        assert record["runs"] == [], "the ended run is forgotten"
    finally:
        end_strays(engines)


def test_a_mistyped_model_warns_keeps_the_saved_choice_and_opens_the_window(
    xvfb_display: Any, home: Path, launched: list[AppRun]
) -> None:
    settings = finished_setup(
        home, model_id="google/gemma-4-E2B-it", gpu_memory_utilization=0.8, max_model_len=4096
    )
    before = settings.read_bytes()
    env = app_env(
        xvfb_display.env,
        home,
        ATOMR_INFER_GEMMA_MODEL="google/gemma-4-E2B-itt",
        ATOMR_INFER_GEMMA_AUTO="off",
    )
    run = AppRun(env, home).start()
    launched.append(run)
    run.wait_window("Gemma Desktop")
    time.sleep(3)  # a crash at launch would have happened by now
    assert run.running(), run.output()[-3000:]
    windows = run.windows()
    assert '"Gemma Desktop setup"' not in windows, "the wizard must not open after a finished setup"
    log = _log(run)
    assert "ATOMR_INFER_GEMMA_MODEL='google/gemma-4-E2B-itt'" in log
    assert "google/gemma-4-E4B-it" in log and "using google/gemma-4-E2B-it instead" in log
    assert run.stop(timeout=60) == 0
    assert settings.read_bytes() == before, "nothing saved changes"


def test_the_wizard_resumes_at_the_first_unfinished_step(
    xvfb_display: Any, home: Path, launched: list[AppRun]
) -> None:
    settings = home / "config" / "gemma-desktop" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    progress = {"format": 1, "completed": ["welcome", "hardware"], "variant": None}
    settings.write_text(json.dumps({"setup_wizard": progress}), encoding="utf-8")
    env = app_env(xvfb_display.env, home, ATOMR_INFER_GEMMA_AUTO="off")
    run = AppRun(env, home).start()
    launched.append(run)
    run.wait_window("Gemma Desktop setup")
    wait_until(lambda: "setup: step" in _log(run), 30, "the wizard to show a step")
    steps = [line.rsplit(" ", 1)[-1] for line in _log(run).splitlines() if "setup: step" in line]
    assert steps[0] == "token", steps  # not Welcome: the two finished steps are kept
    assert run.stop(timeout=60) == 0


def test_a_failure_before_the_window_shows_a_dialog_from_a_terminal_too(
    xvfb_display: Any, home: Path, launched: list[AppRun]
) -> None:
    """Started from a terminal (stderr is a tty), a start-up error still shows the dialog."""
    import pty

    # A state folder that cannot be created: the app cannot even open its log.
    blocker = home / "state-is-a-file"
    blocker.write_text("", encoding="utf-8")
    env = app_env(xvfb_display.env, home)
    env["XDG_STATE_HOME"] = str(blocker)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_desktop"],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    try:
        run = AppRun(env, home)
        run.proc = proc  # type: ignore[assignment]
        run.wait_window("Gemma Desktop could not start", timeout=60)
    finally:
        proc.kill()
        proc.wait()
        os.close(primary)
