"""Settings: defaults < saved file < environment, with sources and warnings."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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


def test_corrupt_settings_file_is_moved_aside_reported_and_env_still_applies(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    store.path.write_text("{not json")
    s = load_settings({ENV_MODEL: "google/gemma-4-E2B-it", ENV_GPU_UTIL: "0.7"}, store)
    # Nothing lost: the broken file is kept beside, under a new name.
    kept = list(tmp_path.glob("settings.json.broken-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{not json"
    assert not store.path.exists()
    warning = next(w for w in s.warnings if w.variable == "settings.json")
    assert "not valid JSON" in warning.message and kept[0].name in warning.message
    # The environment's valid values still apply.
    assert s.model_id.value == "google/gemma-4-E2B-it" and s.model_id.source == "env"
    assert s.gpu_memory_utilization.value == 0.7
    # A second read finds nothing broken and moves nothing more.
    load_settings({}, SettingsStore(store.path))
    assert len(list(tmp_path.glob("settings.json.broken-*"))) == 1


def test_an_update_over_a_corrupt_settings_file_moves_it_aside_and_saves(
    tmp_path: Path,
) -> None:
    """The update's locked read moves the broken file aside under the same lock."""
    import threading

    store = _store(tmp_path)
    store.path.write_text("{not json")
    done: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: done.append(store.update(gpu_memory_utilization=0.6)))
    worker.daemon = True  # a deadlock must fail the test, not hang the run
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "update() deadlocked on a corrupt settings.json"
    assert done == [{"gpu_memory_utilization": 0.6}]
    assert json.loads(store.path.read_text()) == {"gpu_memory_utilization": 0.6}
    kept = list(tmp_path.glob("settings.json.broken-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{not json"
    assert store.problem is not None and kept[0].name in store.problem.message


def test_unreadable_settings_file_raises_only_on_the_command_line(tmp_path: Path) -> None:
    store = _store(tmp_path, {"model_id": "google/gemma-4-E2B-it"})
    store.path.chmod(0)
    try:
        if store.path.stat().st_mode and _can_read(store.path):
            pytest.skip("running as a user that reads any file (root)")
        with pytest.raises(SettingsError):
            load_settings({}, store)
        s = load_settings({}, store, strict=False)
        assert any(w.variable == "settings.json" for w in s.warnings)
    finally:
        store.path.chmod(0o600)


def _can_read(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True


def test_a_bad_env_model_in_the_window_is_a_warning_and_the_saved_choice_stays(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path, {"model_id": "google/gemma-4-E2B-it", "gpu_memory_utilization": 0.8})
    before = store.path.read_bytes()
    s = load_settings({ENV_MODEL: "google/gemma-4-E2B-itt"}, store, strict=False)
    assert s.model_id.value == "google/gemma-4-E2B-it" and s.model_id.source == "saved"
    assert s.gpu_memory_utilization.value == 0.8
    warning = next(w for w in s.warnings if w.variable == ENV_MODEL)
    assert "google/gemma-4-E2B-itt" in warning.message
    for supported in ("google/gemma-4-E2B", "google/gemma-4-E4B-it", "bundled/gemma-3-270m"):
        assert supported in warning.message
    assert store.path.read_bytes() == before, "nothing saved changes"
    # The command line keeps the seed's fail-fast.
    with pytest.raises(UnsupportedVariantError):
        load_settings({ENV_MODEL: "google/gemma-4-E2B-itt"}, store)


_WRITER = """
import sys
from pathlib import Path
from gemma_desktop.core.settings import SettingsStore
store = SettingsStore(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    store.update(**{f"{sys.argv[2]}-{i}": i})
"""


def test_concurrent_updates_from_threads_and_processes_lose_no_key(tmp_path: Path) -> None:
    """8 threads and 2 other processes update one settings file at the same time."""
    import subprocess
    import sys
    import threading

    store = _store(tmp_path, {"model_id": "google/gemma-4-E2B-it"})
    per_writer = 15
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(store.path), f"proc{n}", str(per_writer)]
        )
        for n in range(2)
    ]
    start = threading.Barrier(8)

    def write(name: str) -> None:
        own = SettingsStore(store.path)  # each thread its own store object, like the app's
        start.wait()
        for i in range(per_writer):
            own.update(**{f"{name}-{i}": i})

    threads = [threading.Thread(target=write, args=(f"thread{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    data = json.loads(store.path.read_text())
    expected = {
        f"{w}-{i}"
        for w in [*(f"thread{n}" for n in range(8)), "proc0", "proc1"]
        for i in range(per_writer)
    }
    assert expected <= set(data), sorted(expected - set(data))[:10]
    assert data["model_id"] == "google/gemma-4-E2B-it"
    assert not list(tmp_path.glob(".settings.json-*")), "no temporary file left behind"


# --- the seed's own words, not this code's constants ------------------------------

#: ``from_env``'s off-words, copied from the seed (``gemma_defaults.rs``).
SEED_OFF_WORDS = ("0", "false", "no", "off", "skip", "skip-quietly")


@pytest.mark.parametrize("word", SEED_OFF_WORDS)
@pytest.mark.parametrize("shape", [str.lower, str.upper, str.title, lambda w: f"  {w}\t"])
def test_the_seeds_off_words_in_any_case_and_padding_turn_auto_start_off(
    tmp_path: Path, word: str, shape: Any
) -> None:
    s = load_settings({ENV_AUTO: shape(word)}, _store(tmp_path))
    assert s.auto_start.value is False
    assert s.quiet.value is (word == "skip-quietly")
    assert not s.warnings


def test_signed_numbers_parse_as_the_seed_parses_them(tmp_path: Path) -> None:
    # Rust's f32 / u32 parsers accept a leading '+'.
    s = load_settings({ENV_GPU_UTIL: "+0.5", ENV_MAX_LEN: "+4096"}, _store(tmp_path))
    assert s.gpu_memory_utilization.value == 0.5 and s.gpu_memory_utilization.source == "env"
    assert s.max_model_len.value == 4096 and s.max_model_len.source == "env"
    assert not s.warnings


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
