"""Test-wide isolation: every test runs with its own config, data, state and HF dirs.

The bundled model is provisioned once into ``build/models`` (kept between
runs, like a user's data dir) because converting it takes about a minute.
The keyring defaults to keyring's real ``fail`` backend, so no test touches a
developer's own keyring; the Secret Service fixture replaces it where needed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "build" / "models"

_SCRUBBED = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "ATOMR_INFER_GEMMA_AUTO",
    "ATOMR_INFER_GEMMA_MODEL",
    "ATOMR_INFER_GEMMA_DEPLOYMENT",
    "ATOMR_INFER_GEMMA_GPU_UTIL",
    "ATOMR_INFER_GEMMA_MAX_LEN",
    "ATOMR_INFER_GEMMA_TEXT_ONLY",
    "GEMMA_DESKTOP_VLLM_ADJUSTMENTS_OFF",
    "ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
)

# Shared fixture modules; each area adds its own file under tests/fixtures/.
pytest_plugins = [
    name
    for name in (
        "tests.fixtures.qt",
        "tests.fixtures.engine",
        "tests.fixtures.fakehub",
        "tests.fixtures.gemma4",
        "tests.fixtures.scripted_gemma4",
        "tests.fixtures.keyring",
        "tests.fixtures.display",
        "tests.fixtures.app",
        "tests.fixtures.vllm_models",
        "tests.fixtures.pulse",
    )
    if importlib.util.find_spec(name) is not None
]

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["GEMMA_DESKTOP_MODELS_DIR"] = str(MODELS_DIR)
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
for _name in _SCRUBBED:
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every platform directory and the HF home at a fresh temporary tree."""
    home = tmp_path / "home"
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        path = home / sub
        path.mkdir(parents=True)
        monkeypatch.setenv(var, str(path))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    for name in _SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    yield home


@pytest.fixture
def private_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``XDG_RUNTIME_DIR`` of this test only, for the per-model lock files (the session's
    runtime dir is the user's); subprocesses the test starts inherit it."""
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    return folder


_sessions: list[pytest.Session] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _sessions.append(session)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process once pytest has reported, without the interpreter's exit handlers.

    Triton (imported by the engines the tests start in this process) registers a nanobind
    exit handler (``Py_AtExit``) that lists every Triton object still alive at exit:
    hundreds of ``nanobind: leaked ...`` lines after the summary, about objects the process
    is about to drop anyway. Nothing of the app's is affected (its engines run in child
    processes that the session fixtures have shut down by now).
    """
    if _sessions and "triton" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(_sessions[-1].exitstatus))
