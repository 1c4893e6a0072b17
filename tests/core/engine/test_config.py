"""EngineConfig: the seed's defaults, and names that exist on the installed vLLM."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from gemma_desktop.core.engine.config import (
    CPU_KV_CACHE_BYTES,
    CPU_MAX_MODEL_LEN,
    ENGINE_ARG_NAMES,
    EngineConfig,
)
from gemma_desktop.core.machine.gpu import GIB, GpuInfo, NvmlReader
from gemma_desktop.core.machine.memory import estimate, figures_for
from gemma_desktop.core.models.catalog import VariantCatalog
from gemma_desktop.core.settings import load_settings
from tests.fixtures.nvml import RTX_3060, RTX_4080, RTX_4090, RTX_A6000, Card, FakeNvml

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
        enable_sleep_mode=True,
        seed=1,
        reasoning_parser="gemma4",
    )
    kwargs = full.to_engine_args_kwargs()
    assert set(kwargs) == set(ENGINE_ARG_NAMES)
    AsyncEngineArgs(**kwargs)  # constructing validates nothing heavy, but rejects unknown names


def _gpu(card: Card) -> GpuInfo:
    return NvmlReader(FakeNvml([card])).read()[0]


def test_seed_defaults_on_a_16gb_card_for_e4b() -> None:
    settings = load_settings(env={})
    config = EngineConfig.build(settings, CATALOG.get("google/gemma-4-E4B-it"), gpu=_gpu(RTX_4080))
    kwargs = config.to_engine_args_kwargs()
    assert kwargs["model"] == "google/gemma-4-E4B-it"
    assert kwargs["tensor_parallel_size"] == 1
    assert kwargs["dtype"] == "auto"
    assert kwargs["enforce_eager"] is True
    assert kwargs["max_num_seqs"] == 16
    assert kwargs["enable_sleep_mode"] is True  # Free GPU memory
    assert kwargs["cpu_offload_gb"] >= 1  # E4B's 14.8 GB of weights exceed 16 GB × 0.9
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


def test_a_24gb_class_card_runs_e4b_without_offload_and_a_16gb_card_offloads() -> None:
    # The case: 24564 MiB is 23.99 GiB, below a "24" constant; decided on bytes now.
    assert RTX_4090.total_mib == 24564 and RTX_4080.total_mib == 16376
    e4b = CATALOG.get("google/gemma-4-E4B-it")
    on_4090 = EngineConfig.build(load_settings(env={}), e4b, gpu=_gpu(RTX_4090))
    on_4080 = EngineConfig.build(load_settings(env={}), e4b, gpu=_gpu(RTX_4080))
    assert on_4090.cpu_offload_gb is None
    assert on_4080.cpu_offload_gb is not None and on_4080.cpu_offload_gb > 0


@pytest.mark.parametrize("card", [RTX_3060, RTX_4080, RTX_4090, RTX_A6000], ids=lambda c: c.name)
@pytest.mark.parametrize("variant_id", ["google/gemma-4-E2B-it", "google/gemma-4-E4B-it"])
def test_offload_is_the_fewest_whole_gib_that_fit(card: Card, variant_id: str) -> None:
    variant = CATALOG.get(variant_id)
    gpu = _gpu(card)
    config = EngineConfig.build(load_settings(env={}), variant, gpu=gpu)
    plan = config.memory_plan
    assert plan is not None
    figures = figures_for(variant)
    assert figures is not None
    reserved = math.ceil(gpu.total_bytes * config.gpu_memory_utilization)
    assert 0.5 <= config.gpu_memory_utilization <= 0.9
    assert reserved <= gpu.free_bytes  # never a share beyond what is free
    offload = int(config.cpu_offload_gb or 0)
    context = figures.max_context
    with_it = estimate(figures, context, offload_bytes=offload * GIB)
    assert with_it.total_bytes <= reserved, plan.summary()
    if offload:
        without_one = estimate(figures, context, offload_bytes=(offload - 1) * GIB)
        assert without_one.total_bytes > reserved  # one GiB less would not fit


def test_the_users_offload_and_share_win() -> None:
    env = {"ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB": "2", "ATOMR_INFER_GEMMA_GPU_UTIL": "0.6"}
    config = EngineConfig.build(
        load_settings(env=env), CATALOG.get("google/gemma-4-E4B-it"), gpu=_gpu(RTX_A6000)
    )
    assert config.cpu_offload_gb == 2
    assert config.gpu_memory_utilization == 0.6
    off = {"ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB": "0"}
    config = EngineConfig.build(
        load_settings(env=off), CATALOG.get("google/gemma-4-E4B-it"), gpu=_gpu(RTX_4080)
    )
    assert config.cpu_offload_gb is None  # 0: none, even where it would be needed
    assert config.memory_plan is not None and not config.memory_plan.fits


def test_settings_flow_into_the_config() -> None:
    settings = load_settings(
        env={"ATOMR_INFER_GEMMA_GPU_UTIL": "0.8", "ATOMR_INFER_GEMMA_MAX_LEN": "8192"}
    )
    config = EngineConfig.build(settings, CATALOG.get("google/gemma-4-E2B-it"), gpu=_gpu(RTX_3060))
    assert config.gpu_memory_utilization == 0.8
    assert config.max_model_len == 8192
    assert config.memory_plan is not None and config.memory_plan.estimate.context == 8192


def test_the_chosen_gpu_reaches_the_engine_environment() -> None:
    env = (("CUDA_DEVICE_ORDER", "PCI_BUS_ID"), ("CUDA_VISIBLE_DEVICES", "1"))
    variant = CATALOG.get("google/gemma-4-E2B-it")
    on_gpu = EngineConfig.build(load_settings(env={}), variant, gpu=_gpu(RTX_4090), device_env=env)
    assert on_gpu.device_env == env
    assert "CUDA_VISIBLE_DEVICES" not in on_gpu.to_engine_args_kwargs()  # not a vLLM argument
    on_cpu = EngineConfig.build(load_settings(env={}), CATALOG.bundled, gpu=None, device_env=env)
    assert on_cpu.device_env == ()
    assert "enable_sleep_mode" not in on_cpu.to_engine_args_kwargs()  # vLLM refuses it on CPU


def test_cpu_build_reserves_a_small_explicit_kv_cache(tmp_path: Path) -> None:
    config = EngineConfig.build(
        load_settings(env={}), CATALOG.bundled, gpu=None, model_path=tmp_path
    )
    assert config.on_cpu
    assert config.model == str(tmp_path.resolve())
    assert config.model_id == CATALOG.bundled.id
    assert config.max_model_len == CPU_MAX_MODEL_LEN
    assert config.kv_cache_memory_bytes == CPU_KV_CACHE_BYTES
    assert config.cpu_offload_gb is None


def test_cpu_kv_cache_grows_with_a_long_max_model_len(tmp_path: Path) -> None:
    settings = load_settings(env={"ATOMR_INFER_GEMMA_MAX_LEN": "32768"})
    config = EngineConfig.build(settings, CATALOG.bundled, gpu=None, model_path=tmp_path)
    assert config.max_model_len == 32768
    assert config.kv_cache_memory_bytes is not None
    assert config.kv_cache_memory_bytes > CPU_KV_CACHE_BYTES


def test_the_sleep_api_the_engine_uses_exists_in_the_installed_vllm() -> None:
    import inspect

    from vllm.v1.engine.async_llm import AsyncLLM

    assert "level" in inspect.signature(AsyncLLM.sleep).parameters
    assert inspect.iscoroutinefunction(AsyncLLM.wake_up)
    # The CPU build refuses sleep mode ("Sleep mode is not supported on current platform"),
    # which is why the CPU config never asks for it.
    from vllm.platforms import current_platform

    assert current_platform.is_sleep_mode_available() is False


def test_json_answers_are_compact_and_a_thinking_model_gets_its_reasoning_parser() -> None:
    """Structured outputs for every model (llguidance, no free whitespace); vLLM's Gemma 4
    reasoning parser in the engine for a model that thinks (thinking budgets, and a JSON
    schema applied after the thinking), none for one that does not."""
    settings = load_settings(env={})
    instruct = EngineConfig.build(settings, CATALOG.get("google/gemma-4-E2B-it"), gpu=None)
    base = EngineConfig.build(settings, CATALOG.get("google/gemma-4-E2B"), gpu=None)
    bundled = EngineConfig.build(settings, CATALOG.bundled, gpu=None)
    assert instruct.to_engine_args_kwargs()["reasoning_parser"] == "gemma4"
    assert "reasoning_parser" not in base.to_engine_args_kwargs()
    assert "reasoning_parser" not in bundled.to_engine_args_kwargs()
    for config in (instruct, base, bundled):
        assert config.to_engine_args_kwargs()["structured_outputs_config"] == {
            "backend": "guidance",
            "disable_any_whitespace": True,
        }
