"""Why the engine did not start, in words that name what the user can change.

vLLM's start-up failures happen in its EngineCore process; the app's process
only learns "Engine core initialization failed". The explanation is read from
the engine's log (:func:`gemma_desktop.core.engine.vllm_local.engine_log_path`)
since the start began, matched against vLLM's own messages.
"""

from __future__ import annotations

import re

from gemma_desktop.core.engine.config import EngineConfig
from gemma_desktop.core.engine.protocol import EngineError
from gemma_desktop.core.models.catalog import fallback_variant


def log_path() -> str:
    from gemma_desktop.core.engine.vllm_local import engine_log_path

    return str(engine_log_path())


def explain_start_failure(exc: BaseException, config: EngineConfig, log_text: str) -> EngineError:
    """The user's explanation of a failed engine start, from the exception and the engine's log."""
    detail = log_text + "\n" + exception_text(exc)
    lowered = detail.lower()
    model = config.model_id
    hint = memory_hint(model, config)
    if "max seq len" in lowered or ("max_model_len" in lowered and "kv cache" in lowered):
        return EngineError(
            f"{model}: the KV cache is too small for max_model_len "
            f"({config.max_model_len or 'the model default'}).",
            f"Lower max_model_len in the settings (ATOMR_INFER_GEMMA_MAX_LEN), or {hint}.",
        )
    if any(
        word in lowered
        for word in (
            "out of memory",
            "available memory",
            "insufficient memory",
            "no available memory",
            "cannot allocate memory",
            "memoryerror",
        )
    ):
        where = "RAM" if config.on_cpu else "GPU memory (VRAM)"
        return EngineError(
            f"Not enough {where} to start {model}.",
            f"Close other programs using it, {hint}.",
        )
    return EngineError(
        f"The engine failed to start {model}: {root_cause(exc, log_text)}",
        f"See the engine log for details: {log_path()}",
    )


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


def memory_hint(model_id: str, config: EngineConfig) -> str:
    options = []
    smaller = fallback_variant(model_id)
    if smaller:
        options.append(f"pick the smaller {smaller}")
    options.append("lower max_model_len (ATOMR_INFER_GEMMA_MAX_LEN)")
    if not config.on_cpu and not config.cpu_offload_gb:
        options.append("offload part of the weights to RAM (cpu_offload_gb)")
    if not config.on_cpu:
        options.append("raise gpu_memory_utilization if other programs leave room")
    return ", or ".join(options)
