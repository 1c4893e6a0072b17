"""The memory estimate against its sources: vLLM 0.32's own KV-cache planning functions,
transformers' own Gemma 4 model (parameter counts by part), and the safetensors files."""

from __future__ import annotations

import collections
import types
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core.machine.gpu import GIB, NvmlReader
from gemma_desktop.core.machine.memory import (
    ModelFigures,
    _part,
    estimate,
    figures_for,
    figures_from_published,
    figures_from_snapshot,
    kv_plan,
    plan_gpu,
)
from gemma_desktop.core.models.catalog import GEMMA4_E2B, GEMMA4_E4B, PublishedModel
from tests.fixtures.nvml import RTX_4080, RTX_4090, FakeNvml

#: The published vision and audio configs of E2B/E4B (their hidden sizes are in the catalog).
VISION = {
    "model_type": "gemma4_vision",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 16,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "head_dim": 64,
    "patch_size": 16,
    "pooling_kernel_size": 3,
    "position_embedding_size": 10240,
    "use_clipped_linears": True,
    "standardize": False,
}
AUDIO = {
    "model_type": "gemma4_audio",
    "hidden_size": 1024,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "subsampling_conv_channels": [128, 32],
    "conv_kernel_size": 5,
    "attention_chunk_size": 12,
    "attention_context_left": 13,
    "attention_context_right": 0,
    "output_proj_dims": 1536,
    "residual_weight": 0.5,
    "use_clipped_linears": True,
}


def _vllm_plan(figures: ModelFigures, context: int, block: int, text_only: bool) -> Any:
    """vLLM's own ``get_kv_cache_groups`` / ``get_kv_cache_config_from_groups`` on the specs
    its Gemma 4 model registers (one per layer that owns a cache), as on CUDA."""
    import torch
    from vllm.v1.core import kv_cache_utils as K
    from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec

    batched = 2048 if text_only or not figures.multimodal else 2496
    layout = K.KVCacheLayout["LBNHC"] if hasattr(K, "KVCacheLayout") else None
    if layout is None:
        from vllm.v1.kv_cache_layout import KVCacheLayout

        layout = KVCacheLayout["LBNHC"]
    cache = types.SimpleNamespace(
        kv_cache_layout="LBNHC",
        num_gpu_blocks_override=None,
        block_size=block,
        prefix_cache_retention_interval=None,
        skip_page_size_padded=None,
        get_resolved_kv_cache_layout=lambda: layout,
    )
    config = types.SimpleNamespace(
        model_config=types.SimpleNamespace(max_model_len=context),
        parallel_config=types.SimpleNamespace(
            decode_context_parallel_size=1, tensor_parallel_size=1
        ),
        scheduler_config=types.SimpleNamespace(
            disable_hybrid_kv_cache_manager=False, max_num_batched_tokens=batched
        ),
        attention_config=types.SimpleNamespace(hisparse_config=None),
        cache_config=cache,
        speculative_config=None,
        max_in_flight_tokens=2 * batched,
        device_config=types.SimpleNamespace(device_type="cuda"),
    )
    specs: dict[str, Any] = {}
    for index, layer in enumerate(figures.kv_layers):
        name = f"model.layers.{index}.self_attn.attn"
        if layer.sliding_window is not None:
            specs[name] = SlidingWindowSpec(
                block_size=block,
                num_kv_heads=layer.kv_heads,
                head_size=layer.head_dim,
                dtype=torch.bfloat16,
                sliding_window=layer.sliding_window,
            )
        else:
            specs[name] = FullAttentionSpec(
                block_size=block,
                num_kv_heads=layer.kv_heads,
                head_size=layer.head_dim,
                dtype=torch.bfloat16,
            )
    groups = K.get_kv_cache_groups(config, specs)
    kv_config = K.get_kv_cache_config_from_groups(config, groups, 4 * GIB)
    return config, kv_config, K.get_max_concurrency_for_kv_cache_config(config, kv_config)


@pytest.mark.parametrize("published", [GEMMA4_E2B, GEMMA4_E4B], ids=["E2B", "E4B"])
@pytest.mark.parametrize("context", [131_072, 32_768, 8_192, 2_048])
@pytest.mark.parametrize("text_only", [False, True])
def test_kv_cache_matches_vllms_own_planning(
    published: PublishedModel, context: int, text_only: bool
) -> None:
    figures = figures_from_published(published)
    ours = kv_plan(figures, context, device="cuda", text_only=text_only)
    _, kv_config, concurrency = _vllm_plan(figures, context, 16, text_only)
    # vLLM's logged "GPU KV cache size: N tokens" for 4 GiB of KV memory.
    assert ours.tokens(4 * GIB) == int(concurrency * context)
    assert ours.concurrency(4 * GIB) == pytest.approx(concurrency)
    assert kv_config.num_blocks == 4 * GIB // ours.bytes_per_block


def _transformers_parts(published: PublishedModel) -> collections.Counter[str]:
    import torch
    from transformers import Gemma4Config
    from transformers.models.gemma4.modeling_gemma4 import Gemma4ForConditionalGeneration

    text = {k: v for k, v in published.config["text_config"].items() if k != "dtype"}
    text.pop("model_type")
    config = Gemma4Config(text_config=text, vision_config=VISION, audio_config=AUDIO)
    with torch.device("meta"):
        model = Gemma4ForConditionalGeneration(config)
    first_shared = text["num_hidden_layers"] - text["num_kv_shared_layers"]
    parts: collections.Counter[str] = collections.Counter()
    for name, param in model.named_parameters():
        part = _part(name, first_shared, tied=True)
        if part is not None:
            parts[part] += param.numel()
    return parts


@pytest.mark.parametrize("published", [GEMMA4_E2B, GEMMA4_E4B], ids=["E2B", "E4B"])
def test_published_parameter_counts_are_transformers_own(published: PublishedModel) -> None:
    parts = _transformers_parts(published)
    weights = published.weights
    assert parts == {
        "decoder": weights.decoder,
        "embeddings": weights.embeddings,
        "ple": weights.ple,
        "vision": weights.vision,
        "audio": weights.audio,
    }
    total = sum(parts.values())
    # The checkpoint also holds the KV-shared layers' K/V, which vLLM skips: a little more.
    assert 0 < weights.checkpoint_bytes - 2 * total < 0.01 * weights.checkpoint_bytes


def test_snapshot_figures_count_every_tensor_of_the_files(gemma4_checkpoint: Path) -> None:
    import torch
    from safetensors import safe_open

    figures = figures_from_snapshot(gemma4_checkpoint)
    total = 0
    with safe_open(str(gemma4_checkpoint / "model.safetensors"), "pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensor = handle.get_tensor(name)
            assert tensor.dtype == torch.bfloat16
            total += tensor.numel() * tensor.element_size()
    assert figures.weight_bytes == total  # the tiny checkpoint has no tensor vLLM skips
    assert figures.vision_bytes > 0 and figures.audio_bytes > 0 and figures.ple_bytes > 0
    assert [layer.sliding_window for layer in figures.kv_layers] == [512, None]
    assert [layer.head_dim for layer in figures.kv_layers] == [32, 64]  # head_dim, global


def test_text_only_drops_the_encoders_and_offload_never_moves_the_ple() -> None:
    figures = figures_from_published(GEMMA4_E4B)
    full = estimate(figures, 8192)
    text = estimate(figures, 8192, text_only=True)
    assert full.total_bytes - text.total_bytes >= figures.encoder_bytes
    offloaded = estimate(figures, 8192, offload_bytes=100 * GIB)
    assert offloaded.weights_bytes == figures.ple_bytes + figures.embedding_bytes
    assert offloaded.encoders_bytes == 0


def test_a_plan_that_does_not_fit_lists_fixes_that_do() -> None:
    figures = figures_from_published(GEMMA4_E4B)
    gpu = NvmlReader(FakeNvml([RTX_4080])).read()[0]
    plan = plan_gpu(figures, gpu, utilization=0.9, offload_gib=0.0)  # the user said no offload
    assert not plan.fits and "does not fit" in plan.summary()
    assert plan.fixes == (
        "let the app choose the CPU offload: unset ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB",
    )
    assert plan_gpu(figures, gpu, utilization=0.9).fits
    # E2B at a short context fits the same card without any offload.
    small = plan_gpu(figures_from_published(GEMMA4_E2B), gpu, context=8192, offload_gib=0.0)
    assert small.fits and small.offload_gib == 0


def test_the_reservation_above_free_memory_is_refused_with_the_share_that_fits() -> None:
    figures = figures_from_published(GEMMA4_E2B)
    busy = RTX_4090.with_used(12_000)  # another program holds 11.7 GiB
    gpu = NvmlReader(FakeNvml([busy])).read()[0]
    plan = plan_gpu(figures, gpu, utilization=0.9)
    assert not plan.fits and any("would fail to start" in p for p in plan.problems)
    share = next(f for f in plan.fixes if "ATOMR_INFER_GEMMA_GPU_UTIL=" in f)
    value = float(share.split("=")[1].split()[0])
    assert value * gpu.total_bytes <= gpu.free_bytes
    assert plan_gpu(figures, gpu, utilization=value).fits
    # Without a user share the app picks one that fits by itself.
    assert plan_gpu(figures, gpu).fits


def test_figures_prefer_the_downloaded_files(gemma4_checkpoint: Path) -> None:
    from gemma_desktop.core.models.catalog import VariantCatalog

    variant = VariantCatalog().get("google/gemma-4-E2B-it")
    assert figures_for(variant).source == GEMMA4_E2B.source  # type: ignore[union-attr]
    local = figures_for(variant, gemma4_checkpoint)
    assert local is not None and local.source == "the downloaded files"
    assert local.weight_bytes < 10 * 1024**2  # the tiny checkpoint, not the published one
    gpu = NvmlReader(FakeNvml([RTX_4080])).read()[0]
    assert plan_gpu(local, gpu).fits
