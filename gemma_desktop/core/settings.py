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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from gemma_desktop.core import paths
from gemma_desktop.core.errors import SettingsError, UnsupportedVariantError
from gemma_desktop.core.fsutil import FileLock, atomic_write
from gemma_desktop.core.models.catalog import (
    DEFAULT_DEPLOYMENT_NAME,
    DEFAULT_MODEL_ID,
    supported_list,
    validate_variant,
)

T = TypeVar("T")
Source = Literal["default", "saved", "env"]

ENV_AUTO = "ATOMR_INFER_GEMMA_AUTO"
ENV_MODEL = "ATOMR_INFER_GEMMA_MODEL"
ENV_DEPLOYMENT = "ATOMR_INFER_GEMMA_DEPLOYMENT"
ENV_GPU_UTIL = "ATOMR_INFER_GEMMA_GPU_UTIL"
ENV_MAX_LEN = "ATOMR_INFER_GEMMA_MAX_LEN"
#: The app's additions to the seed's variables.
ENV_TEXT_ONLY = "ATOMR_INFER_GEMMA_TEXT_ONLY"
ENV_CPU_OFFLOAD = "ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB"

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
    #: Only text: the image, audio and video encoders are not loaded (less memory, faster start).
    text_only: Setting[bool]
    #: GiB of weights vLLM keeps in RAM instead of VRAM; ``None``: the app's rule decides.
    cpu_offload_gb: Setting[float | None]
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
            "text_only",
            "cpu_offload_gb",
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


#: Largest ``cpu_offload_gb`` accepted: no workstation has more RAM to offload into.
MAX_CPU_OFFLOAD_GB = 1024.0


def parse_switch(value: str) -> bool | None:
    """``True`` / ``False`` for the on and off words (any case), ``None`` for anything else."""
    word = value.strip().lower()
    if word in ON_WORDS:
        return True
    if word in OFF_WORDS:
        return False
    return None


def parse_offload(value: str) -> float | str | None:
    """GiB to offload (0 to :data:`MAX_CPU_OFFLOAD_GB`), ``None`` for ``auto``, or ``"bad"``."""
    text = value.strip().lower()
    if text == "auto":
        return None
    try:
        number = float(text)
    except ValueError:
        return "bad"
    if not math.isfinite(number) or not 0.0 <= number <= MAX_CPU_OFFLOAD_GB:
        return "bad"
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

    Writes are atomic (:func:`~gemma_desktop.core.fsutil.atomic_write`), and
    :meth:`update` is a read-modify-write under a lock file beside the
    settings (``store.lock``), so concurrent updates from threads and
    from other processes never lose each other's keys. A file that does not
    parse is moved aside (kept as ``settings.json.broken-<time>``, never
    deleted) the first time it is read, and reported. Secrets never go here:
    the token lives in the keyring.
    """

    FORBIDDEN_KEYS = frozenset({"hf_token", "token", "api_key"})

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.config_dir() / "settings.json"
        self.lock_path = self.path.with_name("store.lock")
        #: The problem found the last time the file was read (moved aside, unreadable).
        self.problem: SettingsWarning | None = None

    def load(self) -> dict[str, Any]:
        """The saved settings (``{}`` when there are none, or after moving a broken file aside).

        Raises :class:`SettingsError` only when the file exists but cannot be
        read at all (permissions).
        """
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
            return self._move_aside(f"is not valid JSON (line {exc.lineno})")
        if not isinstance(data, dict):
            return self._move_aside("does not hold a JSON object")
        return data

    def _move_aside(self, problem: str) -> dict[str, Any]:
        with FileLock(self.lock_path):
            if not self.path.exists():  # another thread or process moved it already
                return {}
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = self.path.with_name(f"{self.path.name}.broken-{stamp}")
            counter = 1
            while aside.exists():
                counter += 1
                aside = self.path.with_name(f"{self.path.name}.broken-{stamp}-{counter}")
            os.replace(self.path, aside)
        self.problem = SettingsWarning(
            "settings.json",
            str(self.path),
            "the defaults",
            f"{problem}; it was moved to {aside.name} (kept, not deleted)",
        )
        return {}

    def save(self, data: Mapping[str, Any]) -> None:
        bad = self.FORBIDDEN_KEYS.intersection(data)
        if bad:
            raise SettingsError(
                f"Refusing to write secret key(s) {sorted(bad)} to the settings file.",
                "Secrets belong in the keyring.",
            )
        text = json.dumps(dict(data), indent=2, sort_keys=True) + "\n"
        try:
            atomic_write(self.path, text)
        except OSError as exc:
            raise SettingsError(
                f"Could not save settings to {self.path}: {exc.strerror}",
                "Free disk space or fix the folder's permissions; nothing was changed.",
            ) from exc

    def update(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the saved file; a ``None`` value removes the key.

        One atomic read-modify-write across threads and processes.
        """
        with FileLock(self.lock_path):
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
    *,
    strict: bool = True,
) -> Settings:
    """Defaults, then saved values, then environment overrides.

    With ``strict`` (the command line, like the seed) an
    ``ATOMR_INFER_GEMMA_MODEL`` outside the catalog raises
    :class:`UnsupportedVariantError`, and an unreadable settings file
    :class:`SettingsError`. Without it (the window) neither raises: each
    becomes a warning naming the problem, and the saved choice (or the
    default) is used. A settings file that does not parse is moved aside and
    reported either way.
    """
    env = os.environ if env is None else env
    store = store or SettingsStore()
    warnings: list[SettingsWarning] = []
    try:
        saved = store.load()
    except SettingsError as exc:
        if strict:
            raise
        saved = {}
        warnings.append(
            SettingsWarning("settings.json", str(store.path), "the defaults", exc.reason)
        )
    if store.problem is not None:
        warnings.append(store.problem)

    model = _saved_model(saved, warnings)
    env_model = env_string(env, ENV_MODEL)
    if env_model is not None:
        try:
            validate_variant(env_model)
        except UnsupportedVariantError:
            if strict:
                raise
            warnings.append(
                SettingsWarning(
                    ENV_MODEL,
                    env_model,
                    model.value,
                    f"is not a supported model (supported: {supported_list()})",
                )
            )
        else:
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

    text_only: Setting[bool] = Setting(False, "default")
    if isinstance(saved.get("text_only"), bool):
        text_only = Setting(bool(saved["text_only"]), "saved")
    env_text_only = env_string(env, ENV_TEXT_ONLY)
    if env_text_only is not None:
        switch = parse_switch(env_text_only)
        if switch is None:
            warnings.append(
                SettingsWarning(
                    ENV_TEXT_ONLY,
                    env_text_only,
                    "on" if text_only.value else "off",
                    "is not a known word (on: 1, true, yes, on; off: 0, false, no, off)",
                )
            )
        else:
            text_only = Setting(switch, "env", ENV_TEXT_ONLY)

    offload: Setting[float | None] = Setting(None, "default")
    saved_offload = saved.get("cpu_offload_gb")
    if isinstance(saved_offload, (int, float)) and not isinstance(saved_offload, bool):
        parsed_saved = parse_offload(str(saved_offload))
        if not isinstance(parsed_saved, str):
            offload = Setting(parsed_saved, "saved")
    env_offload = env_string(env, ENV_CPU_OFFLOAD)
    if env_offload is not None:
        parsed_offload = parse_offload(env_offload)
        if isinstance(parsed_offload, str):
            used = "the app's rule" if offload.value is None else f"{offload.value:g}"
            warnings.append(
                SettingsWarning(
                    ENV_CPU_OFFLOAD,
                    env_offload,
                    used,
                    f"is not 'auto' or a number of GiB from 0 to {MAX_CPU_OFFLOAD_GB:g}",
                )
            )
        else:
            offload = Setting(parsed_offload, "env", ENV_CPU_OFFLOAD)

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
        text_only=text_only,
        cpu_offload_gb=offload,
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
