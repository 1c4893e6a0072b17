"""Settings: defaults < saved file < environment, with sources and warnings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gemma_desktop.core.errors import SettingsError, UnsupportedVariantError
from gemma_desktop.core.settings import (
    ENV_AUTO,
    ENV_DEPLOYMENT,
    ENV_GPU_UTIL,
    ENV_MAX_LEN,
    ENV_MODEL,
    MAX_LEN_RANGE,
    OFF_WORDS,
    SettingsStore,
    load_settings,
    parse_auto,
    parse_gpu_util,
    parse_max_len,
)


def _store(tmp_path: Path, data: dict[str, object] | None = None) -> SettingsStore:
    store = SettingsStore(tmp_path / "settings.json")
    if data is not None:
        store.save(data)
    return store


# --- the seed's env tests ------------------------------------------------------


def test_from_env_respects_skip_quietly(tmp_path: Path) -> None:
    s = load_settings({ENV_AUTO: "skip-quietly"}, _store(tmp_path))
    assert s.auto_start.value is False and s.quiet.value is True
    assert s.auto_start.source == "env"


def test_from_env_overrides_model_id(tmp_path: Path) -> None:
    s = load_settings({ENV_MODEL: "google/gemma-4-E2B-it"}, _store(tmp_path))
    assert s.model_id.value == "google/gemma-4-E2B-it"
    assert s.model_id.source == "env"


def test_unsupported_model_fails_fast_listing_variants(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedVariantError) as info:
        load_settings({ENV_MODEL: "google/gemma-4-E9B"}, _store(tmp_path))
    assert "google/gemma-4-E2B-it" in info.value.reason


@pytest.mark.parametrize(
    ("var", "value"),
    [
        (ENV_GPU_UTIL, "abc"),
        (ENV_GPU_UTIL, "0"),
        (ENV_GPU_UTIL, "1.5"),
        (ENV_GPU_UTIL, "nan"),
        (ENV_GPU_UTIL, "-0.2"),
        (ENV_GPU_UTIL, "inf"),
        (ENV_MAX_LEN, "-1"),
        (ENV_MAX_LEN, "0"),
        (ENV_MAX_LEN, "99999999999"),
        (ENV_MAX_LEN, "2k"),
        (ENV_MAX_LEN, "4096.5"),
        (ENV_DEPLOYMENT, "my deployment"),
        (ENV_AUTO, "maybe"),
    ],
)
def test_bad_env_value_is_a_warning_not_silence(tmp_path: Path, var: str, value: str) -> None:
    s = load_settings({var: value}, _store(tmp_path))
    [warning] = s.warnings
    assert warning.variable == var and warning.value == value
    assert var in warning.message and repr(value) in warning.message
    assert "instead" in warning.message
    if var == ENV_GPU_UTIL:
        assert s.gpu_memory_utilization.value == 0.5
        assert s.gpu_memory_utilization.source == "default"
    if var == ENV_MAX_LEN:
        assert s.max_model_len.value is None


def test_good_env_values_apply_with_env_source(tmp_path: Path) -> None:
    s = load_settings(
        {ENV_GPU_UTIL: " 0.8 ", ENV_MAX_LEN: "4096", ENV_DEPLOYMENT: "team-gemma", ENV_AUTO: "1"},
        _store(tmp_path),
    )
    assert s.warnings == []
    assert (s.gpu_memory_utilization.value, s.gpu_memory_utilization.source) == (0.8, "env")
    assert (s.max_model_len.value, s.max_model_len.source) == (4096, "env")
    assert s.deployment_name.value == "team-gemma"
    assert s.auto_start.value is True


def test_blank_env_values_count_as_unset(tmp_path: Path) -> None:
    s = load_settings({ENV_MODEL: "  ", ENV_GPU_UTIL: "", ENV_AUTO: "\t"}, _store(tmp_path))
    assert s.model_id.source == "default" and s.gpu_memory_utilization.source == "default"
    assert s.auto_start.source == "default" and s.warnings == []


def test_saved_beats_default_and_env_beats_saved(tmp_path: Path) -> None:
    store = _store(tmp_path, {"model_id": "google/gemma-4-E2B", "gpu_memory_utilization": 0.7})
    s = load_settings({}, store)
    assert (s.model_id.value, s.model_id.source) == ("google/gemma-4-E2B", "saved")
    assert (s.gpu_memory_utilization.value, s.gpu_memory_utilization.source) == (0.7, "saved")
    s = load_settings({ENV_MODEL: "google/gemma-4-E4B", ENV_GPU_UTIL: "0.3"}, store)
    assert (s.model_id.value, s.model_id.source) == ("google/gemma-4-E4B", "env")
    assert s.gpu_memory_utilization.value == 0.3
    # A bad env value falls back to the saved one, and says so.
    s = load_settings({ENV_GPU_UTIL: "abc"}, store)
    assert s.gpu_memory_utilization.value == 0.7
    assert "using 0.7 instead" in s.warnings[0].message


def test_saved_unknown_model_is_reported_and_ignored(tmp_path: Path) -> None:
    s = load_settings({}, _store(tmp_path, {"model_id": "google/gone"}))
    assert s.model_id.value == "google/gemma-4-E4B-it"
    assert "google/gone" in s.warnings[0].message


def test_hf_dirs_follow_env(tmp_path: Path) -> None:
    s = load_settings({"HF_HOME": str(tmp_path / "hf")}, _store(tmp_path))
    assert s.hf_hub_cache.value == tmp_path / "hf" / "hub" and s.hf_hub_cache.source == "env"
    s = load_settings(
        {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "c")}, _store(tmp_path)
    )
    assert s.hf_hub_cache.value == tmp_path / "c" and s.hf_hub_cache.env_var == "HF_HUB_CACHE"
    assert s.hf_home.value == tmp_path / "hf"


def test_report_lists_each_value_with_source(tmp_path: Path) -> None:
    report = load_settings({ENV_GPU_UTIL: "0.9"}, _store(tmp_path)).as_report()
    assert report["gpu_memory_utilization"] == {
        "value": 0.9,
        "source": "env",
        "env": ENV_GPU_UTIL,
    }
    assert report["model_id"]["source"] == "default"
    json.dumps(report)


def test_store_is_atomic_and_refuses_secrets(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.update(model_id="google/gemma-4-E2B-it")
    assert json.loads(store.path.read_text())["model_id"] == "google/gemma-4-E2B-it"
    with pytest.raises(SettingsError):
        store.update(hf_token="hf_secret")
    assert "hf_secret" not in store.path.read_text()
    assert [p.name for p in store.path.parent.glob("*settings*")] == ["settings.json"]
    store.update(model_id=None)
    assert store.load() == {}


def test_corrupt_settings_file_explains_itself(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.path.write_text("{not json")
    with pytest.raises(SettingsError) as info:
        load_settings({}, store)
    assert "not valid JSON" in info.value.reason and info.value.hint


# --- properties of the parsers ------------------------------------------------------

whitespace = st.text(alphabet=" \t\n", max_size=3)


@given(st.sampled_from(sorted(OFF_WORDS)), whitespace, whitespace, st.data())
def test_off_words_any_case_and_padding_disable(
    word: str, left: str, right: str, data: st.DataObject
) -> None:
    cased = "".join(
        c.upper() if data.draw(st.booleans(), label=f"upper {i}") else c for i, c in enumerate(word)
    )
    auto, quiet, recognised = parse_auto(left + cased + right)
    assert auto is False and recognised
    assert quiet == (word == "skip-quietly")


@given(st.text(max_size=20))
def test_auto_is_on_unless_an_off_word(value: str) -> None:
    auto, _, _ = parse_auto(value)
    assert auto == (value.strip().lower() not in OFF_WORDS)


@given(st.text(max_size=20))
def test_gpu_util_is_none_or_a_valid_fraction(value: str) -> None:
    parsed = parse_gpu_util(value)
    assert parsed is None or (math.isfinite(parsed) and 0 < parsed <= 1)


@given(st.floats(min_value=0, max_value=1, exclude_min=True), whitespace)
def test_gpu_util_round_trips_valid_fractions(number: float, pad: str) -> None:
    assert parse_gpu_util(pad + repr(number) + pad) == number


@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not 0 < f <= 1))
def test_gpu_util_rejects_out_of_range(number: float) -> None:
    assert parse_gpu_util(repr(number)) is None


@given(st.integers())
def test_max_len_accepts_exactly_the_range(number: int) -> None:
    low, high = MAX_LEN_RANGE
    expected = number if low <= number <= high else None
    assert parse_max_len(str(number)) == expected


@given(st.text(max_size=20))
def test_max_len_never_returns_out_of_range(value: str) -> None:
    parsed = parse_max_len(value)
    assert parsed is None or MAX_LEN_RANGE[0] <= parsed <= MAX_LEN_RANGE[1]


@given(
    st.dictionaries(
        st.sampled_from([ENV_AUTO, ENV_DEPLOYMENT, ENV_GPU_UTIL, ENV_MAX_LEN]),
        st.text(max_size=15).filter(lambda s: "\x00" not in s),
    )
)
def test_load_settings_never_raises_on_any_env_and_warns_per_rejection(
    env: dict[str, str],
) -> None:
    s = load_settings(env, SettingsStore(Path("/nonexistent/settings.json")))
    assert 0 < s.gpu_memory_utilization.value <= 1
    for warning in s.warnings:
        assert warning.variable in env and warning.value == env[warning.variable].strip()
    rejected = {w.variable for w in s.warnings}
    for var in (ENV_GPU_UTIL, ENV_MAX_LEN, ENV_DEPLOYMENT):
        value = env.get(var, "").strip()
        setting = {
            ENV_GPU_UTIL: s.gpu_memory_utilization,
            ENV_MAX_LEN: s.max_model_len,
            ENV_DEPLOYMENT: s.deployment_name,
        }[var]
        if value:
            assert (var in rejected) != (setting.source == "env")
