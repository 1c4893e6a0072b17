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


# --- the converter's child process -------------------------------------------------------

_CHATTY_CONVERTER = r"""
import json, sys
sys.stderr.write("x" * (1 << 20))   # far more than a pipe holds: a reader of stdout alone
sys.stderr.flush()                    # would wait for EOF while this blocks: a deadlock
for step in range(5):
    print(json.dumps({"message": f"step {step}", "fraction": step / 4}), flush=True)
"""


def test_the_converter_reads_both_pipes_so_a_chatty_child_never_blocks(tmp_path: Path) -> None:
    import threading

    from gemma_desktop.core.models.bundled import _run_converter

    steps: list[ProvisionProgress] = []
    done = threading.Event()

    def run() -> None:
        _run_converter(
            tmp_path / "target",
            steps.append,
            threading.Event(),
            [sys.executable, "-c", _CHATTY_CONVERTER],
        )
        done.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert done.wait(60), "the converter and its child blocked each other"
    assert [s.message for s in steps] == [f"step {n}" for n in range(5)]


def test_cancelling_the_conversion_ends_its_child(tmp_path: Path) -> None:
    import threading

    from gemma_desktop.core.models.bundled import BundledModelError, _run_converter

    cancel = threading.Event()
    started = threading.Event()
    errors: list[BaseException] = []

    def progress(step: ProvisionProgress) -> None:
        started.set()

    def run() -> None:
        try:
            _run_converter(
                tmp_path / "target",
                progress,
                cancel,
                [
                    sys.executable,
                    "-c",
                    "import json, time; print(json.dumps({'message': 'go', 'fraction': 0}),"
                    " flush=True); time.sleep(600)",
                ],
            )
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert started.wait(60)
    cancel.set()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the cancelled conversion did not end"
    assert errors and isinstance(errors[0], BundledModelError)
    assert "cancelled" in errors[0].reason


def test_the_provisioned_tokenizer_file_is_parsed_once_when_loaded(
    bundled_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers parses tokenizer.json a second time (with Python's json, holding the
    GIL) unless tokenizer_config.json lists the added tokens; provisioning writes them."""
    import builtins

    from transformers import AutoTokenizer

    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file: object, *args: object, **kwargs: object) -> object:
        if str(file).endswith("tokenizer.json"):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", counting_open)
    AutoTokenizer.from_pretrained(str(bundled_model_path))
    monkeypatch.undo()
    assert len(opened) <= 1, opened
    config = json.loads((bundled_model_path / "tokenizer_config.json").read_text())
    assert config.get("added_tokens_decoder")
    merges = json.loads((bundled_model_path / "tokenizer.json").read_text())["model"]["merges"]
    assert isinstance(merges[0], str)  # the compact form
