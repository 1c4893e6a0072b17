"""``gemma-desktop chat --variant google/gemma-4-E2B-it --image photo.png "What is this?"``
against the downloaded test checkpoint, with the hub it came from gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.gemma4 import INSTRUCT_ID, Gemma4Download, TransformersGemma4

pytestmark = pytest.mark.engine


def test_chat_with_an_image_runs_offline_on_the_downloaded_gemma4(
    gemma4_download: Gemma4Download,
    gemma4_media: dict[str, Path],
    gemma4_transformers: TransformersGemma4,
    tmp_path: Path,
) -> None:
    with pytest.raises(httpx.TransportError):  # the network is gone
        httpx.get(gemma4_download.hub_url + "/api/whoami-v2", timeout=2)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_CACHE=str(gemma4_download.cache))
    # The hub the model came from, now stopped; HF_HUB_OFFLINE stays unset.
    env["HF_ENDPOINT"] = gemma4_download.hub_url
    env.pop("HF_HUB_OFFLINE", None)
    photo = tmp_path / "photo.png"
    photo.write_bytes(gemma4_media["image"].read_bytes())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gemma_desktop",
            "chat",
            "--variant",
            INSTRUCT_ID,
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "--image",
            "photo.png",
            "What is this?",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records[-1]["type"] == "stats"
    stats = records[-1]
    assert stats["finish_reason"] in ("stop", "length") and stats["error"] is None
    assert 0 < stats["completion_tokens"] <= 8
    assert {r["type"] for r in records[:-1]} <= {"delta", "thinking"}
    # vLLM's prompt count, the image's soft tokens included, as transformers counts it
    assert stats["prompt_tokens"] == len(gemma4_transformers.prompt_ids("image", gemma4_media))
