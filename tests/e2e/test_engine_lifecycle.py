"""The real app collects every engine process it started as soon as it ends.

An ended child that its parent never waits for stays in the process table as a zombie
for as long as the parent runs (vLLM 0.32's shutdown leaves EngineCore so). The scenario
(``tests/e2e/lifecycle_scenario.py``) drives the real app through stop, a crash, a model
switch and Free GPU memory on the tiny Gemma 4 checkpoints, and reports the app's
children after each step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.app_process import finished_setup

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.engine, pytest.mark.display]


def test_no_engine_process_is_left_unreaped_at_any_step(
    xvfb_display: Any, isolated_dirs: Path, gemma4_download: Any
) -> None:
    finished_setup(isolated_dirs)
    env = {**os.environ, **xvfb_display.env, "HF_HUB_CACHE": str(gemma4_download.cache)}
    env.pop("QT_QPA_PLATFORM", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.lifecycle_scenario"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    steps = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            steps[data.pop("step")] = data
    assert "error" not in steps, (steps.get("error"), proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]

    started = steps["started"]
    assert started["pids"] and started["zombies"] == []
    assert set(started["pids"]) & set(started["running"]), "no engine process is the app's child"

    # Stop, a crash, a switch of model, Free GPU memory: each step's ended engine
    # processes are gone from the process table, not left as zombies of the app.
    for step in ("stopped", "crashed", "switched", "freed"):
        seen = steps[step]
        assert seen["zombies"] == [], f"{step}: the app left zombies: {seen}"
        assert not set(seen["ended"]) & set(seen["running"]), f"{step}: still running"
    assert steps["stopped"]["state"] == "stopped"
    assert steps["crashed"]["state"] == "crashed" and steps["restarted"]["core"]
    assert steps["switched"]["model"] == "google/gemma-4-E2B"
    assert set(steps["switched"]["pids"]).isdisjoint(steps["recovered"]["pids"])
    assert steps["freed"]["state"] == "stopped"
    exited = steps["exited"]
    assert exited["scenario_done"] and exited["zombies"] == [] and exited["running"] == []
