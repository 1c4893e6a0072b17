"""Start-up failures become plain-language errors with hints.

The messages matched are read from the installed vLLM's source, so a vLLM
upgrade that rewords them fails here instead of silently losing the hint.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from gemma_desktop.core.engine.config import EngineConfig
from gemma_desktop.core.engine.vllm_local import VllmEngine
from gemma_desktop.core.models.catalog import VariantCatalog
from gemma_desktop.core.settings import load_settings


def _vllm_source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).read_text(encoding="utf-8")


def _engine(model_id: str, vram: float | None) -> VllmEngine:
    config = EngineConfig.build(
        load_settings(env={}), VariantCatalog().get(model_id), total_vram_gb=vram
    )
    return VllmEngine(dataclasses.replace(config, max_model_len=8192))


def _explain(engine: VllmEngine, message: str) -> tuple[str, str]:
    try:
        raise RuntimeError("Engine core initialization failed. See root cause above.") from (
            ValueError(message)
        )
    except RuntimeError as exc:
        error = engine._explain_start_failure(exc, 1 << 40)  # nothing new in the log
    return error.reason, error.hint


def test_cpu_ram_shortage_names_ram_and_suggests_smaller_settings() -> None:
    source = _vllm_source("vllm.v1.worker.cpu_worker")
    assert "is less than desired CPU memory utilization" in source
    reason, hint = _explain(
        _engine("bundled/gemma-3-270m", None),
        "Available memory on node 0 (6.99/9.34 GiB) on startup is less than desired "
        "CPU memory utilization (0.92, 8.59 GiB).",
    )
    assert reason.startswith("Not enough RAM")
    assert "max_model_len" in hint


def test_gpu_out_of_memory_suggests_fallback_variant_and_offload() -> None:
    reason, hint = _explain(
        _engine("google/gemma-4-E4B-it", 24), "CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    assert "VRAM" in reason
    assert "google/gemma-4-E2B-it" in hint
    assert "cpu_offload_gb" in hint
    assert "max_model_len" in hint


def test_kv_cache_too_small_for_max_model_len_says_so() -> None:
    source = _vllm_source("vllm.v1.core.kv_cache_utils")
    assert "max seq len" in source
    reason, hint = _explain(
        _engine("google/gemma-4-E2B-it", 8),
        "To serve at least one request with the models's max seq len (8192), (1.5 GiB KV "
        "cache is needed, which is larger than the available KV cache memory (0.5 GiB).",
    )
    assert "max_model_len" in reason
    assert "ATOMR_INFER_GEMMA_MAX_LEN" in hint


def test_unknown_failure_points_to_the_engine_log() -> None:
    reason, hint = _explain(_engine("bundled/gemma-3-270m", None), "something odd")
    assert "something odd" in reason
    assert "engine.log" in hint


@pytest.mark.parametrize("model_id", ["google/gemma-4-E2B-it"])
def test_memory_hint_without_fallback_does_not_invent_one(model_id: str) -> None:
    _, hint = _explain(_engine(model_id, 8), "CUDA out of memory")
    assert "smaller" not in hint
