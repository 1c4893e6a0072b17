"""How much memory a model needs in vLLM 0.32, counted the way vLLM allocates it.

The estimate has four parts (:class:`MemoryEstimate`):

* **weights** as vLLM keeps them on the device: every tensor in the model's
  dtype, including Gemma 4's per-layer embeddings (PLE), which vLLM keeps on
  the GPU and ``cpu_offload_gb`` cannot move; the tensors vLLM drops (the
  K/V projections of Gemma 4's KV-shared layers) are not counted;
* **encoders**: the vision and audio towers, unless text-only mode is on (then
  vLLM does not build them);
* **KV cache** for one request of the full context, with vLLM's own planning
  rules (:func:`kv_plan`): only the layers that own a cache (KV-shared layers
  read another layer's), sliding-window layers holding only their window plus
  the tokens in flight, pages unified and layers grouped as vLLM does, one
  extra block for vLLM's null block;
* **overhead**: the activation peak of vLLM's profiling pass (one batch of
  ``max_num_batched_tokens`` through the widest layer, the sampler over the
  vocabulary, the multimodal encoder's dummy batch) and memory outside
  PyTorch's allocator. The engine runs in eager mode, so no CUDA graphs.

:func:`plan_gpu` compares that with what vLLM may use (``gpu_memory_utilization``
× total) and with the card's free memory, chooses the context (when the user set
none), the share and the CPU offload the app starts the engine with, and lists
the changes that would make a model fit that does not. The same numbers decide
the engine configuration (:mod:`gemma_desktop.core.engine.config`), the probe's
verdict and the text in the window, so they cannot disagree.

**The context, and why a shorter one comes before CPU offload.** When the user
set no ``max_model_len``, the engine gets the model's full context if it fits
without offload; else the longest clean context (:func:`clean_contexts`: powers
of two, never below :data:`USEFUL_CONTEXT`) that fits without offload; else the
longest that fits with it. Offloaded weights cross PCIe for every generated
token: PCIe 4.0 x16 moves about 25 GB/s, so each offloaded GiB adds about 43 ms
to every token, while the card itself reads E2B's 4.2 GiB of decoder and LM head
in about 4.5 ms (RTX 4090, 1008 GB/s) to 13 ms (RTX 3060, 360 GB/s): one GiB of
offload makes decoding 4 to 10 times slower, on every answer; a 65,536-token
context instead of 131,072 only matters to a conversation longer than 65,536
tokens. Text-only mode is offered where it buys at least twice the context.

The model's figures (:class:`ModelFigures`) come from its ``config.json`` and
the safetensors headers of a downloaded snapshot (exact, per tensor), or,
before a download, from the figures the catalog records for each variant
(the published config and parameter counts).

Everything here is plain arithmetic; nothing imports torch or vLLM.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from gemma_desktop.core.machine.gpu import GIB, MIB, GpuInfo
from gemma_desktop.core.models.catalog import PublishedModel, Variant
from gemma_desktop.core.settings import ENV_MAX_LEN, ENV_TEXT_ONLY

Device = Literal["cuda", "cpu"]

#: vLLM's default KV block size on CUDA (Triton/FlashAttention) and on the CPU build.
CUDA_BLOCK_SIZE = 16
CPU_BLOCK_SIZE = 128
#: vLLM's ``SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS``.
MAX_NUM_BATCHED_TOKENS = 2048
#: Gemma 4 raises ``max_num_batched_tokens`` to its largest multimodal item: a 32-frame
#: video, 32 × (70 + 2 + 6) tokens (vLLM 0.32 ``gemma4_mm.py``).
GEMMA4_MAX_MM_ITEM_TOKENS = 2496
#: Batches in flight with async scheduling (``max_concurrent_batches``): the
#: sliding-window layers keep this many batches' tokens besides their window.
CONCURRENT_BATCHES = 2
#: The engine's ``max_num_seqs`` (sampler warm-up batch).
MAX_NUM_SEQS = 16
#: Memory vLLM's process uses outside PyTorch's allocator inside its budget
#: (cuBLAS/cuDNN workspaces, the allocator's slack). An allowance, not measured here.
NON_TORCH_BYTES = 256 * MIB
#: The stated margin: every GPU decision (fits, the app's share, the offload) counts
#: this much on top of the estimate.
SAFETY_MARGIN_BYTES = 256 * MIB
#: The multimodal encoder's profiling batch (one 32-frame video through the
#: vision tower). An allowance: no GPU to measure it on here.
ENCODER_PROFILE_BYTES = 512 * MIB
#: The engine process's CUDA context, taken from the free memory before vLLM
#: compares it with its reservation (it is not part of the reservation).
CUDA_CONTEXT_BYTES = 512 * MIB
#: The app's own choice of ``gpu_memory_utilization`` when the user set none:
#: at least the seed's 0.5, as much as the model needs, never above 0.9 (the
#: desktop keeps running beside it) nor above what is free.
APP_UTIL_FLOOR = 0.5
APP_UTIL_CEILING = 0.9
#: The shortest context the app starts a model with by itself, and the shortest it
#: suggests: one 32-frame video is 2,496 tokens and one image up to 1,120, so below 8,192
#: tokens a conversation with a picture and an answer hardly fits. A model that does not
#: fit at this length is said not to fit ("nothing fits at a useful length").
USEFUL_CONTEXT = 8_192

#: The CPU build: RAM taken by the engine's processes besides weights and KV cache,
#: measured on this machine (PSS of all processes): the tiny Gemma 4 checkpoint with the
#: real 262k vocabulary took 6.2-6.5 GB with the multimodal processor and 3.3-3.4 GB
#: text-only (minus its 0.1 GB of weights and its KV cache); with a 512-token vocabulary
#: 2.0 GB; the bundled Gemma 3 270M about 3 GB with its 0.5 GB of weights and KV cache.
CPU_PROCESS_BYTES_MULTIMODAL = int(5.6 * GIB)
CPU_PROCESS_BYTES_TEXT_ONLY = int(2.8 * GIB)
CPU_PROCESS_BYTES_SMALL = int(2.0 * GIB)
#: Vocabularies at least this large cost the tokenizer and processor memory above.
LARGE_VOCAB = 100_000
#: The bundled Gemma 3 270M as measured here: about 21.5 tokens/s (20-23) in bf16 on
#: 2 cores, reading its 268,098,176 weights (536 MB) for every token.
MEASURED_CPU_TOKENS_PER_S = 21.5
MEASURED_CPU_BYTES_PER_TOKEN = 268_098_176 * 2

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_CONFIG_DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
}


def gib(value: float) -> str:
    """``9.6 GB`` (GiB, labelled GB as everywhere in the app)."""
    return f"{value / GIB:.1f} GB"


def _ceil_gib(value: int) -> int:
    return max(0, math.ceil(value / GIB))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- the model ------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionLayer:
    """A decoder layer that owns a KV cache: its KV heads, head size and window."""

    kv_heads: int
    head_dim: int
    #: ``None`` for full attention.
    sliding_window: int | None = None


@dataclass(frozen=True)
class ModelFigures:
    """A model's weights by part (in bytes, in the checkpoint's dtype) and its KV layout.

    ``decoder_bytes`` is what ``cpu_offload_gb`` can move (with the encoders);
    ``ple_bytes`` and ``embedding_bytes`` (token embeddings, the tied LM head,
    the per-layer projection, final norms) stay on the GPU.
    """

    source: str
    dtype_bytes: int
    decoder_bytes: int
    embedding_bytes: int
    ple_bytes: int
    vision_bytes: int
    audio_bytes: int
    kv_layers: tuple[AttentionLayer, ...]
    max_context: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    ple_dim: int
    vocab_size: int
    #: Gemma 4 with vision and audio (raises ``max_num_batched_tokens`` for video).
    multimodal: bool = False
    #: Bytes of the weight files (with tensors vLLM drops), when known.
    checkpoint_bytes: int | None = None

    @property
    def encoder_bytes(self) -> int:
        return self.vision_bytes + self.audio_bytes

    @property
    def weight_bytes(self) -> int:
        """Everything vLLM loads, encoders included (checkpoint dtype)."""
        return self.text_bytes + self.encoder_bytes

    @property
    def text_bytes(self) -> int:
        return self.decoder_bytes + self.embedding_bytes + self.ple_bytes

    @property
    def streamed_bytes(self) -> int:
        """Bytes read for every generated token: the decoder and the LM head (the
        per-layer embeddings are a table lookup, the encoders run once per input)."""
        return self.decoder_bytes + self.embedding_bytes

    def in_dtype(self, dtype_bytes: int) -> ModelFigures:
        """The same model loaded in another dtype (``dtype="float32"``)."""
        if dtype_bytes == self.dtype_bytes:
            return self

        def scale(value: int) -> int:
            return value * dtype_bytes // self.dtype_bytes

        return replace(
            self,
            dtype_bytes=dtype_bytes,
            decoder_bytes=scale(self.decoder_bytes),
            embedding_bytes=scale(self.embedding_bytes),
            ple_bytes=scale(self.ple_bytes),
            vision_bytes=scale(self.vision_bytes),
            audio_bytes=scale(self.audio_bytes),
        )


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The decoder's part of a ``config.json`` (Gemma 4 nests it in ``text_config``)."""
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) else config


def config_dtype_bytes(config: Mapping[str, Any]) -> int:
    text = text_config(config)
    name = str(text.get("dtype") or config.get("dtype") or config.get("torch_dtype") or "")
    return _CONFIG_DTYPE_BYTES.get(name.lower(), 2)


def attention_layers(config: Mapping[str, Any]) -> tuple[AttentionLayer, ...]:
    """The layers that own a KV cache, read as vLLM reads ``config.json``.

    The last ``num_kv_shared_layers`` layers read another layer's cache and
    get none; full-attention layers of Gemma 4 use ``global_head_dim``.
    """
    text = text_config(config)
    layers = int(text.get("num_hidden_layers", 0))
    types = list(text.get("layer_types") or ["full_attention"] * layers)
    shared = int(text.get("num_kv_shared_layers") or 0)
    kv_heads = int(text.get("num_key_value_heads") or text.get("num_attention_heads") or 1)
    head_dim = int(
        text.get("head_dim")
        or int(text.get("hidden_size", 0)) // int(text.get("num_attention_heads", 1))
    )
    is_gemma4 = str(text.get("model_type", config.get("model_type", ""))).startswith("gemma4")
    global_head_dim = int(text.get("global_head_dim") or (512 if is_gemma4 else head_dim))
    global_kv_heads = kv_heads
    if text.get("attention_k_eq_v") and text.get("num_global_key_value_heads"):
        global_kv_heads = int(text["num_global_key_value_heads"])
    window = text.get("sliding_window")
    out = []
    for kind in types[: max(0, layers - shared)]:
        if kind == "sliding_attention" and window:
            out.append(AttentionLayer(kv_heads, head_dim, int(window)))
        else:
            out.append(AttentionLayer(global_kv_heads, global_head_dim, None))
    return tuple(out)


def _shape_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    text = text_config(config)
    layers = int(text.get("num_hidden_layers", 0))
    intermediate = int(text.get("intermediate_size", 0))
    if text.get("use_double_wide_mlp") and text.get("num_kv_shared_layers"):
        intermediate *= 2  # Gemma 4 E2B's KV-shared layers have a double-wide MLP
    return {
        "kv_layers": attention_layers(config),
        "max_context": int(text.get("max_position_embeddings") or 8192),
        "hidden_size": int(text.get("hidden_size", 0)),
        "intermediate_size": intermediate,
        "num_layers": layers,
        "ple_dim": int(text.get("hidden_size_per_layer_input") or 0),
        "vocab_size": int(text.get("vocab_size", 0)),
        "multimodal": "vision_config" in config or "audio_config" in config,
    }


def figures_from_published(published: PublishedModel) -> ModelFigures:
    """Figures from a catalog entry: the published config and parameter counts."""
    config, weights = published.config, published.weights
    size = config_dtype_bytes(config)
    return ModelFigures(
        source=published.source,
        dtype_bytes=size,
        decoder_bytes=weights.decoder * size,
        embedding_bytes=weights.embeddings * size,
        ple_bytes=weights.ple * size,
        vision_bytes=weights.vision * size,
        audio_bytes=weights.audio * size,
        checkpoint_bytes=weights.checkpoint_bytes,
        **_shape_fields(config),
    )


# --- a downloaded snapshot: config.json + safetensors headers ----------------------------


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes): a few kB read."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise ValueError(f"{path.name} is not a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > 100 * MIB:
            raise ValueError(f"{path.name}: implausible safetensors header ({length} bytes)")
        header: dict[str, Any] = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


def _layer_number(name: str) -> int | None:
    marker = ".layers."
    at = name.find(marker)
    if at < 0:
        return None
    digits = name[at + len(marker) :].split(".", 1)[0]
    return int(digits) if digits.isdigit() else None


def _part(name: str, first_shared: int, tied: bool) -> str | None:
    """Which part of the model a checkpoint tensor is, or ``None`` when vLLM drops it."""
    if "vision_tower" in name or "embed_vision" in name:
        return "vision"
    if "audio_tower" in name or "embed_audio" in name:
        return "audio"
    if "embed_tokens_per_layer" in name:
        return "ple"
    if tied and name.startswith("lm_head"):
        return None
    layer = _layer_number(name)
    if layer is None:
        return "embeddings"
    if layer >= first_shared and any(p in name for p in (".k_proj.", ".v_proj.", ".k_norm.")):
        return None  # a KV-shared layer reads another layer's K/V: vLLM skips these
    return "decoder"


def figures_from_snapshot(folder: Path, source: str = "the downloaded files") -> ModelFigures:
    """Exact figures of a model folder: its ``config.json`` and every tensor's size.

    Raises ``OSError`` / ``ValueError`` for a folder without a readable config or weights.
    """
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = text_config(config)
    layers = int(text.get("num_hidden_layers", 0))
    first_shared = layers - int(text.get("num_kv_shared_layers") or 0)
    tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", True)))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} has no .safetensors weights")
    parts = {"decoder": 0, "embeddings": 0, "ple": 0, "vision": 0, "audio": 0}
    sizes: set[int] = set()
    checkpoint = 0
    for file in files:
        checkpoint += file.stat().st_size
        for name, info in safetensors_header(file).items():
            width = _DTYPE_BYTES.get(str(info.get("dtype")), 2)
            sizes.add(width)
            part = _part(name, first_shared, tied)
            if part is not None:
                parts[part] += math.prod(int(n) for n in info.get("shape", [])) * width
    if not sum(parts.values()) or not layers:
        raise ValueError(f"{folder} holds no model this estimate can read")
    return ModelFigures(
        source=source,
        dtype_bytes=max(sizes) if sizes else config_dtype_bytes(config),
        decoder_bytes=parts["decoder"],
        embedding_bytes=parts["embeddings"],
        ple_bytes=parts["ple"],
        vision_bytes=parts["vision"],
        audio_bytes=parts["audio"],
        checkpoint_bytes=checkpoint,
        **_shape_fields(config),
    )


def figures_for(variant: Variant, folder: Path | None = None) -> ModelFigures | None:
    """The best figures known for ``variant``: its downloaded files (``folder``), else the
    catalog's published figures; ``None`` when neither exists."""
    if folder is not None and (folder / "config.json").is_file():
        try:
            return figures_from_snapshot(folder)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged download: the published figures still hold
    if variant.published is not None:
        return figures_from_published(variant.published)
    return None


# --- the KV cache, as vLLM 0.32 plans it -----------------------------------------------


@dataclass(frozen=True)
class KvPlan:
    """vLLM's KV cache layout for one model, context and block size.

    ``blocks_per_request`` blocks of ``bytes_per_block`` hold one request of
    ``context`` tokens (``kv_cache_utils.py``: pages unified to the largest,
    layers grouped by kind into groups of the smallest kind's count, all groups
    drawing from one pool).
    """

    context: int
    bytes_per_block: int
    blocks_per_request: int

    @property
    def request_bytes(self) -> int:
        """What vLLM requires for one full request: its blocks plus the null block."""
        return (self.blocks_per_request + 1) * self.bytes_per_block if self.bytes_per_block else 0

    def tokens(self, kv_bytes: int) -> int:
        """vLLM's logged "KV cache size: N tokens" for ``kv_bytes`` of KV memory."""
        if not self.bytes_per_block or not self.blocks_per_request:
            return 0
        blocks = kv_bytes // self.bytes_per_block
        return int(blocks / self.blocks_per_request * self.context)

    def concurrency(self, kv_bytes: int) -> float:
        if not self.bytes_per_block or not self.blocks_per_request:
            return 0.0
        return (kv_bytes // self.bytes_per_block) / self.blocks_per_request


def max_num_batched_tokens(figures: ModelFigures, text_only: bool) -> int:
    if figures.multimodal and not text_only:
        return max(MAX_NUM_BATCHED_TOKENS, GEMMA4_MAX_MM_ITEM_TOKENS)
    return MAX_NUM_BATCHED_TOKENS


def kv_plan(
    figures: ModelFigures,
    context: int,
    *,
    device: Device = "cuda",
    kv_dtype_bytes: int | None = None,
    text_only: bool = False,
    block_size: int | None = None,
) -> KvPlan:
    """How vLLM lays out the KV cache of ``figures`` for requests of ``context`` tokens."""
    layers = figures.kv_layers
    if not layers:
        return KvPlan(context, 0, 0)
    size = kv_dtype_bytes or figures.dtype_bytes
    base_block = block_size or (CUDA_BLOCK_SIZE if device == "cuda" else CPU_BLOCK_SIZE)
    pages = [layer.kv_heads * base_block * 2 * layer.head_dim * size for layer in layers]
    max_page = max(pages)
    specs: list[tuple[int | None, int, int, int]] = []
    for layer, page in zip(layers, pages, strict=True):
        # Smaller pages get proportionally more tokens per block (same page bytes).
        block = base_block * (max_page // page) if max_page % page == 0 else base_block
        specs.append((layer.sliding_window, layer.kv_heads, layer.head_dim, block))
    buckets: dict[tuple[int | None, int, int, int], int] = {}
    for spec in specs:
        buckets[spec] = buckets.get(spec, 0) + 1
    per_group = min(buckets.values())
    bytes_per_block = per_group * max_page
    in_flight = CONCURRENT_BATCHES * max_num_batched_tokens(figures, text_only)
    blocks = 0
    for (window, _heads, _dim, block), count in buckets.items():
        groups = _cdiv(count, per_group)
        if window is None:
            blocks += groups * _cdiv(context, block)
        else:
            blocks += groups * (_cdiv(min(window - 1 + in_flight, context), block) + 1)
    return KvPlan(context, bytes_per_block, blocks)


# --- the estimate ----------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """What one engine needs on its device, by part (bytes)."""

    context: int
    text_only: bool
    weights_bytes: int
    encoders_bytes: int
    kv_bytes: int
    overhead_bytes: int
    offload_bytes: int = 0
    ple_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.encoders_bytes + self.kv_bytes + self.overhead_bytes

    def breakdown(self) -> str:
        """``weights 9.6 GB + KV 0.6 GB + encoders 0.9 GB + overhead 1.1 GB = 12.2 GB``."""
        parts = [f"weights {gib(self.weights_bytes)}", f"KV {gib(self.kv_bytes)}"]
        if self.encoders_bytes:
            parts.append(f"encoders {gib(self.encoders_bytes)}")
        parts.append(f"overhead {gib(self.overhead_bytes)}")
        return " + ".join(parts) + f" = {gib(self.total_bytes)}"


def activation_bytes(figures: ModelFigures, text_only: bool) -> int:
    """The profiling pass's activation peak: one batch through the widest layer, the
    per-layer-embedding buffers, and the sampler over the vocabulary in float32."""
    tokens = max_num_batched_tokens(figures, text_only)
    act = 2  # bf16 activations
    per_token = 4 * figures.hidden_size + 3 * figures.intermediate_size
    per_token += 2 * figures.num_layers * figures.ple_dim  # PLE inputs + vLLM's scratch buffer
    sampler = MAX_NUM_SEQS * figures.vocab_size * 4 * 2
    return tokens * per_token * act + sampler


def estimate(
    figures: ModelFigures,
    context: int,
    *,
    text_only: bool = False,
    offload_bytes: int = 0,
    device: Device = "cuda",
    dtype_bytes: int | None = None,
    kv_bytes: int | None = None,
) -> MemoryEstimate:
    """What ``figures`` needs on a CUDA device (or in RAM on the CPU build).

    ``offload_bytes`` leave the GPU as vLLM's ``cpu_offload_gb`` moves them:
    the encoders first, then decoder layers; never the per-layer embeddings.
    On the CPU build ``kv_bytes`` is the engine's explicit KV reservation.
    """
    model = figures.in_dtype(dtype_bytes) if dtype_bytes else figures
    encoders = 0 if text_only else model.encoder_bytes
    offload = min(offload_bytes, offloadable_bytes(model, text_only)) if device == "cuda" else 0
    encoders_left = max(0, encoders - offload)
    weights = model.text_bytes - max(0, offload - encoders)
    if kv_bytes is None:
        kv_bytes = kv_plan(model, context, device=device, text_only=text_only).request_bytes
    if device == "cuda":
        overhead = NON_TORCH_BYTES + SAFETY_MARGIN_BYTES + activation_bytes(model, text_only)
        if model.multimodal and not text_only:
            overhead += ENCODER_PROFILE_BYTES
    else:
        overhead = cpu_process_bytes(model, text_only)
    return MemoryEstimate(
        context=context,
        text_only=text_only,
        weights_bytes=weights,
        encoders_bytes=encoders_left,
        kv_bytes=kv_bytes,
        overhead_bytes=overhead,
        offload_bytes=offload,
        ple_bytes=model.ple_bytes,
    )


def cpu_process_bytes(figures: ModelFigures, text_only: bool) -> int:
    """RAM the CPU engine's processes take besides weights and KV cache (measured here)."""
    if figures.vocab_size < LARGE_VOCAB:
        return CPU_PROCESS_BYTES_SMALL
    if figures.multimodal:
        return CPU_PROCESS_BYTES_TEXT_ONLY if text_only else CPU_PROCESS_BYTES_MULTIMODAL
    return CPU_PROCESS_BYTES_SMALL


def offloadable_bytes(figures: ModelFigures, text_only: bool) -> int:
    return figures.decoder_bytes + (0 if text_only else figures.encoder_bytes)


def cpu_tokens_per_second(figures: ModelFigures, dtype_bytes: int | None = None) -> float:
    """Decoding speed on this kind of machine's CPU, scaled from the bundled model's
    measured speed by the bytes read per token (decoding is memory-bound). An estimate."""
    model = figures.in_dtype(dtype_bytes) if dtype_bytes else figures
    streamed = max(1, model.streamed_bytes)
    return MEASURED_CPU_TOKENS_PER_S * MEASURED_CPU_BYTES_PER_TOKEN / streamed


# --- the plan for one GPU -------------------------------------------------------------

#: Why the engine gets its context: ``model`` the model's full context; ``user`` the
#: user's ``ATOMR_INFER_GEMMA_MAX_LEN``; ``fits`` the longest that fits this card (the full
#: one does not); ``speed`` the longest that fits without CPU offload (a longer one would
#: need offload); ``none`` nothing fits, not even :data:`USEFUL_CONTEXT` tokens.
ContextReason = Literal["model", "user", "fits", "speed", "none"]


def clean_contexts(longest: int) -> tuple[int, ...]:
    """The contexts the app chooses from, longest first: ``longest`` (the model's own, or
    the user's), then every power of two below it down to :data:`USEFUL_CONTEXT`.

    Powers of two rather than the exact longest length that fits: the free memory moves
    by a few hundred MiB as other programs run, and an exact fit would give the same
    card a different context from one start to the next; a power of two changes only
    when the card's memory really differs (and it is a length people know: 32k, 64k).
    """
    contexts = [longest]
    step = 1 << (longest.bit_length() - 1)  # the largest power of two <= longest
    if step == longest:
        step //= 2
    while step >= USEFUL_CONTEXT:
        contexts.append(step)
        step //= 2
    return tuple(contexts)


@dataclass(frozen=True)
class ContextChoice:
    """The context the engine is started with (vLLM's ``max_model_len``) and why.

    ``full_need_bytes`` is the estimate at the model's full context without offload;
    for ``speed``, ``offload_tokens`` / ``offload_gib`` are the longer context that
    would fit with CPU offload, and that offload.
    """

    tokens: int
    reason: ContextReason
    full_tokens: int
    full_need_bytes: int
    offload_tokens: int = 0
    offload_gib: float = 0.0

    @property
    def shortened(self) -> bool:
        """The app chose a shorter context than the model's own to make it fit (or fast)."""
        return self.reason in ("fits", "speed")

    def short(self) -> str:
        """``32,768 tokens of context, the longest that fits this card`` (status line)."""
        text = f"{self.tokens:,} tokens of context"
        if self.reason == "fits":
            return f"{text}, the longest that fits this card"
        if self.reason == "speed":
            return f"{text}, the longest that fits this card without CPU offload"
        if self.reason == "user":
            return f"{text} ({ENV_MAX_LEN})"
        if self.reason == "none":
            return f"not even {text}"
        return f"{text}, the model's full context"

    def describe(self) -> str:
        """:meth:`short` and, for a shortened context, what the full one needs."""
        if not self.shortened:
            return self.short()
        return (
            f"{self.short()}; the model's full context ({self.full_tokens:,} tokens) needs "
            f"{gib(self.full_need_bytes)}"
        )


@dataclass(frozen=True)
class GpuPlan:
    """How the engine uses one GPU, and whether it starts there.

    ``utilization`` and ``offload_gib`` are what the engine gets (the user's
    values where set); ``problems`` say why it would not start (empty: it
    fits); ``fixes`` name the settings that would make it fit (or, when it fits
    with CPU offload, run at full speed); ``longer`` those that give a longer
    context than the app chose; ``context`` the context and why.
    """

    gpu: GpuInfo
    estimate: MemoryEstimate
    context: ContextChoice
    utilization: float
    utilization_set: bool
    offload_gib: float
    offload_set: bool
    budget_bytes: int
    problems: tuple[str, ...] = ()
    fixes: tuple[str, ...] = field(default=())
    longer: tuple[str, ...] = field(default=())

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def usable_free_bytes(self) -> int:
        return usable_free(self.gpu)

    @property
    def reservation_fits_free(self) -> bool:
        return self.budget_bytes <= self.usable_free_bytes

    def summary(self) -> str:
        """``weights … = 11.1 GB of the 12.0 GB vLLM may use (0.50 × 24.0 GB), at 131,072
        tokens of context: fits`` (or why not)."""
        text = (
            f"{self.estimate.breakdown()} of the {gib(self.budget_bytes)} vLLM may use "
            f"({self.utilization:.2f} × {gib(self.gpu.total_bytes)}), at "
            f"{self.estimate.context:,} tokens of context"
        )
        if not self.reservation_fits_free:
            return (
                f"{text}; but only {gib(self.usable_free_bytes)} of the card is free for "
                "that reservation: does not fit"
            )
        if not self.fits:
            return f"{text}: does not fit"
        if self.offload_gib:
            return f"{text}: fits with {self.offload_gib:g} GB of weights offloaded to RAM"
        return f"{text}: fits"


def usable_free(gpu: GpuInfo) -> int:
    """Free memory once the engine's CUDA context exists (what vLLM compares)."""
    return max(0, gpu.free_bytes - CUDA_CONTEXT_BYTES)


def _ceil_share(value: float) -> float:
    return math.ceil(value * 100 - 1e-9) / 100


def _floor_share(value: float) -> float:
    return math.floor(value * 100 + 1e-9) / 100


def budget(total_bytes: int, utilization: float) -> int:
    """vLLM's reservation: ``ceil(total × gpu_memory_utilization)``."""
    return math.ceil(total_bytes * utilization)


def app_utilization(need_bytes: int, gpu: GpuInfo) -> float:
    """The share the app asks for when the user chose none (see :data:`APP_UTIL_FLOOR`)."""
    ceiling = min(APP_UTIL_CEILING, _floor_share(usable_free(gpu) / gpu.total_bytes))
    wanted = max(APP_UTIL_FLOOR, _ceil_share(need_bytes / gpu.total_bytes))
    return max(0.01, min(wanted, ceiling))


def _plan(
    model: ModelFigures,
    gpu: GpuInfo,
    *,
    context: int | None,
    utilization: float | None,
    offload_gib: float | None,
    text_only: bool,
    floor_bytes: int,
) -> GpuPlan:
    """The plan at one context (``None``: the model's full context), reason ``model`` /
    ``user`` (the caller that chose it says why)."""
    ctx = min(context or model.max_context, model.max_context)
    full = estimate(model, ctx, text_only=text_only)
    util = utilization if utilization is not None else app_utilization(full.total_bytes, gpu)
    reserved = budget(gpu.total_bytes, util)
    movable = offloadable_bytes(model, text_only)
    if offload_gib is not None:
        offload = float(offload_gib)
    else:
        offload = (
            float(_ceil_gib(full.total_bytes - reserved)) if full.total_bytes > reserved else 0.0
        )
    est = estimate(model, ctx, text_only=text_only, offload_bytes=int(offload * GIB))
    problems: list[str] = []
    free = usable_free(gpu)
    if gpu.free_bytes < floor_bytes:
        problems.append(
            f"needs at least {gib(floor_bytes)} of free VRAM; {gib(gpu.free_bytes)} is free"
        )
    if reserved > free:
        problems.append(
            f"vLLM would reserve {util:g} × {gib(gpu.total_bytes)} = {gib(reserved)}, but only "
            f"{gib(gpu.free_bytes)} is free ({gib(CUDA_CONTEXT_BYTES)} of it goes to the "
            "engine's CUDA context), so the engine would fail to start"
        )
    if est.total_bytes > reserved:
        if offload_gib is None and full.total_bytes - reserved > movable:
            problems.append(
                f"needs {gib(full.total_bytes)} and vLLM may use {gib(reserved)}; offloading "
                f"every layer it can ({gib(movable)}) is not enough"
            )
        else:
            problems.append(
                f"needs {gib(est.total_bytes)}, more than the {gib(reserved)} vLLM may use"
            )
    full_need = (
        full.total_bytes
        if ctx == model.max_context
        else estimate(model, model.max_context, text_only=text_only).total_bytes
    )
    return GpuPlan(
        gpu=gpu,
        estimate=est,
        context=ContextChoice(
            ctx, "model" if context is None else "user", model.max_context, full_need
        ),
        utilization=util,
        utilization_set=utilization is not None,
        offload_gib=min(offload, float(_ceil_gib(movable))) if offload_gib is None else offload,
        offload_set=offload_gib is not None,
        budget_bytes=reserved,
        problems=tuple(problems),
    )


def _choose_context(model: ModelFigures, gpu: GpuInfo, args: dict[str, Any]) -> GpuPlan:
    """The plan at the context the app chooses when the user set none: the model's full
    context if it fits without CPU offload; else the longest of :func:`clean_contexts`
    that fits without offload (offload slows every token, see the module docstring);
    else the longest that fits with it; else (nothing fits) the shortest tried.

    Where the user chose the offload (``ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB``), only
    whether it fits counts.
    """
    plans = [
        _plan(model, gpu, **{**args, "context": tokens})
        for tokens in clean_contexts(model.max_context)
    ]
    fitting = [plan for plan in plans if plan.fits]
    if args["offload_gib"] is None:
        chosen = next((p for p in fitting if not p.offload_gib), fitting[0] if fitting else None)
    else:
        chosen = fitting[0] if fitting else None
    reason: ContextReason
    if chosen is None:
        # Nothing fits: the shortest tried (the model's own when it is the only one).
        chosen = plans[-1]
        reason = "model" if chosen is plans[0] else "none"
    elif chosen is plans[0]:
        reason = "model"
    elif chosen is not fitting[0]:
        reason = "speed"  # a longer context fits, but only with CPU offload
    else:
        reason = "fits"
    choice = replace(chosen.context, reason=reason)
    if reason == "speed":
        choice = replace(
            choice, offload_tokens=fitting[0].estimate.context, offload_gib=fitting[0].offload_gib
        )
    return replace(chosen, context=choice)


def plan_gpu(
    figures: ModelFigures,
    gpu: GpuInfo,
    *,
    context: int | None = None,
    utilization: float | None = None,
    offload_gib: float | None = None,
    text_only: bool = False,
    dtype_bytes: int | None = None,
    floor_bytes: int = 0,
) -> GpuPlan:
    """The engine's context, its share of ``gpu`` and its CPU offload, whether it starts,
    and if not, the settings that would make it (:attr:`GpuPlan.fixes`, each checked with
    the estimate).

    ``context`` is the user's ``max_model_len``, used as given (and, when it does not
    fit, refused with the longest that would); ``None``: the app chooses
    (:func:`_choose_context`). ``utilization`` / ``offload_gib`` are the user's settings
    (``None``: the app's rule: the share the model needs within :func:`app_utilization`'s
    bounds, then offload only what still does not fit, rounded up to whole GiB).
    ``floor_bytes`` is the seed's minimum free VRAM for the variant.

    The engine's configuration calls this (:meth:`EngineConfig.build`), and vLLM gets
    ``estimate.context`` as ``max_model_len``: one rule for the estimate and the engine.
    """
    model = figures.in_dtype(dtype_bytes) if dtype_bytes else figures
    args: dict[str, Any] = {
        "context": context,
        "utilization": utilization,
        "offload_gib": offload_gib,
        "text_only": text_only,
        "floor_bytes": floor_bytes,
    }
    if gpu.free_bytes < floor_bytes:
        return _plan(model, gpu, **args)
    plan = _plan(model, gpu, **args) if context is not None else _choose_context(model, gpu, args)
    chosen = {**args, "context": plan.estimate.context}
    if not plan.fits:
        return replace(plan, fixes=tuple(_fixes(model, gpu, plan, chosen)))
    fixes: list[str] = []
    if plan.offload_gib and offload_gib is None:
        # It fits by offloading: say what would make it fit at full speed.
        full_speed = {**chosen, "offload_gib": 0.0}
        fixes = _fixes(model, gpu, plan, full_speed, offload=False)
    return replace(plan, fixes=tuple(fixes), longer=tuple(_longer(model, gpu, plan, args)))


def _fixes(
    model: ModelFigures,
    gpu: GpuInfo,
    plan: GpuPlan,
    args: dict[str, Any],
    *,
    offload: bool = True,
) -> list[str]:
    """Settings that would make the model start on ``gpu`` (``offload=False``: without CPU
    offload), each checked with the estimate at the plan's context."""
    fixes: list[str] = []
    free = usable_free(gpu)

    def fits(**changes: Any) -> bool:
        return _plan(model, gpu, **{**args, **changes}).fits

    if not plan.reservation_fits_free:
        share = _floor_share(free / gpu.total_bytes)
        if share > 0 and fits(utilization=share):
            fixes.append(
                f"set ATOMR_INFER_GEMMA_GPU_UTIL={share:.2f} (the card is shared: "
                f"{gib(gpu.free_bytes)} free)"
            )
        else:
            fixes.append("close programs using the GPU")
    if args["utilization"] is not None:
        higher = min(APP_UTIL_CEILING, _floor_share(free / gpu.total_bytes))
        if higher > args["utilization"] and fits(utilization=higher):
            fixes.append(f"raise ATOMR_INFER_GEMMA_GPU_UTIL to {higher:.2f}")
    ctx = plan.estimate.context
    for shorter in clean_contexts(ctx)[1:]:
        if fits(context=shorter):
            which = "fits this card" if offload else "fits this card without CPU offload"
            fix = f"a shorter context: {ENV_MAX_LEN}={shorter}, the longest that {which}"
            if plan.context.reason == "user":
                fix += f" (or unset {ENV_MAX_LEN}: the app then chooses the context)"
            fixes.append(fix)
            break
    if not args["text_only"] and model.multimodal and fits(text_only=True):
        fixes.append("text-only mode: ATOMR_INFER_GEMMA_TEXT_ONLY=on (no image or audio)")
    if offload and args["offload_gib"] is not None and fits(offload_gib=None):
        fixes.append("let the app choose the CPU offload: unset ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB")
    return fixes


def _longer(model: ModelFigures, gpu: GpuInfo, plan: GpuPlan, args: dict[str, Any]) -> list[str]:
    """Settings that give a longer context than the one the app chose: the longer context
    with CPU offload (when the app chose speed), and text-only mode where it buys at least
    one clean step (twice the context)."""
    choice = plan.context
    longer: list[str] = []
    if not choice.shortened:
        return longer
    if choice.reason == "speed":
        longer.append(
            f"{ENV_MAX_LEN}={choice.offload_tokens} for {choice.offload_tokens:,} tokens of "
            f"context, with {choice.offload_gib:g} GB of weights offloaded to RAM (they cross "
            "PCIe for every token: decoding is slower)"
        )
    if not args["text_only"] and model.multimodal:
        text = _choose_context(model, gpu, {**args, "text_only": True})
        if text.fits and text.estimate.context > choice.tokens:
            longer.append(
                f"text-only mode: {ENV_TEXT_ONLY}=on gives {text.estimate.context:,} tokens "
                "of context (no image or audio)"
            )
    return longer


def choose_gpu(gpus: Iterable[GpuInfo]) -> GpuInfo | None:
    """The GPU with the most free memory (ties: the lowest index)."""
    return max(gpus, key=lambda g: (g.free_bytes, -g.index), default=None)
