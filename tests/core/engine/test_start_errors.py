"""Start-up failures become plain-language errors with hints that name a setting.

The messages matched are rendered from the installed vLLM's own source (the
f-strings of ``vllm/v1/worker/utils.py`` and friends, read with ``ast``), so a
vLLM upgrade that rewords them fails here instead of silently losing the hint.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
from pathlib import Path

from gemma_desktop.core.engine.config import EngineConfig
from gemma_desktop.core.engine.start_errors import explain_start_failure
from gemma_desktop.core.machine.gpu import NvmlReader
from gemma_desktop.core.models.catalog import VariantCatalog
from gemma_desktop.core.settings import load_settings
from tests.fixtures.nvml import RTX_4080, FakeNvml


def vllm_message(module: str, needle: str, values: dict[str, str]) -> str:
    """The message vLLM raises or logs, rendered from the installed source's f-string that
    contains ``needle``; ``values`` maps each placeholder's source text to a value."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                part.value
                for part in node.values
                if isinstance(part, ast.Constant) and isinstance(part.value, str)
            )
            if needle in text:
                return _render(node, values)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and needle in node.value:
            return node.value
    raise AssertionError(f"{needle!r} is not in {module}: vLLM changed its message")


def _render(node: ast.JoinedStr, values: dict[str, str]) -> str:
    out = []
    for part in node.values:
        if isinstance(part, ast.Constant):
            out.append(str(part.value))
        elif isinstance(part, ast.FormattedValue):
            source = ast.unparse(part.value)
            assert source in values, f"vLLM's message has a new placeholder: {source}"
            out.append(values[source])
    return "".join(out)


def _config(model_id: str, *, on_gpu: bool = True, **env: str) -> EngineConfig:
    gpu = NvmlReader(FakeNvml([RTX_4080])).read()[0] if on_gpu else None
    config = EngineConfig.build(load_settings(env=env), VariantCatalog().get(model_id), gpu=gpu)
    return dataclasses.replace(config, max_model_len=8192)


def _explain(config: EngineConfig, message: str) -> tuple[str, str]:
    try:
        raise RuntimeError("Engine core initialization failed. See root cause above.") from (
            ValueError(message)
        )
    except RuntimeError as exc:
        error = explain_start_failure(exc, config, "")
    return error.reason, error.hint


def test_free_memory_below_the_reservation_names_the_gpu_util_that_fits() -> None:
    # v1/worker/utils.py request_memory: 12.1 of 15.99 GiB free, 0.9 asked for.
    message = vllm_message(
        "vllm.v1.worker.utils",
        "is less than desired GPU memory utilization",
        {
            "init_snapshot.device_": "cuda:0",
            "format_gib(init_snapshot.free_memory)": "12.1",
            "format_gib(init_snapshot.total_memory)": "15.99",
            "cache_config.gpu_memory_utilization": "0.9",
            "format_gib(requested_memory)": "14.39",
        },
    )
    reason, hint = _explain(_config("google/gemma-4-E4B-it"), message)
    assert "14.39 GiB" in reason and "12.1 GiB is free" in reason
    assert "ATOMR_INFER_GEMMA_GPU_UTIL=0.75" in hint  # floor(12.1 / 15.99, 2)


def test_kv_cache_too_small_offers_the_length_vllm_estimated() -> None:
    message = vllm_message(
        "vllm.v1.core.kv_cache_utils",
        "KV cache is needed, which is larger than the available KV cache memory",
        {
            "max_model_len": "131072",
            "format_gib(needed_memory)": "2.18",
            "format_gib(available_memory)": "0.43",
            "estimated_msg": vllm_message(
                "vllm.v1.core.kv_cache_utils",
                "the estimated maximum model length is",
                {"estimated_max_len": "25813"},
            ),
        },
    )
    reason, hint = _explain(_config("google/gemma-4-E4B-it"), message)
    assert "131072 tokens" in reason and "2.18 GiB" in reason
    assert "ATOMR_INFER_GEMMA_MAX_LEN=25600" in hint
    assert "ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB" in hint and "google/gemma-4-E2B-it" in hint
    assert "ATOMR_INFER_GEMMA_TEXT_ONLY=on" in hint


def test_no_memory_for_the_kv_cache_suggests_a_larger_share_or_offload() -> None:
    message = vllm_message("vllm.v1.core.kv_cache_utils", "No available memory for the cache", {})
    reason, hint = _explain(_config("google/gemma-4-E2B-it"), message)
    assert "nothing is left for the KV cache" in reason
    assert "ATOMR_INFER_GEMMA_GPU_UTIL" in hint and "ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB" in hint
    assert "smaller" not in hint  # E2B has no smaller sibling: none is invented


def test_weights_out_of_memory_names_offload_and_the_fallback() -> None:
    # The V1 runner's wording from its source; the default V2 runner re-raises torch's
    # "CUDA out of memory. Tried to allocate ..." (C++ text, not in vLLM's source).
    v1 = vllm_message(
        "vllm.v1.worker.gpu_model_runner", "Failed to load model - not enough GPU memory", {}
    )
    torch_text = (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.15 GiB. GPU 0 has a "
        "total capacity of 15.99 GiB of which 1.80 GiB is free."
    )
    config = _config("google/gemma-4-E4B-it", ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB="2")
    for message in (v1, torch_text):
        reason, hint = _explain(config, message)
        assert "VRAM" in reason
        assert "ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB=4" in hint  # more than the 2 set now
        assert "google/gemma-4-E2B-it" in hint and "ATOMR_INFER_GEMMA_MAX_LEN" in hint


def test_cpu_ram_shortage_names_ram_and_the_ram_share() -> None:
    message = vllm_message(
        "vllm.v1.worker.cpu_worker",
        "is less than desired CPU memory utilization",
        {
            "cpu_core.numa_node": "0",
            "format_gib(available_memory)": "6.99",
            "format_gib(memory_status.total_memory)": "9.34",
            "vllm_config.cache_config.gpu_memory_utilization": "0.92",
            "format_gib(self.requested_cpu_memory)": "8.59",
        },
    )
    reason, hint = _explain(_config("bundled/gemma-3-270m", on_gpu=False), message)
    assert reason.startswith("Not enough RAM")
    assert "ATOMR_INFER_GEMMA_MAX_LEN" in hint and "ATOMR_INFER_GEMMA_GPU_UTIL" in hint
    assert "CPU_OFFLOAD" not in hint  # no such thing on the CPU build


def test_unknown_failure_points_to_the_engine_log() -> None:
    reason, hint = _explain(_config("bundled/gemma-3-270m", on_gpu=False), "something odd")
    assert "something odd" in reason
    assert "engine.log" in hint
