"""The engine's vLLM settings, derived like the seed's ``VllmConfig``.

The seed's fields and defaults: ``tensor_parallel_size`` 1, ``dtype`` auto,
``gpu_memory_utilization`` from settings, ``max_model_len`` from settings
(unset: the app's choice below), the Hub cache as download dir, eager mode
(CUDA-graph capture costs ~5 GB on Gemma 4), prefix caching and chunked
prefill left to vLLM, ``max_num_seqs`` 16, ``block_size`` and ``quantization``
left to vLLM, ``limit_mm_per_prompt`` unset (vLLM's default: images, audio and
video on) unless the settings ask for text-only mode (:data:`TEXT_ONLY_LIMITS`).
Structured outputs (JSON-schema answers) through llguidance, compact
(:data:`STRUCTURED_OUTPUTS`). A model that thinks (Gemma 4 ``-it``) gets vLLM's
Gemma 4 reasoning parser in the engine too (``reasoning_parser``): a thinking
budget (Anthropic's ``thinking.budget_tokens``) then ends the thinking in time,
and a JSON schema constrains the answer after the thinking, not the thinking.

On a CUDA GPU the memory estimate decides (:func:`gemma_desktop.core.machine.memory.plan_gpu`,
on exact bytes): ``max_model_len`` is the user's setting, or else the model's
full context where it fits without CPU offload, else the longest power of two
(at least 8,192 tokens) that does, else the longest that fits with offload (an
8 GB card runs E2B at 32,768 tokens); ``gpu_memory_utilization`` is the user's
setting, or else the share the model needs (at least 0.5, at most 0.9 and never
more than is free); ``cpu_offload_gb`` is the user's setting, or else only what
still does not fit, rounded up to whole GiB (an RTX 4090's 24564 MiB hold E4B
without offload; a 16 GB card offloads 4 GiB). The engine starts with sleep mode
on (Free GPU memory) and with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` / ``CUDA_VISIBLE_DEVICES``
naming the card the probe chose (:attr:`EngineConfig.device_env`).

Without a CUDA GPU (``gpu is None``) the engine runs on vLLM's CPU
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

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gemma_desktop.core.engine.vllm_compat import GEMMA4_REASONING_PARSER
from gemma_desktop.core.machine.gpu import GIB, GpuInfo
from gemma_desktop.core.machine.memory import GpuPlan, ModelFigures, figures_for, plan_gpu
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
#: ``limit_mm_per_prompt`` of text-only mode (``settings.text_only``,
#: ATOMR_INFER_GEMMA_TEXT_ONLY). Every modality must be 0, video included: only
#: then does vLLM skip the encoders' profiling and memory (a 262k-vocabulary
#: Gemma 4 then starts in about a third of the time and half the RAM).
TEXT_ONLY_LIMITS: dict[str, int] = {"image": 0, "audio": 0, "video": 0}
#: vLLM's structured outputs (``response_format``, ``chat --json-schema``): llguidance, which
#: takes nearly all of JSON Schema and runs on the CPU build too, writing compact JSON. With
#: whitespace allowed between tokens, a weak model can fill ``max_tokens`` with spaces and
#: never close the object (a random-weight Gemma 4 did, with vLLM's default backend).
STRUCTURED_OUTPUTS: Mapping[str, Any] = MappingProxyType(
    {"backend": "guidance", "disable_any_whitespace": True}
)
#: Bytes per weight of the dtypes the app passes (``auto`` is the checkpoint's own).
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "half": 2}

#: Every ``AsyncEngineArgs`` name :meth:`EngineConfig.to_engine_args_kwargs` may pass
#: (each an :class:`EngineConfig` field of the same name).
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
    "enable_sleep_mode",
    "disable_log_stats",
    "seed",
    "structured_outputs_config",
    "reasoning_parser",
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
    enable_sleep_mode: bool | None = None
    disable_log_stats: bool = True
    seed: int | None = None
    structured_outputs_config: Mapping[str, Any] | None = field(
        default_factory=lambda: STRUCTURED_OUTPUTS
    )
    #: vLLM's reasoning parser for the engine (a model that thinks), else ``None``.
    reasoning_parser: str | None = None
    #: Whether the engine runs on vLLM's CPU build (no CUDA GPU).
    on_cpu: bool = False
    #: Environment the engine process needs before CUDA starts (which card it gets).
    device_env: tuple[tuple[str, str], ...] = ()
    #: The memory estimate and the share/offload chosen from it (CUDA only).
    memory_plan: GpuPlan | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        variant: Variant,
        *,
        gpu: GpuInfo | None,
        model_path: Path | None = None,
        dtype: str = "auto",
        figures: ModelFigures | None = None,
        device_env: tuple[tuple[str, str], ...] = (),
    ) -> EngineConfig:
        """Derive the config from the settings, the variant and the GPU the engine uses.

        ``gpu`` is the probe's reading of that GPU (exact bytes), or ``None``
        without a CUDA GPU. ``model_path`` replaces the Hub id (the bundled
        model's folder, or a local snapshot). ``figures`` are the model's
        (default: from ``model_path``'s files, else the catalog's published
        figures). ``device_env`` is what the engine needs to get that GPU.
        """
        on_cpu = gpu is None
        max_len = settings.max_model_len.value
        text_only = settings.text_only.value and bool(variant.inputs)
        util = settings.gpu_memory_utilization.value
        offload: float | None = None
        kv_bytes: int | None = None
        plan: GpuPlan | None = None
        if on_cpu:
            max_len = max_len or CPU_MAX_MODEL_LEN
            kv_bytes = max(CPU_KV_CACHE_BYTES, max_len * CPU_KV_BYTES_PER_TOKEN)
        else:
            assert gpu is not None
            figures = figures or figures_for(variant, model_path)
            if figures is not None:
                plan = plan_gpu(
                    figures,
                    gpu,
                    context=max_len,
                    utilization=util
                    if settings.gpu_memory_utilization.source != "default"
                    else None,
                    offload_gib=settings.cpu_offload_gb.value,
                    text_only=text_only,
                    dtype_bytes=_DTYPE_BYTES.get(dtype),
                    floor_bytes=int((variant.min_vram_gb or 0.0) * GIB),
                )
                util, offload = plan.utilization, plan.offload_gib or None
                # What the estimate counted is what vLLM gets: the app's shorter choice or
                # the user's length (capped at the model's own); for the model's full
                # context vLLM reads the same max_position_embeddings as the estimate did
                # (the seed's default: unset).
                max_len = None if plan.context.reason == "model" else plan.estimate.context
            elif settings.cpu_offload_gb.value:
                offload = settings.cpu_offload_gb.value
        return cls(
            model=str(model_path.resolve()) if model_path is not None else variant.id,
            model_id=variant.id,
            dtype=dtype,
            gpu_memory_utilization=util,
            max_model_len=max_len,
            download_dir=str(settings.hf_hub_cache.value),
            cpu_offload_gb=offload,
            kv_cache_memory_bytes=kv_bytes,
            limit_mm_per_prompt=dict(TEXT_ONLY_LIMITS) if text_only else None,
            # vLLM refuses sleep mode on the CPU platform; on CUDA it is Free GPU memory.
            enable_sleep_mode=None if on_cpu else True,
            on_cpu=on_cpu,
            device_env=() if on_cpu else device_env,
            memory_plan=plan,
            reasoning_parser=GEMMA4_REASONING_PARSER if variant.thinking else None,
        )

    @property
    def context_note(self) -> str:
        """Why the context is shorter than the model's own (``32,768 tokens of context, the
        longest that fits this card``), for the engine's status line; empty when it is not."""
        plan = self.memory_plan
        return plan.context.short() if plan is not None and plan.context.shortened else ""

    @property
    def text_only(self) -> bool:
        """Whether every modality is switched off (text-only mode)."""
        limits = self.limit_mm_per_prompt
        return limits is not None and all(limits.get(k, 1) == 0 for k in TEXT_ONLY_LIMITS)

    def to_engine_args_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.AsyncEngineArgs``; unset (``None``) values are left out."""
        values = {name: getattr(self, name) for name in ENGINE_ARG_NAMES}
        if self.structured_outputs_config is not None:
            values["structured_outputs_config"] = dict(self.structured_outputs_config)
        return {key: value for key, value in values.items() if value is not None}
