"""Effective settings: defaults, then the user's saved file, then the environment.

Every value remembers where it came from (``default`` / ``saved`` / ``env``) so
the probe report and the UI can say why the app behaves as it does. Unlike the
seed, an environment value that does not parse or is out of range is not
silently dropped: it becomes a :class:`SettingsWarning` naming the variable,
the bad value and what is used instead.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from gemma_desktop.core import paths
from gemma_desktop.core.catalog import (
    DEFAULT_DEPLOYMENT_NAME,
    DEFAULT_MODEL_ID,
    supported_list,
    validate_variant,
)
from gemma_desktop.core.errors import SettingsError, UnsupportedVariantError

T = TypeVar("T")
Source = Literal["default", "saved", "env"]

ENV_AUTO = "ATOMR_INFER_GEMMA_AUTO"
ENV_MODEL = "ATOMR_INFER_GEMMA_MODEL"
ENV_DEPLOYMENT = "ATOMR_INFER_GEMMA_DEPLOYMENT"
ENV_GPU_UTIL = "ATOMR_INFER_GEMMA_GPU_UTIL"
ENV_MAX_LEN = "ATOMR_INFER_GEMMA_MAX_LEN"

DEFAULT_GPU_UTIL = 0.5
#: Bounds of ``max_model_len``: below 128 tokens no chat fits; above 2**20 no
#: supported model has the context.
MAX_LEN_RANGE = (128, 1_048_576)

OFF_WORDS = frozenset({"0", "false", "no", "off", "skip", "skip-quietly"})
ON_WORDS = frozenset({"1", "true", "yes", "on"})
_DEPLOYMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """An effective value and where it came from."""

    value: T
    source: Source
    env_var: str | None = None


@dataclass(frozen=True)
class SettingsWarning:
    """An environment value that was rejected, and what is used instead."""

    variable: str
    value: str
    used: str
    problem: str

    @property
    def message(self) -> str:
        return f"{self.variable}={self.value!r} {self.problem}; using {self.used} instead"


@dataclass
class Settings:
    """The effective settings of one run."""

    model_id: Setting[str]
    deployment_name: Setting[str]
    gpu_memory_utilization: Setting[float]
    max_model_len: Setting[int | None]
    auto_start: Setting[bool]
    quiet: Setting[bool]
    hf_home: Setting[Path]
    hf_hub_cache: Setting[Path]
    hf_token_in_env: bool
    offline: bool
    saved: dict[str, Any] = field(default_factory=dict)
    warnings: list[SettingsWarning] = field(default_factory=list)

    def as_report(self) -> dict[str, dict[str, Any]]:
        """Each value with its source, JSON-ready (``--json`` ``settings`` key)."""
        out: dict[str, dict[str, Any]] = {}
        for name in (
            "model_id",
            "deployment_name",
            "gpu_memory_utilization",
            "max_model_len",
            "auto_start",
            "quiet",
            "hf_home",
            "hf_hub_cache",
        ):
            setting: Setting[Any] = getattr(self, name)
            value = str(setting.value) if isinstance(setting.value, Path) else setting.value
            entry: dict[str, Any] = {"value": value, "source": setting.source}
            if setting.env_var:
                entry["env"] = setting.env_var
            out[name] = entry
        return out


# --- parsing of single environment values (pure, property-tested) -----------


def env_string(env: Mapping[str, str], var: str) -> str | None:
    """The trimmed value of ``var``, or ``None`` when unset or blank (the seed's rule)."""
    raw = env.get(var)
    if raw is None:
        return None
    value = raw.strip()
    return value or None


def parse_auto(value: str) -> tuple[bool, bool, bool]:
    """``(auto_start, quiet, recognised)`` for an ``ATOMR_INFER_GEMMA_AUTO`` value.

    Off-words are case-insensitive; ``skip-quietly`` also silences the notice.
    Like the seed, any other value means on; unknown words are reported.
    """
    word = value.strip().lower()
    if word in OFF_WORDS:
        return False, word == "skip-quietly", True
    return True, False, word in ON_WORDS


def parse_gpu_util(value: str) -> float | None:
    """A fraction in (0, 1], or ``None`` when the value is not one."""
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or not 0.0 < number <= 1.0:
        return None
    return number


def parse_max_len(value: str) -> int | None:
    """A whole number of tokens within :data:`MAX_LEN_RANGE`, or ``None``."""
    text = value.strip()
    if not re.fullmatch(r"\+?\d+", text):
        return None
    number = int(text)
    low, high = MAX_LEN_RANGE
    return number if low <= number <= high else None


# --- the saved settings file --------------------------------------------------


class SettingsStore:
    """The user's saved settings, a JSON object in the platform config dir.

    Writes are atomic (temporary file + rename) so a crash never leaves half a
    file. Secrets never go here: the token lives in the keyring.
    """

    FORBIDDEN_KEYS = frozenset({"hf_token", "token", "api_key"})

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.config_dir() / "settings.json"

    def load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SettingsError(
                f"Could not read settings file {self.path}: {exc.strerror}",
                "Check the file's permissions, or delete it to start from defaults.",
            ) from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(
                f"Settings file {self.path} is not valid JSON (line {exc.lineno}).",
                "Fix or delete the file; the app then starts from defaults.",
            ) from exc
        if not isinstance(data, dict):
            raise SettingsError(
                f"Settings file {self.path} does not hold a JSON object.",
                "Delete the file; the app then starts from defaults.",
            )
        return data

    def save(self, data: Mapping[str, Any]) -> None:
        bad = self.FORBIDDEN_KEYS.intersection(data)
        if bad:
            raise SettingsError(
                f"Refusing to write secret key(s) {sorted(bad)} to the settings file.",
                "Secrets belong in the keyring.",
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".settings-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(dict(data), handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def update(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the saved file; a ``None`` value removes the key."""
        data = self.load()
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        self.save(data)
        return data


# --- putting it together --------------------------------------------------------


def load_settings(
    env: Mapping[str, str] | None = None,
    store: SettingsStore | None = None,
) -> Settings:
    """Defaults, then saved values, then environment overrides.

    Raises :class:`UnsupportedVariantError` when ``ATOMR_INFER_GEMMA_MODEL``
    names a model outside the catalog (fail fast, like the seed), and
    :class:`SettingsError` when the saved file is unreadable.
    """
    env = os.environ if env is None else env
    saved = (store or SettingsStore()).load()
    warnings: list[SettingsWarning] = []

    model = _saved_model(saved, warnings)
    env_model = env_string(env, ENV_MODEL)
    if env_model is not None:
        validate_variant(env_model)
        model = Setting(env_model, "env", ENV_MODEL)

    deployment: Setting[str] = Setting(DEFAULT_DEPLOYMENT_NAME, "default")
    saved_deployment = saved.get("deployment_name")
    if isinstance(saved_deployment, str) and _DEPLOYMENT_RE.match(saved_deployment):
        deployment = Setting(saved_deployment, "saved")
    env_deployment = env_string(env, ENV_DEPLOYMENT)
    if env_deployment is not None:
        if _DEPLOYMENT_RE.match(env_deployment):
            deployment = Setting(env_deployment, "env", ENV_DEPLOYMENT)
        else:
            warnings.append(
                SettingsWarning(
                    ENV_DEPLOYMENT,
                    env_deployment,
                    repr(deployment.value),
                    "is not a valid name (letters, digits, '.', '_', ':', '/', '-'; "
                    "at most 128 characters)",
                )
            )

    gpu_util: Setting[float] = Setting(DEFAULT_GPU_UTIL, "default")
    saved_util = saved.get("gpu_memory_utilization")
    if isinstance(saved_util, (int, float)) and parse_gpu_util(str(saved_util)) is not None:
        gpu_util = Setting(float(saved_util), "saved")
    env_util = env_string(env, ENV_GPU_UTIL)
    if env_util is not None:
        parsed_util = parse_gpu_util(env_util)
        if parsed_util is None:
            warnings.append(
                SettingsWarning(
                    ENV_GPU_UTIL,
                    env_util,
                    str(gpu_util.value),
                    "is not a fraction greater than 0 and at most 1",
                )
            )
        else:
            gpu_util = Setting(parsed_util, "env", ENV_GPU_UTIL)

    max_len: Setting[int | None] = Setting(None, "default")
    saved_len = saved.get("max_model_len")
    if isinstance(saved_len, int) and parse_max_len(str(saved_len)) is not None:
        max_len = Setting(saved_len, "saved")
    env_len = env_string(env, ENV_MAX_LEN)
    if env_len is not None:
        parsed_len = parse_max_len(env_len)
        if parsed_len is None:
            used = "the model's own limit" if max_len.value is None else str(max_len.value)
            low, high = MAX_LEN_RANGE
            warnings.append(
                SettingsWarning(
                    ENV_MAX_LEN, env_len, used, f"is not a whole number from {low} to {high}"
                )
            )
        else:
            max_len = Setting(parsed_len, "env", ENV_MAX_LEN)

    auto: Setting[bool] = Setting(True, "default")
    quiet: Setting[bool] = Setting(False, "default")
    if isinstance(saved.get("auto_start"), bool):
        auto = Setting(bool(saved["auto_start"]), "saved")
    env_auto = env_string(env, ENV_AUTO)
    if env_auto is not None:
        on, is_quiet, recognised = parse_auto(env_auto)
        auto = Setting(on, "env", ENV_AUTO)
        quiet = Setting(is_quiet, "env", ENV_AUTO)
        if not recognised:
            warnings.append(
                SettingsWarning(
                    ENV_AUTO,
                    env_auto,
                    "on",
                    "is not a known word (off: 0, false, no, off, skip, skip-quietly; "
                    "on: 1, true, yes, on)",
                )
            )

    home_source: Source = "env" if env_string(env, "HF_HOME") else "default"
    cache_source: Source = (
        "env" if env_string(env, "HF_HUB_CACHE") or env_string(env, "HF_HOME") else "default"
    )
    return Settings(
        model_id=model,
        deployment_name=deployment,
        gpu_memory_utilization=gpu_util,
        max_model_len=max_len,
        auto_start=auto,
        quiet=quiet,
        hf_home=Setting(
            paths.hf_home(env), home_source, "HF_HOME" if home_source == "env" else None
        ),
        hf_hub_cache=Setting(
            paths.hf_hub_cache(env),
            cache_source,
            ("HF_HUB_CACHE" if env_string(env, "HF_HUB_CACHE") else "HF_HOME")
            if cache_source == "env"
            else None,
        ),
        hf_token_in_env=env_string(env, "HF_TOKEN") is not None,
        offline=(env_string(env, "HF_HUB_OFFLINE") or "").lower() in {"1", "true", "yes", "on"},
        saved=saved,
        warnings=warnings,
    )


def _saved_model(saved: Mapping[str, Any], warnings: list[SettingsWarning]) -> Setting[str]:
    value = saved.get("model_id")
    if value is None:
        return Setting(DEFAULT_MODEL_ID, "default")
    try:
        validate_variant(str(value))
    except UnsupportedVariantError:
        warnings.append(
            SettingsWarning(
                "settings.json model_id",
                str(value),
                DEFAULT_MODEL_ID,
                f"is not a supported variant ({supported_list()})",
            )
        )
        return Setting(DEFAULT_MODEL_ID, "default")
    return Setting(str(value), "saved")
