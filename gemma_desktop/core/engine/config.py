"""The engine's vLLM settings, derived like the seed's ``VllmConfig``.

The seed's fields and defaults: ``tensor_parallel_size`` 1, ``dtype`` auto,
``gpu_memory_utilization`` from settings (0.5), ``max_model_len`` from settings
(the model's own limit when unset), the Hub cache as download dir, eager mode
(CUDA-graph capture costs ~5 GB on Gemma 4), prefix caching and chunked
prefill left to vLLM, ``max_num_seqs`` 16, ``block_size`` and ``quantization``
left to vLLM, ``limit_mm_per_prompt`` unset (Gemma 4's text-only fast path
breaks when it is set), and ``cpu_offload_gb`` 4 for E4B on cards under 24 GB
so it fits a 16 GB card.

Without a CUDA GPU (``total_vram_gb is None``) the engine runs on vLLM's CPU
build, where ``gpu_memory_utilization`` is the fraction of *all* RAM vLLM
insists on being free at start (0.5 of a 24 GiB machine shared with other
programs often is not). There the KV cache is reserved explicitly with
``kv_cache_memory_bytes`` instead: :data:`CPU_KV_CACHE_BYTES` (512 MiB) holds
about 29 000 bf16 tokens of Gemma 3 270M (18 KiB per token), several full
:data:`CPU_MAX_MODEL_LEN` conversations at once, and it also makes vLLM skip
its warm-up pass and the RAM-fraction check, which is what lets the engine
start next to other programs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_desktop.core.models.catalog import Variant
from gemma_desktop.core.settings import Settings

#: KV cache reserved on the CPU build, whatever the RAM size (see module docstring).
CPU_KV_CACHE_BYTES = 512 * 1024**2
#: A generous upper bound of KV bytes per token for the models run on the CPU
#: (Gemma 3 270M: 36 KiB in float32), used to grow the reservation with max_model_len.
CPU_KV_BYTES_PER_TOKEN = 64 * 1024
#: Context length used on the CPU build when the settings leave it open; the
#: bundled model's own 32 768 would make each full conversation 0.6-1.2 GB of KV.
CPU_MAX_MODEL_LEN = 4096
#: Cards with at least this much VRAM run E4B without CPU offload.
OFFLOAD_FREE_VRAM_GB = 24.0
E4B_CPU_OFFLOAD_GB = 4.0

#: Every ``AsyncEngineArgs`` name :meth:`EngineConfig.to_engine_args_kwargs` may pass.
ENGINE_ARG_NAMES: tuple[str, ...] = (
    "model",
    "tensor_parallel_size",
    "dtype",
    "gpu_memory_utilization",
    "max_model_len",
    "download_dir",
    "enforce_eager",
    "enable_prefix_caching",
    "enable_chunked_prefill",
    "max_num_seqs",
    "block_size",
    "quantization",
    "limit_mm_per_prompt",
    "cpu_offload_gb",
    "kv_cache_memory_bytes",
    "disable_log_stats",
    "seed",
)


@dataclass(frozen=True)
class EngineConfig:
    """What the vLLM engine is started with.

    ``model`` is a Hub id or a local folder; ``model_id`` the catalog id shown
    to the user. ``None`` means "vLLM decides" and is not passed on.
    """

    model: str
    model_id: str
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.5
    max_model_len: int | None = None
    download_dir: str | None = None
    enforce_eager: bool = True
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    max_num_seqs: int = 16
    block_size: int | None = None
    quantization: str | None = None
    limit_mm_per_prompt: dict[str, int] | None = None
    cpu_offload_gb: float | None = None
    kv_cache_memory_bytes: int | None = None
    disable_log_stats: bool = True
    seed: int | None = None
    #: Whether the engine runs on vLLM's CPU build (no CUDA GPU).
    on_cpu: bool = False

    @classmethod
    def build(
        cls,
        settings: Settings,
        variant: Variant,
        *,
        total_vram_gb: float | None,
        model_path: Path | None = None,
        dtype: str = "auto",
    ) -> EngineConfig:
        """Derive the config from the settings, the variant and the GPU's size.

        ``total_vram_gb`` is the probe's figure for the GPU the engine uses, or
        ``None`` without a CUDA GPU. ``model_path`` replaces the Hub id (the
        bundled model's folder, or a local snapshot).
        """
        on_cpu = total_vram_gb is None
        max_len = settings.max_model_len.value
        offload: float | None = None
        kv_bytes: int | None = None
        if on_cpu:
            max_len = max_len or CPU_MAX_MODEL_LEN
            kv_bytes = max(CPU_KV_CACHE_BYTES, max_len * CPU_KV_BYTES_PER_TOKEN)
        elif "E4B" in variant.id and total_vram_gb is not None:
            offload = E4B_CPU_OFFLOAD_GB if total_vram_gb < OFFLOAD_FREE_VRAM_GB else None
        return cls(
            model=str(model_path.resolve()) if model_path is not None else variant.id,
            model_id=variant.id,
            dtype=dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization.value,
            max_model_len=max_len,
            download_dir=str(settings.hf_hub_cache.value),
            cpu_offload_gb=offload,
            kv_cache_memory_bytes=kv_bytes,
            on_cpu=on_cpu,
        )

    def to_engine_args_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.AsyncEngineArgs``; unset (``None``) values are left out."""
        values: dict[str, Any] = {
            "model": self.model,
            "tensor_parallel_size": self.tensor_parallel_size,
            "dtype": self.dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "download_dir": self.download_dir,
            "enforce_eager": self.enforce_eager,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enable_chunked_prefill": self.enable_chunked_prefill,
            "max_num_seqs": self.max_num_seqs,
            "block_size": self.block_size,
            "quantization": self.quantization,
            "limit_mm_per_prompt": self.limit_mm_per_prompt,
            "cpu_offload_gb": self.cpu_offload_gb,
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes,
            "disable_log_stats": self.disable_log_stats,
            "seed": self.seed,
        }
        return {key: value for key, value in values.items() if value is not None}
