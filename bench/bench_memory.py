"""The memory estimate against vLLM's own start-up figures, on every model that runs here.

Starts the app's engine (vLLM's CPU build, float32, 2048 tokens, 256 MiB of KV cache, as
the test suite's session engines) on the bundled Gemma 3 270M and on both sizes of the tiny
Gemma 4 test checkpoint (the full one has the real 262k vocabulary: about 80 s and 6 GB, so
it runs here and not in ``make test``), one at a time, and compares what
:mod:`gemma_desktop.core.machine.memory` predicts with what vLLM logs: "CPU KV cache size:
N tokens" and "Checkpoint size: X GiB". Prints a table and writes
``bench/results/memory.json``. Figures, not assertions.

    .venv/bin/python bench/bench_memory.py [--models bundled,small,full]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KV_LINE = re.compile(r"pid=(?P<pid>\d+)\).*CPU KV cache size: (?P<tokens>[\d,]+) tokens")
CHECKPOINT_LINE = re.compile(r"pid=(?P<pid>\d+)\).*Checkpoint size: (?P<gib>[\d.]+) GiB")


def model_folder(name: str) -> tuple[str, Path]:
    from gemma_desktop.core import paths
    from gemma_desktop.core.models.bundled import provision_bundled_model
    from tests.fixtures.gemma4_checkpoint import cached_checkpoint

    if name == "bundled":
        return "bundled/gemma-3-270m", provision_bundled_model(target=paths.bundled_model_dir())
    bundled = provision_bundled_model(target=paths.bundled_model_dir())
    folder = cached_checkpoint(
        name,  # type: ignore[arg-type]
        REPO / "build" / "gemma4",
        full_tokenizer_json=bundled / "tokenizer.json" if name == "full" else None,
    )
    return "google/gemma-4-E2B-it", folder


async def measure(name: str, log_dir: Path) -> dict[str, Any]:
    from gemma_desktop.core.engine.assembly import MachineFacts, local_config
    from gemma_desktop.core.engine.vllm_local import VllmEngine
    from gemma_desktop.core.machine.gpu import GIB
    from gemma_desktop.core.machine.memory import figures_from_snapshot, kv_plan
    from gemma_desktop.core.models.catalog import VariantCatalog
    from gemma_desktop.core.settings import load_settings

    variant_id, folder = model_folder(name)
    config = local_config(
        load_settings(env={}),
        VariantCatalog().get(variant_id),
        MachineFacts.cpu(),
        model_path=folder,
        dtype="float32",
    )
    config = dataclasses.replace(config, max_model_len=2048, kv_cache_memory_bytes=256 * 1024**2)
    engine = VllmEngine(config)
    await engine.start()
    pids = {str(p) for p in engine.engine_pids}
    await engine.shutdown()
    tokens = checkpoint = None
    for path in sorted(log_dir.glob("engine.log*")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            match = KV_LINE.search(line)
            if match and match["pid"] in pids:
                tokens = int(match["tokens"].replace(",", ""))
            match = CHECKPOINT_LINE.search(line)
            if match and match["pid"] in pids:
                checkpoint = float(match["gib"])
    figures = figures_from_snapshot(folder)
    plan = kv_plan(figures, 2048, device="cpu", kv_dtype_bytes=4)
    ours = plan.tokens(256 * 1024**2)
    return {
        "model": name,
        "kv_tokens_estimated": ours,
        "kv_tokens_vllm": tokens,
        "kv_error": None if not tokens else abs(ours - tokens) / tokens,
        "weights_gib_estimated": round(figures.weight_bytes / GIB, 4),
        "checkpoint_gib_vllm": checkpoint,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundled,small,full")
    args = parser.parse_args(argv)
    from gemma_desktop.core.engine.vllm_local import preload_vllm

    log_dir = Path(tempfile.mkdtemp(prefix="gd-bench-memory-"))
    preload_vllm("ERROR", log_dir)
    results = []
    for name in args.models.split(","):
        row = asyncio.run(measure(name, log_dir))
        results.append(row)
        print(
            f"{name:8s} KV tokens: estimate {row['kv_tokens_estimated']:>9,} vLLM "
            f"{row['kv_tokens_vllm'] or 0:>9,}  weights: estimate "
            f"{row['weights_gib_estimated']:.4f} GiB, vLLM checkpoint "
            f"{row['checkpoint_gib_vllm']} GiB",
            flush=True,
        )
    out = REPO / "bench" / "results" / "memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
