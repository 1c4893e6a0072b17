"""Where the app keeps its files, following each platform's conventions.

Every location can be redirected with the usual XDG variables (the tests use
that to keep each run in a temporary directory).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from gemma_desktop import APP_ID


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var, "").strip()
    return Path(value) if value else Path.home() / fallback


def config_dir() -> Path:
    """User settings (``settings.json``)."""
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / APP_ID
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_ID
    return _xdg("XDG_CONFIG_HOME", ".config") / APP_ID


def data_dir() -> Path:
    """Conversation history and the provisioned bundled model."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / APP_ID
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_ID
    return _xdg("XDG_DATA_HOME", ".local/share") / APP_ID


def state_dir() -> Path:
    """Logs and other files worth keeping across runs but not backing up."""
    if sys.platform == "win32":
        return data_dir() / "state"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Logs" / APP_ID
    return _xdg("XDG_STATE_HOME", ".local/state") / APP_ID


def runtime_dir() -> Path:
    """Sockets and lock files that live as long as the session."""
    value = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    return Path(value) / APP_ID if value else state_dir() / "run"


def hf_home(env: Mapping[str, str] | None = None) -> Path:
    """``HF_HOME`` as huggingface_hub resolves it, without importing it."""
    env = os.environ if env is None else env
    value = env.get("HF_HOME", "").strip()
    if value:
        return Path(value).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "huggingface"


def hf_hub_cache(env: Mapping[str, str] | None = None) -> Path:
    """The Hub cache directory (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    env = os.environ if env is None else env
    value = env.get("HF_HUB_CACHE", "").strip()
    return Path(value).expanduser() if value else hf_home(env) / "hub"


def hf_token_file(env: Mapping[str, str] | None = None) -> Path:
    """Hugging Face's own plaintext token file (``HF_TOKEN_PATH`` or ``$HF_HOME/token``)."""
    env = os.environ if env is None else env
    value = env.get("HF_TOKEN_PATH", "").strip()
    return Path(value).expanduser() if value else hf_home(env) / "token"


def models_dir() -> Path:
    """Models the app provisions itself (``GEMMA_DESKTOP_MODELS_DIR`` overrides)."""
    value = os.environ.get("GEMMA_DESKTOP_MODELS_DIR", "").strip()
    return Path(value).expanduser() if value else data_dir() / "models"


def bundled_model_dir() -> Path:
    """Where the bundled demo model is provisioned as an HF-format folder."""
    return models_dir() / "gemma-3-270m"
