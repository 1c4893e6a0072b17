"""The real app collects every engine process it started as soon as it ends.

An ended child that its parent never waits for stays in the process table as a zombie
for as long as the parent runs (vLLM 0.32's shutdown leaves EngineCore so). The scenario
(``tests/e2e/lifecycle_scenario.py``) drives the real app through stop, a crash, a model
switch and Free GPU memory on the tiny Gemma 4 checkpoints, and reports the app's
children after each step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.app_process import finished_setup, run_scenario

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.engine, pytest.mark.display]


def test_no_engine_process_is_left_unreaped_at_any_step(
    xvfb_display: Any, isolated_dirs: Path, gemma4_download: Any
) -> None:
    finished_setup(isolated_dirs)
    env = {**os.environ, **xvfb_display.env, "HF_HUB_CACHE": str(gemma4_download.cache)}
    env.pop("QT_QPA_PLATFORM", None)
    steps = run_scenario("tests.e2e.lifecycle_scenario", env, timeout=900)

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
