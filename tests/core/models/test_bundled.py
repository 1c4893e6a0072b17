"""Provisioning the bundled model: complete, atomic when interrupted, skipped when done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemma_desktop.core.models.bundled import (
    FORMAT_VERSION,
    MARKER_NAME,
    ProvisionProgress,
    is_provisioned,
    provision_bundled_model,
    provision_bundled_model_async,
    remove_stale_work_dirs,
)


def test_provisioned_folder_is_complete_and_loadable_by_vllm_layout(
    bundled_model_path: Path,
) -> None:
    assert is_provisioned(bundled_model_path)
    names = {p.name for p in bundled_model_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER_NAME} <= names
    config = json.loads((bundled_model_path / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert config.get("quantization_config") is None
    marker = json.loads((bundled_model_path / MARKER_NAME).read_text())
    assert marker["format"] == FORMAT_VERSION
    # no leftovers from the conversion next to it
    assert not list(bundled_model_path.parent.glob(f".{bundled_model_path.name}.tmp-*"))


def test_done_is_skipped_without_progress(bundled_model_path: Path) -> None:
    steps: list[ProvisionProgress] = []
    started = time.monotonic()
    assert provision_bundled_model(steps.append, target=bundled_model_path) == bundled_model_path
    assert steps == []
    assert time.monotonic() - started < 5  # no child process was started


def test_async_variant_reports_on_the_loop_and_skips(
    bundled_model_path: Path, arun: object
) -> None:
    result = arun(provision_bundled_model_async(target=bundled_model_path))  # type: ignore[operator]
    assert result == bundled_model_path


def test_folder_without_marker_or_with_old_format_is_not_provisioned(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert not is_provisioned(folder)
    (folder / MARKER_NAME).write_text(json.dumps({"format": FORMAT_VERSION - 1}))
    assert not is_provisioned(folder)
    (folder / MARKER_NAME).write_text("not json")
    assert not is_provisioned(folder)


@pytest.mark.engine
def test_interrupted_conversion_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    target = tmp_path / "models" / "gemma-3-270m"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_desktop.core.models.bundled", str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(json.loads(line)["message"])
        if line and json.loads(line)["fraction"] >= 0.3:  # weights being converted
            break
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen, "the converter reported no progress"
    assert not target.exists()
    assert not is_provisioned(target)
    leftovers = list(target.parent.glob(".gemma-3-270m.tmp-*"))
    assert leftovers, "killed mid-way, the work folder stays behind"
    assert all(not (stale / MARKER_NAME).exists() for stale in leftovers)
    remove_stale_work_dirs(target)  # what the next run does first, under the lock
    assert not list(target.parent.glob(".gemma-3-270m.tmp-*"))
