"""The memory estimate against what vLLM itself logs when it starts the session's engines:
the bundled Gemma 3 270M and the tiny Gemma 4 checkpoint (both float32, 2048 tokens,
256 MiB of KV cache, on vLLM's CPU build).

vLLM's CPU build logs the KV cache it planned ("CPU KV cache size: N tokens, Maximum
concurrency for L tokens per request: Cx") and the weight files it reads ("Checkpoint
size: X GiB"); the GPU-only "Model loading took X GiB" cannot be produced here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core.machine.gpu import GIB
from gemma_desktop.core.machine.memory import figures_from_snapshot, kv_plan
from tests.fixtures.engine import LOG_DIR

KV_LINE = re.compile(
    r"\((?:EngineCore|Worker)[^ ]* pid=(?P<pid>\d+)\).*CPU KV cache size: (?P<tokens>[\d,]+) "
    r"tokens, Maximum concurrency for (?P<context>[\d,]+) tokens per request: (?P<conc>[\d.]+)x"
)
CHECKPOINT_LINE = re.compile(
    r"\((?:EngineCore|Worker)[^ ]* pid=(?P<pid>\d+)\).*Checkpoint size: (?P<gib>[\d.]+) GiB"
)


def _logged(engine: Any) -> tuple[dict[str, str], float]:
    """vLLM's KV line and checkpoint size for ``engine``'s own processes."""
    pids = {str(pid) for pid in engine.engine_pids}
    kv: dict[str, str] | None = None
    checkpoint: float | None = None
    for path in sorted(Path(LOG_DIR).glob("engine.log*")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            match = KV_LINE.search(line)
            if match and match["pid"] in pids:
                kv = match.groupdict()
            match = CHECKPOINT_LINE.search(line)
            if match and match["pid"] in pids:
                checkpoint = float(match["gib"])
    assert kv is not None and checkpoint is not None, f"no vLLM memory lines for {pids}"
    return kv, checkpoint


def _check(engine: Any) -> None:
    config = engine.config
    figures = figures_from_snapshot(Path(config.model))
    plan = kv_plan(figures, config.max_model_len, device="cpu", kv_dtype_bytes=4)
    kv, checkpoint = _logged(engine)
    logged_tokens = int(kv["tokens"].replace(",", ""))
    assert int(kv["context"].replace(",", "")) == config.max_model_len
    ours = plan.tokens(config.kv_cache_memory_bytes)
    assert ours == pytest.approx(logged_tokens, rel=0.10)
    assert plan.concurrency(config.kv_cache_memory_bytes) == pytest.approx(
        float(kv["conc"]), abs=0.01
    )
    # The weights in the checkpoint's dtype (bf16), as vLLM reports the files it reads.
    assert round(figures.weight_bytes / GIB, 2) == pytest.approx(checkpoint, rel=0.10, abs=0.01)
    print(
        f"{config.model_id}: KV tokens estimated {ours:,} / vLLM {logged_tokens:,}; "
        f"weights {figures.weight_bytes / GIB:.4f} GiB / vLLM checkpoint {checkpoint} GiB"
    )


@pytest.mark.engine
def test_estimate_matches_vllm_for_the_bundled_model(shared_engine: Any) -> None:
    _check(shared_engine)


@pytest.mark.engine
def test_estimate_matches_vllm_for_the_tiny_gemma4(gemma4_engine: Any) -> None:
    _check(gemma4_engine)
