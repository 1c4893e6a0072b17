"""Where the app keeps its files, following each platform's conventions (platformdirs).

On Linux every location follows the XDG variables (``XDG_CONFIG_HOME``,
``XDG_DATA_HOME``, ``XDG_STATE_HOME``, ``XDG_RUNTIME_DIR``), read at each
call, so the tests can keep each run in a temporary directory. The Hugging
Face locations follow huggingface_hub's own rules without importing it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_desktop import APP_ID

if TYPE_CHECKING:
    import platformdirs

#: ``resources/`` beside the package (source checkout and editable installs).
RESOURCES_DIR = Path(__file__).resolve().parents[2] / "resources"
#: The app's SVG icons (``<name>.svg``), for the windows, the tray and the desktop entry.
ICONS_DIR = RESOURCES_DIR / "icons"


def _dirs() -> platformdirs.PlatformDirs:
    # A new object per call: platformdirs reads the environment when asked.
    import platformdirs

    return platformdirs.PlatformDirs(APP_ID, appauthor=False, roaming=False)


def config_dir() -> Path:
    """User settings (``settings.json``)."""
    return Path(_dirs().user_config_dir)


def data_dir() -> Path:
    """Conversation history and the provisioned bundled model."""
    return Path(_dirs().user_data_dir)


def state_dir() -> Path:
    """Logs and other files worth keeping across runs but not backing up."""
    return Path(_dirs().user_state_dir)


def runtime_dir() -> Path:
    """Sockets and lock files that live as long as the session.

    ``$XDG_RUNTIME_DIR/gemma-desktop``; without that variable (no login
    session) a folder in the state dir, never a shared ``/tmp`` path.
    """
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
