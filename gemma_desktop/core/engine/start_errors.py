"""Why the engine did not start, in words that name what the user can change.

vLLM's start-up failures happen in its EngineCore process; the app's process
only learns "Engine core initialization failed". The explanation is read from
the engine's log (:func:`gemma_desktop.core.engine.vllm_local.engine_log_path`)
since the start began, matched against vLLM 0.32's own messages (their
format strings live in ``vllm/v1/worker/utils.py``, ``v1/core/kv_cache_utils.py``,
``v1/worker/gpu_model_runner.py`` and ``v1/worker/cpu_worker.py``; the tests
render them from the installed vLLM's source). Every hint names a setting the
user can change: ``ATOMR_INFER_GEMMA_GPU_UTIL``, ``ATOMR_INFER_GEMMA_MAX_LEN``,
``ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB``, ``ATOMR_INFER_GEMMA_TEXT_ONLY``, or the
smaller model.
"""

from __future__ import annotations

import math
import re

from gemma_desktop.core.engine.config import EngineConfig
from gemma_desktop.core.engine.protocol import EngineError
from gemma_desktop.core.models.catalog import fallback_variant

_NUMBER = r"[\d.]+"
#: ``v1/worker/utils.py`` ``request_memory``: free memory below util × total at start.
FREE_BELOW_UTIL = re.compile(
    rf"Free memory on device (?P<device>\S+) \((?P<free>{_NUMBER})/(?P<total>{_NUMBER}) GiB\) "
    rf"on startup is less than desired GPU memory utilization \((?P<util>{_NUMBER}), "
    rf"(?P<requested>{_NUMBER}) GiB\)"
)
#: ``v1/core/kv_cache_utils.py``: one request of max_model_len does not fit the KV memory.
KV_TOO_SMALL = re.compile(
    r"To serve at least one request with the model's max seq len \((?P<max_len>\d+)\), "
    rf"\((?P<needed>{_NUMBER}) GiB KV cache is needed, which is larger than the available KV "
    rf"cache memory \((?P<available>{_NUMBER}) GiB\)\.(?: Based on the available memory, the "
    r"estimated maximum model length is (?P<estimate>\d+)\.)?"
)
#: ``v1/core/kv_cache_utils.py``: the weights and activations leave nothing for the KV cache.
NO_KV_MEMORY = re.compile(r"No available memory for the cache blocks\.")
#: torch's CUDA allocator (what the default V2 model runner re-raises), and the V1 runner's.
CUDA_OOM = re.compile(
    r"CUDA out of memory\. Tried to allocate (?P<requested>[\d.]+ [KMGT]?i?B)"
    r"|Failed to load model - not enough GPU memory"
)
#: ``v1/worker/cpu_worker.py``: the CPU build's RAM checks.
CPU_RAM_BELOW_UTIL = re.compile(
    rf"Available memory on node (?P<node>\d+) \((?P<free>{_NUMBER})/(?P<total>{_NUMBER}) GiB\) "
    r"on startup is less than desired CPU memory utilization"
)
CPU_KV_ALLOCATION = re.compile(
    rf"Available memory on node (?P<node>\d+) \((?P<free>{_NUMBER})/(?P<total>{_NUMBER}) GiB\) "
    r"on kv cache allocation is less than requested memory for kv"
)

GPU_UTIL = "ATOMR_INFER_GEMMA_GPU_UTIL"
MAX_LEN = "ATOMR_INFER_GEMMA_MAX_LEN"
CPU_OFFLOAD = "ATOMR_INFER_GEMMA_CPU_OFFLOAD_GB"
TEXT_ONLY = "ATOMR_INFER_GEMMA_TEXT_ONLY"


def log_path() -> str:
    from gemma_desktop.core.engine.vllm_local import engine_log_path

    return str(engine_log_path())


def explain_start_failure(exc: BaseException, config: EngineConfig, log_text: str) -> EngineError:
    """The user's explanation of a failed engine start, from the exception and the engine's log."""
    detail = log_text + "\n" + exception_text(exc)
    model = config.model_id
    match = FREE_BELOW_UTIL.search(detail)
    if match:
        free, total = float(match["free"]), float(match["total"])
        # The engine's CUDA context is already counted as used when vLLM compares.
        share = math.floor(free / total * 100) / 100 if total else 0.0
        fix = (
            f"set {GPU_UTIL}={share:.2f} or lower"
            if share >= 0.05
            else "the card is nearly full: nothing fits beside what runs there"
        )
        return EngineError(
            f"{model}: vLLM would reserve {match['requested']} GiB ({match['util']} of "
            f"{match['device']}'s {total:g} GiB), but only {free:g} GiB is free.",
            f"Close programs using the GPU, or {fix}.",
        )
    match = KV_TOO_SMALL.search(detail)
    if match:
        options = []
        if match["estimate"]:
            options.append(f"set {MAX_LEN}={_round_len(int(match['estimate']))}")
        else:
            options.append(f"lower {MAX_LEN}")
        options.extend(_memory_options(model, config, offload=True))
        return EngineError(
            f"{model}: one conversation of {match['max_len']} tokens needs "
            f"{match['needed']} GiB of KV cache; only {match['available']} GiB is left for it.",
            "Either " + ", or ".join(options) + ".",
        )
    if NO_KV_MEMORY.search(detail):
        return EngineError(
            f"{model}: its weights and vLLM's working memory take all of the "
            f"{config.gpu_memory_utilization:g} share vLLM may use; nothing is left for the "
            "KV cache.",
            "Either " + ", or ".join(_memory_options(model, config, offload=True, util=True)) + ".",
        )
    match = CUDA_OOM.search(detail)
    if match:
        return EngineError(
            f"Not enough GPU memory (VRAM) to start {model}.",
            "Close other programs using the GPU, or "
            + ", or ".join(_memory_options(model, config, offload=True, max_len=True))
            + ".",
        )
    match = CPU_RAM_BELOW_UTIL.search(detail) or CPU_KV_ALLOCATION.search(detail)
    lowered = detail.lower()
    if match or any(
        word in lowered
        for word in (
            "out of memory",
            "insufficient memory",
            "cannot allocate memory",
            "memoryerror",
        )
    ):
        where = "RAM" if config.on_cpu else "GPU memory (VRAM)"
        options = _memory_options(model, config, max_len=True)
        if config.on_cpu and match is not None and match.re is CPU_RAM_BELOW_UTIL:
            options.append(f"lower {GPU_UTIL} (on the CPU build it is the share of RAM)")
        return EngineError(
            f"Not enough {where} to start {model}.",
            "Close other programs using it, or " + ", or ".join(options) + ".",
        )
    return EngineError(
        f"The engine failed to start {model}: {root_cause(exc, log_text)}",
        f"See the engine log for details: {log_path()}",
    )


def _round_len(tokens: int) -> int:
    """A context length a person would type: down to a multiple of 1024 (at least 128)."""
    return max(128, tokens // 1024 * 1024) if tokens >= 1024 else max(128, tokens)


def _memory_options(
    model_id: str,
    config: EngineConfig,
    *,
    offload: bool = False,
    util: bool = False,
    max_len: bool = False,
) -> list[str]:
    """What the user can change to need less memory, each naming its setting."""
    options = []
    if max_len:
        options.append(f"a shorter context ({MAX_LEN})")
    if not config.on_cpu:
        if util:
            options.append(f"a larger share of the card ({GPU_UTIL}, if nothing else runs there)")
        if offload:
            now = config.cpu_offload_gb or 0
            options.append(
                f"offload more weights to RAM ({CPU_OFFLOAD}={math.floor(now) + 2:g})"
                if now
                else f"offload part of the weights to RAM ({CPU_OFFLOAD}=2 or more)"
            )
    if not config.text_only and not config.on_cpu:
        options.append(f"text-only mode ({TEXT_ONLY}=on)")
    smaller = fallback_variant(model_id)
    if smaller:
        options.append(f"the smaller {smaller}")
    return options


def root_cause(exc: BaseException, log_text: str) -> str:
    """The last error the engine process logged, else the innermost exception."""
    for line in reversed(log_text.splitlines()):
        match = re.match(r"^\s*([A-Za-z_.]*(?:Error|Exception)): (.+)$", line)
        if match:
            return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"
    lines = exception_text(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def exception_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(reversed(parts))
