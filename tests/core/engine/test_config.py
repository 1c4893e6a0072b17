"""EngineConfig: the seed's defaults, and names that exist on the installed vLLM."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gemma_desktop.core.engine.config import (
    CPU_KV_CACHE_BYTES,
    CPU_MAX_MODEL_LEN,
    ENGINE_ARG_NAMES,
    EngineConfig,
)
from gemma_desktop.core.models.catalog import VariantCatalog
from gemma_desktop.core.settings import load_settings

CATALOG = VariantCatalog()


def test_every_name_exists_on_installed_async_engine_args() -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs

    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    missing = [name for name in ENGINE_ARG_NAMES if name not in fields]
    assert missing == []


def test_every_passed_key_is_declared_and_accepted(tmp_path: Path) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs

    full = EngineConfig(
        model="m",
        model_id="m",
        max_model_len=1024,
        download_dir=str(tmp_path),
        enable_prefix_caching=True,
        enable_chunked_prefill=True,
        block_size=16,
        quantization="fp8",
        limit_mm_per_prompt={"image": 0},
        cpu_offload_gb=4,
        kv_cache_memory_bytes=1,
        seed=1,
    )
    kwargs = full.to_engine_args_kwargs()
    assert set(kwargs) == set(ENGINE_ARG_NAMES)
    AsyncEngineArgs(**kwargs)  # constructing validates nothing heavy, but rejects unknown names


def test_seed_defaults_on_a_16gb_card_for_e4b() -> None:
    settings = load_settings(env={})
    config = EngineConfig.build(settings, CATALOG.get("google/gemma-4-E4B-it"), total_vram_gb=16)
    kwargs = config.to_engine_args_kwargs()
    assert kwargs["model"] == "google/gemma-4-E4B-it"
    assert kwargs["tensor_parallel_size"] == 1
    assert kwargs["dtype"] == "auto"
    assert kwargs["gpu_memory_utilization"] == 0.5
    assert kwargs["enforce_eager"] is True
    assert kwargs["max_num_seqs"] == 16
    assert kwargs["cpu_offload_gb"] == 4
    assert kwargs["download_dir"] == str(settings.hf_hub_cache.value)
    for unset in (
        "max_model_len",
        "enable_prefix_caching",
        "enable_chunked_prefill",
        "block_size",
        "quantization",
        "limit_mm_per_prompt",
        "kv_cache_memory_bytes",
    ):
        assert unset not in kwargs


@pytest.mark.parametrize(
    ("variant", "vram", "offload"),
    [
        ("google/gemma-4-E4B-it", 23.9, 4),
        ("google/gemma-4-E4B-it", 24.0, None),
        ("google/gemma-4-E4B", 12, 4),
        ("google/gemma-4-E2B-it", 8, None),
    ],
)
def test_cpu_offload_only_for_e4b_under_24gb(
    variant: str, vram: float, offload: float | None
) -> None:
    config = EngineConfig.build(load_settings(env={}), CATALOG.get(variant), total_vram_gb=vram)
    assert config.cpu_offload_gb == offload


def test_settings_flow_into_the_config() -> None:
    settings = load_settings(
        env={"ATOMR_INFER_GEMMA_GPU_UTIL": "0.8", "ATOMR_INFER_GEMMA_MAX_LEN": "8192"}
    )
    config = EngineConfig.build(settings, CATALOG.get("google/gemma-4-E2B-it"), total_vram_gb=12)
    assert config.gpu_memory_utilization == 0.8
    assert config.max_model_len == 8192


def test_cpu_build_reserves_a_small_explicit_kv_cache(tmp_path: Path) -> None:
    config = EngineConfig.build(
        load_settings(env={}), CATALOG.bundled, total_vram_gb=None, model_path=tmp_path
    )
    assert config.on_cpu
    assert config.model == str(tmp_path.resolve())
    assert config.model_id == CATALOG.bundled.id
    assert config.max_model_len == CPU_MAX_MODEL_LEN
    assert config.kv_cache_memory_bytes == CPU_KV_CACHE_BYTES
    assert config.cpu_offload_gb is None


def test_cpu_kv_cache_grows_with_a_long_max_model_len(tmp_path: Path) -> None:
    settings = load_settings(env={"ATOMR_INFER_GEMMA_MAX_LEN": "32768"})
    config = EngineConfig.build(settings, CATALOG.bundled, total_vram_gb=None, model_path=tmp_path)
    assert config.max_model_len == 32768
    assert config.kv_cache_memory_bytes is not None
    assert config.kv_cache_memory_bytes > CPU_KV_CACHE_BYTES
