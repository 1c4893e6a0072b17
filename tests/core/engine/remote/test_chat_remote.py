"""``gemma-desktop chat`` on the engine the user chose: a real ``vllm serve`` (the session's
Gemma 4 server) saved on the Connections page, or picked with ``--remote`` for one run.
Nothing is on disk locally, so only the remote server can answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.engine.remote.conftest import GEMMA4_SERVED_NAME, VllmServer
from tests.fixtures.gemma4 import TransformersGemma4

pytestmark = pytest.mark.engine


def chat(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gemma_desktop", "chat", "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def stats_of(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records[-1]["type"] == "stats" and records[-1]["error"] is None
    return records[-1]


def test_chat_uses_the_saved_remote_server_and_its_models_abilities(
    gemma4_server: VllmServer,
    gemma4_media: dict[str, Path],
    gemma4_transformers: TransformersGemma4,
    tmp_path: Path,
) -> None:
    settings = Path(os.environ["XDG_CONFIG_HOME"]) / "gemma-desktop" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(
        json.dumps(
            {
                "engine": "remote",
                "remote_base_url": gemma4_server.base_url,
                "remote_model": GEMMA4_SERVED_NAME,
            }
        )
    )
    env = dict(os.environ, GEMMA_DESKTOP_REMOTE_API_KEY=gemma4_server.api_key)
    (tmp_path / "photo.png").write_bytes(gemma4_media["image"].read_bytes())
    proc = chat(
        "--temperature", "0", "--max-tokens", "4", "--image", "photo.png", "What is this?",
        env=env,
        cwd=tmp_path,
    )  # fmt: skip
    stats = stats_of(proc)
    # The server's count, the image's soft tokens included, as transformers counts it.
    assert stats["prompt_tokens"] == len(gemma4_transformers.prompt_ids("image", gemma4_media))
    assert f"[Connecting to {gemma4_server.base_url}]" in proc.stderr
    assert "[starting" not in proc.stderr  # no local engine

    # --local for one run: this computer has not downloaded it, and says so.
    local = chat("--local", "--variant", "google/gemma-4-E2B-it", "hi", env=env, cwd=tmp_path)
    assert local.returncode == 1 and "[Connecting" not in local.stderr
    assert "not downloaded yet" in local.stderr


def test_remote_for_one_run_and_its_usage_errors(gemma4_server: VllmServer, tmp_path: Path) -> None:
    env = dict(os.environ, GEMMA_DESKTOP_REMOTE_API_KEY=gemma4_server.api_key)
    proc = chat(
        "--remote", gemma4_server.base_url + "/v1", "--remote-model", GEMMA4_SERVED_NAME,
        "--think", "--temperature", "0", "--max-tokens", "6", "What is 2 + 3?",
        env=env,
        cwd=tmp_path,
    )  # fmt: skip
    assert stats_of(proc)["completion_tokens"] == 6
    wrong = chat("--remote", gemma4_server.base_url, "--variant", "bundled/gemma-3-270m", "hi",
                 env=env, cwd=tmp_path)  # fmt: skip
    assert wrong.returncode == 2 and "--remote-model" in wrong.stderr
    unkeyed = chat("--remote", gemma4_server.base_url, "hi", env=dict(os.environ), cwd=tmp_path)
    assert unkeyed.returncode == 1 and "error:" in unkeyed.stderr  # the server wants its key
