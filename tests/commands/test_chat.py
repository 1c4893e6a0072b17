"""``gemma-desktop chat --json`` as a user runs it: streaming, then Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.engine


def test_json_stream_then_ctrl_c_aborts_and_leaves_no_process(bundled_model_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gemma_desktop",
            "chat",
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "1000",
            "Once upon a time,",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.stdout is not None
    records = []
    engine_procs: list[psutil.Process] = []
    names: list[str] = []
    try:
        for line in proc.stdout:
            record = json.loads(line)
            records.append(record)
            if record["type"] == "delta" and len(records) == 5:
                engine_procs = psutil.Process(proc.pid).children(recursive=True)
                names = [p.name() for p in engine_procs]
                proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 130, stderr[-2000:]
    deltas = [r for r in records if r["type"] == "delta"]
    assert len(deltas) >= 5
    assert all(isinstance(r["text"], str) for r in deltas)
    final = records[-1]
    assert final["type"] == "stats"
    assert final["finish_reason"] == "abort"
    assert final["completion_tokens"] < 1000
    assert final["prompt_tokens"] == 6
    assert final["time_to_first_token_s"] > 0
    assert "VLLM::EngineCore" in names
    _, alive = psutil.wait_procs(engine_procs, timeout=10)
    assert alive == [], f"left behind: {alive}"
    assert "Traceback" not in stderr
