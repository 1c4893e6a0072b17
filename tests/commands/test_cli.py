"""``gemma-desktop probe`` and friends as a user runs them: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gemma_desktop import __version__


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gemma_desktop", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_probe_json_is_one_object_and_exit_code_says_skipped() -> None:
    result = _run("probe", "--json")
    assert result.returncode == 3, result.stderr
    data = json.loads(result.stdout)
    assert data["outcome"] == "skipped"
    assert data["variant"] == "google/gemma-4-E4B-it"
    assert data["settings"]["model_id"] == {"value": "google/gemma-4-E4B-it", "source": "default"}


def test_probe_of_bundled_model_is_ready_exit_0() -> None:
    result = _run("probe", "--variant", "bundled/gemma-3-270m")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Outcome: READY" in result.stdout


def test_bad_gpu_util_shows_a_warning_check() -> None:
    result = _run("probe", "--json", ATOMR_INFER_GEMMA_GPU_UTIL="abc")
    checks = {c["id"]: c for c in json.loads(result.stdout)["checks"]}
    warning = checks["settings:ATOMR_INFER_GEMMA_GPU_UTIL"]
    assert warning["status"] == "warn"
    assert "ATOMR_INFER_GEMMA_GPU_UTIL" in warning["reason"] and "'abc'" in warning["reason"]


def test_unknown_model_exits_1_listing_supported_variants() -> None:
    result = _run("probe", ATOMR_INFER_GEMMA_MODEL="google/gemma-4-E9B")
    assert result.returncode == 1
    for variant in ("google/gemma-4-E2B", "google/gemma-4-E2B-it", "google/gemma-4-E4B-it"):
        assert variant in result.stderr
    json_result = _run("probe", "--json", ATOMR_INFER_GEMMA_MODEL="google/gemma-4-E9B")
    assert json_result.returncode == 1
    assert json.loads(json_result.stdout)["outcome"] == "error"


def test_usage_errors_exit_2() -> None:
    assert _run("probe", "--no-such-flag").returncode == 2
    result = _run("no-such-command")
    assert result.returncode == 2 and "unknown command" in result.stderr


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gemma-desktop {__version__}"
