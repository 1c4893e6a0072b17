"""Engine benchmark: raw vLLM ``AsyncLLMEngine`` versus the app's engine path.

Runs each side in its own fresh process (so both pay the same imports and
neither inherits the other's warm state), on the bundled Gemma 3 270M with
the app's CPU engine settings, the same prompt and greedy sampling, 256 tokens:

* raw: ``AsyncLLMEngine.from_engine_args`` on a plain asyncio loop, then
  ``generate()`` with ``RequestOutputKind.DELTA``;
* app: Qt application + ``AppEventLoop``, ``VllmEngine.start()`` then
  ``VllmEngine.chat()``, with a ``QTimer`` heartbeat every 5 ms recording the
  longest gap between beats while the engine starts and while it streams.

Prints a table and writes ``bench/results/engine.json``. Figures, not
assertions: the machine may be busy with other work.

Then Gemma 4 (``--gemma4 all|small|none|only``): the test checkpoints
(tests/fixtures/gemma4_checkpoint.py, cached in ``build/gemma4``), small and
full 262k vocabulary, each in a fresh process through the app's engine with
its CPU settings, with and without text-only mode: engine start, memory (PSS
of the app and every engine process) and the time to first token of a text,
an image and an audio prompt. Writes ``bench/results/gemma4.json``.

Then the local API (``--api``, on by default): in one fresh process the app's engine
on the bundled model, and the local API (``gemma-desktop serve``'s and the window's)
over it; the same prompt, greedy, streamed, first in-process (``VllmEngine.chat``)
then through the API by the official ``openai`` client in its own process, alternating
for ``API_ROUNDS`` rounds: tokens per second and time to first token of each. Writes
``bench/results/api.json``.

    .venv/bin/python bench/bench_engine.py [--tokens 256] [--rounds 1] [--api|--no-api]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "engine.json"
PROMPT = "Once upon a time,"
HEARTBEAT_MS = 5

TARGETS = {
    "throughput_ratio_min": 0.98,
    "ttft_overhead_ms_max": 10.0,
    "start_ratio_max": 1.1,
    "gap_start_ms_max": 100.0,
    "gap_stream_ms_max": 33.0,
}


def _engine_config() -> Any:
    sys.path.insert(0, str(REPO))
    from gemma_desktop.core.engine.assembly import MachineFacts, local_config
    from gemma_desktop.core.models.bundled import provision_bundled_model
    from gemma_desktop.core.models.catalog import VariantCatalog
    from gemma_desktop.core.settings import load_settings

    path = provision_bundled_model()
    return local_config(
        load_settings(env={}), VariantCatalog().bundled, MachineFacts.cpu(), model_path=path
    )


# --- the raw side ----------------------------------------------------------------------


def run_raw(tokens: int) -> dict[str, Any]:
    import asyncio

    config = _engine_config()
    began = time.perf_counter()
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.engine.async_llm_engine import AsyncLLMEngine
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    imported = time.perf_counter()

    async def main() -> dict[str, Any]:
        llm = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**config.to_engine_args_kwargs()))
        ready = time.perf_counter()
        try:
            params = SamplingParams(
                temperature=0.0, max_tokens=tokens, output_kind=RequestOutputKind.DELTA
            )
            t0 = time.perf_counter()
            first: float | None = None
            count = 0
            prompt_tokens = 0
            async for out in llm.generate(PROMPT, params, "raw-0"):
                if out.outputs and out.outputs[0].token_ids:
                    if first is None:
                        first = time.perf_counter() - t0
                    count += len(out.outputs[0].token_ids)
                prompt_tokens = len(out.prompt_token_ids or [])
            total = time.perf_counter() - t0
        finally:
            llm.shutdown()
        assert first is not None
        return {
            "import_s": imported - began,
            "construct_s": ready - imported,
            "start_s": ready - began,
            "ttft_s": first,
            "total_s": total,
            "tokens": count,
            "prompt_tokens": prompt_tokens,
            "tokens_per_s": (count - 1) / (total - first),
        }

    return asyncio.run(main())


# --- the app side ------------------------------------------------------------------------


#: Calls that are not holding the GIL (waits) or that only contain other calls (imports).
IGNORED_CALLS = frozenset(
    {
        "exec",
        "__import__",
        "_call_with_frames_removed",
        "SimpleQueue.get",
        "lock.acquire",
        "poll.poll",
        "sleep",
        "select",
    }
)
#: File-system calls that let go of the GIL for their system call: a long one is
#: a thread waiting to take the GIL back from the one that holds it (the engine
#: start's process watch reading /proc, say), not a cause of the gap.
GIL_RELEASING_IO = frozenset(
    {
        "BufferedReader.read",
        "BufferedReader.__exit__",
        "BufferedReader.close",
        "FileIO.read",
        "open",
        "listdir",
        "scandir",
        "stat",
        "readlink",
    }
)


class CallProfiler:
    """Records C calls that hold a worker thread for long (``--attribute``).

    A C function does not release the GIL unless it says so, so a long one on
    any thread is a gap in the UI thread's loop. Profiling slows start-up, so
    it is off for the figures in the table.
    """

    def __init__(self, threshold_s: float = 0.08) -> None:
        import threading

        self.threshold_s = threshold_s
        self.calls: list[tuple[float, float, str, str]] = []
        self._local = threading.local()

    def install(self) -> None:
        import threading

        threading.setprofile(self._profile)

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        stack: list[tuple[float, Any]] = self._local.__dict__.setdefault("stack", [])
        if event == "c_call":
            stack.append((time.perf_counter(), arg))
        elif event in ("c_return", "c_exception") and stack:
            started, func = stack.pop()
            held = time.perf_counter() - started
            if held >= self.threshold_s:
                where = f"{frame.f_code.co_filename.split('site-packages/')[-1]}:{frame.f_lineno}"
                name = getattr(func, "__qualname__", repr(func))
                self.calls.append((started, held, name, where))


class StallDumper:
    """The Python stacks of every thread 120 ms into a loop gap (``--attribute``).

    faulthandler's watchdog is a C thread: it writes the stacks while another
    thread holds the GIL, which no Python sampler can. Armed at every beat; a
    gap longer than ``after_s`` leaves one dump, read at the beat that ends it.
    """

    def __init__(self, after_s: float = 0.12) -> None:
        import tempfile
        import threading

        self.after_s = after_s
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (open while the bench runs)
        self._read_to = 0
        self.main_ident = threading.main_thread().ident
        #: (time of the beat that ended the gap, the dump)
        self.dumps: dict[float, str] = {}

    def beat(self, now: float) -> None:
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        if size > self._read_to:
            text = os.pread(fd, size - self._read_to, self._read_to).decode(errors="replace")
            self._read_to = size
            self.dumps[now] = text
        faulthandler.dump_traceback_later(self.after_s, file=self._file)

    def stop(self) -> None:
        import faulthandler

        faulthandler.cancel_dump_traceback_later()

    #: Where a waiting thread's stack ends; psutil reads /proc without the GIL.
    IDLE = (
        "threading.py",
        "selectors.py",
        "queue.py",
        "concurrent/futures/thread.py",
        "psutil/_pslinux.py",
        "psutil/_common.py",
    )
    #: Where the UI thread's stack ends while Qt's event loop waits.
    UI_IDLE = ("qasync/__init__.py", "bench_engine.py")

    def busy_stacks(self, text: str, depth: int = 3) -> list[str]:
        """The innermost frames of each thread that was not waiting, the UI thread's too."""
        import re

        out = []
        for block in re.split(r"\n(?=(?:Current thread|Thread) 0x)", text):
            head = re.match(r"(?:Current thread|Thread) (0x[0-9a-f]+)", block.strip())
            if head is None:
                continue
            ui = int(head.group(1), 16) == self.main_ident
            frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', block)
            if not frames or frames[0][0].endswith(self.UI_IDLE if ui else self.IDLE):
                continue
            where = " < ".join(
                f"{func} ({path.split('site-packages/')[-1]}:{line})"
                for path, line, func in frames[:depth]
            )
            out.append(("the UI thread itself: " if ui else "another thread: ") + where)
        return out


def run_app(tokens: int, attribute: bool = False) -> dict[str, Any]:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    sys.path.insert(0, str(REPO))
    from gemma_desktop.ui.loop import create_loop

    config = _engine_config()
    profiler = CallProfiler() if attribute else None
    dumper = StallDumper() if attribute else None
    app = QApplication([])
    loop = create_loop(app)
    beats: list[float] = []
    timer = QTimer()
    timer.setInterval(HEARTBEAT_MS)

    def beat() -> None:
        now = time.perf_counter()
        beats.append(now)
        if dumper is not None:
            dumper.beat(now)

    timer.timeout.connect(beat)

    def gaps_between(start: float, end: float) -> list[float]:
        inside = [start, *[b for b in beats if start <= b <= end], end]
        return sorted((b - a for a, b in itertools.pairwise(inside)), reverse=True)

    async def main() -> dict[str, Any]:
        from gemma_desktop.core.engine.protocol import ChatMessage, SamplingOptions, TextDelta
        from gemma_desktop.core.engine.vllm_local import VllmEngine, preload_vllm

        timer.start()
        await _sleep(0.2)
        if profiler is not None:
            profiler.install()
        began = time.perf_counter()
        preload_vllm("ERROR")
        engine = VllmEngine(config)
        await engine.start()
        ready = time.perf_counter()
        if dumper is not None:
            dumper.stop()
        try:
            await _sleep(0.2)
            t0 = time.perf_counter()
            first: float | None = None
            count = 0
            end = None
            async for item in engine.chat(
                [ChatMessage("user", PROMPT)], SamplingOptions(temperature=0.0, max_tokens=tokens)
            ):
                if isinstance(item, TextDelta):
                    if first is None:
                        first = time.perf_counter() - t0
                    count += item.token_count
                else:
                    end = item
            total = time.perf_counter() - t0
            streamed = time.perf_counter()
        finally:
            await engine.shutdown()
        assert first is not None and end is not None
        from gemma_desktop.core.engine import vllm_local as vllm_engine

        imported = vllm_engine.import_finished_at or began
        start_gaps = gaps_between(began, ready)
        top_gaps = _top_gaps(beats, began, ready)
        attributed = []
        for gap_end, gap in top_gaps:
            gap_start = gap_end - gap
            phase = "import" if gap_end <= imported else "construct"
            holders = sorted(
                {
                    f"{name} @ {where} ({held * 1000:.0f} ms)"
                    for started, held, name, where in (profiler.calls if profiler else [])
                    if started < gap_end
                    and started + held > gap_start
                    and name not in IGNORED_CALLS
                    and name not in GIL_RELEASING_IO
                }
            )
            stacks = dumper.busy_stacks(dumper.dumps.get(gap_end, "")) if dumper else []
            attributed.append(
                {
                    "gap_ms": round(gap * 1000),
                    "at_s": round(gap_start - began, 2),
                    "phase": phase,
                    "long_c_calls": holders[:4],
                    "busy_threads": stacks[:2],
                }
            )
        stream_gaps = gaps_between(t0 + first, streamed)
        return {
            "start_s": ready - began,
            "ttft_s": first,
            "total_s": total,
            "tokens": count,
            "prompt_tokens": end.stats.prompt_tokens,
            "tokens_per_s": (count - 1) / (total - first),
            "finish_reason": end.stats.finish_reason,
            "gap_start_ms": start_gaps[0] * 1000,
            "gaps_start_top_ms": [round(g * 1000) for g in start_gaps[:8]],
            "gaps_start_over_100ms": sum(1 for g in start_gaps if g > 0.1),
            "import_s": imported - began,
            "start_gaps_attributed": attributed,
            "profiled": profiler is not None,
            "gap_stream_ms": stream_gaps[0] * 1000,
            "gaps_stream_top_ms": [round(g * 1000) for g in stream_gaps[:5]],
        }

    with loop:
        return loop.run_until_complete(main())


def _top_gaps(
    beats: list[float], start: float, end: float, n: int = 8
) -> list[tuple[float, float]]:
    """The ``n`` longest gaps as ``(end_time, length)``."""
    inside = [start, *[b for b in beats if start <= b <= end], end]
    pairs = [(b, b - a) for a, b in itertools.pairwise(inside)]
    return sorted(pairs, key=lambda p: p[1], reverse=True)[:n]


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


# --- orchestration -------------------------------------------------------------------------


def _run_child(args: list[str], what: str, **env_overrides: str) -> dict[str, Any]:
    """Run this script with ``args`` in a fresh interpreter; its ``RESULT`` line."""
    env = dict(os.environ, VLLM_LOGGING_LEVEL="ERROR", **env_overrides)
    env.setdefault("GEMMA_DESKTOP_MODELS_DIR", str(REPO / "build" / "models"))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{what} run failed (exit {proc.returncode})")
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def _child(mode: str, tokens: int, attribute: bool = False) -> dict[str, Any]:
    return _run_child(
        [mode, "--tokens", str(tokens)] + (["--attribute"] if attribute else []),
        mode,
        QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"),
    )


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


# --- Gemma 4: the test checkpoints through the app's engine ---------------------------------

GEMMA4_RESULTS = REPO / "bench" / "results" / "gemma4.json"
GEMMA4_CACHE = REPO / "build" / "gemma4"
#: (checkpoint size, text-only mode) pairs measured, each in a fresh process.
GEMMA4_RUNS = (("small", False), ("small", True), ("full", False), ("full", True))
GEMMA4_TTFT_ROUNDS = 3


def _pss_tree_mib() -> dict[str, float]:
    """PSS of this process and every process it started (MiB), by process name."""
    import psutil

    me = psutil.Process()
    per: dict[str, float] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            pss = proc.memory_full_info().pss / 2**20
            name = "main" if proc.pid == me.pid else proc.name()
        except psutil.Error:
            continue
        per[name] = per.get(name, 0.0) + pss
    return {"total": sum(per.values()), **per}


def run_gemma4(size: str, text_only: bool) -> dict[str, Any]:
    """Start the app's engine on the Gemma 4 test checkpoint of ``size`` (the app's CPU
    settings: bf16, 4096 tokens, 512 MiB KV), then time the first token of a text, an
    image and an audio prompt (multimodal mode only)."""
    import asyncio

    sys.path.insert(0, str(REPO))
    from tests.fixtures.gemma4_checkpoint import cached_checkpoint

    checkpoint = cached_checkpoint(size, GEMMA4_CACHE)  # type: ignore[arg-type]
    import numpy as np
    import soundfile
    from PIL import Image

    from gemma_desktop.core.engine.assembly import MachineFacts, local_config
    from gemma_desktop.core.engine.protocol import (
        AudioPart,
        ChatMessage,
        ImagePart,
        SamplingOptions,
        StreamEnd,
        TextDelta,
    )
    from gemma_desktop.core.engine.vllm_local import VllmEngine, preload_vllm
    from gemma_desktop.core.models.catalog import VariantCatalog
    from gemma_desktop.core.settings import load_settings

    media = REPO / "build" / "bench-media"
    media.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(media / "photo.png")
    seconds = np.arange(16000 * 3) / 16000
    soundfile.write(media / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * seconds), 16000)
    env = {"ATOMR_INFER_GEMMA_TEXT_ONLY": "1"} if text_only else {}
    config = local_config(
        load_settings(env=env),
        VariantCatalog().get("google/gemma-4-E2B-it"),
        MachineFacts.cpu(),
        model_path=checkpoint,
    )
    prompts = {"text": ChatMessage("user", "What is this?")}
    if not text_only:
        prompts["image"] = ChatMessage("user", "What is this?", (ImagePart(media / "photo.png"),))
        prompts["audio"] = ChatMessage("user", "What is this?", (AudioPart(media / "tone.wav"),))

    async def main() -> dict[str, Any]:
        began = time.perf_counter()
        preload_vllm("ERROR")
        engine = VllmEngine(config)
        await engine.start()
        start_s = time.perf_counter() - began
        memory = _pss_tree_mib()
        ttft: dict[str, list[float]] = {kind: [] for kind in prompts}
        prompt_tokens: dict[str, int] = {}
        try:
            for _ in range(GEMMA4_TTFT_ROUNDS):
                for kind, message in prompts.items():
                    t0 = time.perf_counter()
                    first = None
                    async for item in engine.chat(
                        [message], SamplingOptions(temperature=0.0, max_tokens=16)
                    ):
                        if first is None and isinstance(item, TextDelta):
                            first = time.perf_counter() - t0
                        if isinstance(item, StreamEnd):
                            prompt_tokens[kind] = item.stats.prompt_tokens
                            first = first or item.stats.time_to_first_token_s
                    ttft[kind].append(first or 0.0)
        finally:
            await engine.shutdown()
        return {
            "size": size,
            "text_only": text_only,
            "checkpoint": checkpoint.name,
            "start_s": start_s,
            "import_s": (vllm_local_import_finished() or began) - began,
            "pss_mib": memory,
            "ttft_ms": {k: 1000 * statistics.median(v) for k, v in ttft.items()},
            "prompt_tokens": prompt_tokens,
        }

    return asyncio.run(main())


def vllm_local_import_finished() -> float | None:
    from gemma_desktop.core.engine import vllm_local

    return vllm_local.import_finished_at


def _gemma4_child(size: str, text_only: bool) -> dict[str, Any]:
    return _run_child(
        ["gemma4", "--size", size] + (["--text-only"] if text_only else []),
        f"gemma4 {size}",
    )


def bench_gemma4(sizes: tuple[str, ...]) -> None:
    """Gemma 4 start time, memory and time to first token; prints a table, writes JSON."""
    runs = []
    for size, text_only in GEMMA4_RUNS:
        if size not in sizes:
            continue
        mode = "text-only" if text_only else "multimodal"
        print(f"gemma 4 {size} checkpoint, {mode}...", file=sys.stderr, flush=True)
        runs.append(_gemma4_child(size, text_only))
    print("\nGemma 4 test checkpoints through the app's engine (CPU build, bf16)")
    print(f"{'checkpoint':<12}{'mode':<12}{'start':>9}{'memory':>10}  first token text/image/audio")
    for run in runs:
        ttft = run["ttft_ms"]
        firsts = " / ".join(f"{ttft[k]:.0f}" for k in ("text", "image", "audio") if k in ttft)
        mode = "text-only" if run["text_only"] else "multimodal"
        memory_gb = run["pss_mib"]["total"] / 1024
        print(
            f"{run['size']:<12}{mode:<12}{run['start_s']:>7.1f} s{memory_gb:>7.2f} GB  {firsts} ms"
        )
    GEMMA4_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "gemma4",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "runs": runs,
    }
    GEMMA4_RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {GEMMA4_RESULTS.relative_to(REPO)}")


# --- the local API against the in-process engine ------------------------------------------

API_RESULTS = REPO / "bench" / "results" / "api.json"
API_ROUNDS = 3
#: The client side, in its own interpreter (as an editor or a script would be).
API_CLIENT = """
import json, sys, time
import openai
url, token, tokens, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
client = openai.OpenAI(base_url=url, api_key=token, max_retries=0)
t0 = time.perf_counter()
first = None
count = 0
stream = client.chat.completions.create(
    model="gemma-local", messages=[{"role": "user", "content": prompt}], temperature=0,
    max_tokens=tokens, stream=True, stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content and first is None:
        first = time.perf_counter() - t0
    if chunk.usage is not None:
        count = chunk.usage.completion_tokens
total = time.perf_counter() - t0
print(json.dumps({"ttft_s": first, "total_s": total, "tokens": count}))
"""


def run_api(tokens: int) -> dict[str, Any]:
    """The app's engine on the bundled model, measured in-process and through the local API
    (the client in another process), alternating; medians of :data:`API_ROUNDS` rounds."""
    import asyncio
    import tempfile

    config = _engine_config()
    from gemma_desktop.core.engine.local_api import LocalApiTokenStore, server_for
    from gemma_desktop.core.engine.protocol import SamplingOptions, StreamEnd
    from gemma_desktop.core.engine.vllm_local import VllmEngine, preload_vllm

    def rate(run: dict[str, Any]) -> float:
        return float((run["tokens"] - 1) / max(run["total_s"] - run["ttft_s"], 1e-9))

    async def in_process(engine: VllmEngine) -> dict[str, Any]:
        from gemma_desktop.core.engine.protocol import ChatMessage

        options = SamplingOptions(temperature=0.0, max_tokens=tokens)
        t0 = time.perf_counter()
        async for item in engine.chat([ChatMessage("user", PROMPT)], options):
            if isinstance(item, StreamEnd):
                stats = item.stats
        total = time.perf_counter() - t0
        return {
            "ttft_s": stats.time_to_first_token_s,
            "total_s": total,
            "tokens": stats.completion_tokens,
        }

    async def through_api(url: str, token: str) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", API_CLIENT, url, token, str(tokens), PROMPT,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return dict(json.loads(out.decode().strip().splitlines()[-1]))

    async def main(folder: Path) -> dict[str, Any]:
        preload_vllm("ERROR")
        engine = VllmEngine(config)
        await engine.start()
        server = server_for(
            engine, "gemma-local", port=0, token_store=LocalApiTokenStore(folder / "token")
        )
        assert server is not None
        await server.start()
        assert server.address is not None and server.token is not None
        runs: dict[str, list[dict[str, Any]]] = {"engine": [], "api": []}
        try:
            await in_process(engine)  # warm-up: the first request of each path is slower
            await through_api(server.address, server.token.value)
            for _ in range(API_ROUNDS):
                runs["engine"].append(await in_process(engine))
                runs["api"].append(await through_api(server.address, server.token.value))
        finally:
            await server.stop()
            await engine.shutdown()
        for side in runs.values():
            for run in side:
                run["tokens_per_s"] = rate(run)
        return runs

    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(main(Path(folder)))


def bench_api(tokens: int) -> None:
    """Tokens/s and TTFT through the local API against the in-process engine; table + JSON."""
    print("local API against the in-process engine...", file=sys.stderr, flush=True)
    runs = _run_child(
        ["api", "--tokens", str(tokens)],
        "api",
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    figures = {
        side: {k: _median(runs[side], k) for k in ("ttft_s", "tokens_per_s", "tokens")}
        for side in ("engine", "api")
    }
    engine, api = figures["engine"], figures["api"]
    ratio = api["tokens_per_s"] / engine["tokens_per_s"]
    overhead_ms = (api["ttft_s"] - engine["ttft_s"]) * 1000
    print(f"\nLocal API: {tokens} greedy tokens, bundled model, {API_ROUNDS} rounds, median")
    print(f"{'':<16}{'in-process':>12}{'through API':>13}")
    print(
        f"{'tokens/s':<16}{engine['tokens_per_s']:>12.1f}{api['tokens_per_s']:>13.1f}"
        f"   ratio {ratio:.3f}"
    )
    print(
        f"{'first token':<16}{engine['ttft_s'] * 1000:>9.0f} ms{api['ttft_s'] * 1000:>10.0f} ms"
        f"   +{overhead_ms:.1f} ms"
    )
    API_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "api",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": "bundled/gemma-3-270m (bf16, CPU)",
        "prompt": PROMPT,
        "tokens": tokens,
        "runs": runs,
        "figures": {**figures, "throughput_ratio": ratio, "ttft_overhead_ms": overhead_ms},
    }
    API_RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {API_RESULTS.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1, help="raw/app pairs to run (median)")
    parser.add_argument(
        "--attribute",
        action="store_true",
        help="also run the app side once with a profiler naming the C calls behind each gap",
    )
    parser.add_argument(
        "--gemma4",
        choices=("all", "small", "none", "only"),
        default="all",
        help="Gemma 4 figures: both checkpoint sizes (all), the small one, none, or only them",
    )
    parser.add_argument(
        "--api",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the local API against the in-process engine (--api-only: nothing else)",
    )
    parser.add_argument("--api-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("raw", "app", "gemma4", "api"), help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=("small", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--text-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "gemma4":
        print("RESULT " + json.dumps(run_gemma4(args.size, args.text_only)), flush=True)
        return 0
    if args.child == "api":
        print("RESULT " + json.dumps(run_api(args.tokens)), flush=True)
        return 0
    if args.api_only:
        bench_api(args.tokens)
        return 0
    gemma4_sizes = {"all": ("small", "full"), "only": ("small", "full"), "small": ("small",)}
    if args.gemma4 == "only":
        bench_gemma4(gemma4_sizes["only"])
        return 0
    if args.child:
        if args.child == "raw":
            result = run_raw(args.tokens)
        else:
            result = run_app(args.tokens, args.attribute)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    raws: list[dict[str, Any]] = []
    apps: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}: raw engine...", file=sys.stderr, flush=True)
        raws.append(_child("raw", args.tokens))
        print(f"round {round_ + 1}/{args.rounds}: app engine...", file=sys.stderr, flush=True)
        apps.append(_child("app", args.tokens))

    attribution = None
    if args.attribute:
        print("attribution run (profiled app engine)...", file=sys.stderr, flush=True)
        attribution = _child("app", args.tokens, attribute=True)["start_gaps_attributed"]

    raw = {k: _median(raws, k) for k in ("start_s", "ttft_s", "tokens_per_s")}
    app = {
        k: _median(apps, k)
        for k in ("start_s", "ttft_s", "tokens_per_s", "gap_start_ms", "gap_stream_ms")
    }
    figures = {
        "throughput_ratio": app["tokens_per_s"] / raw["tokens_per_s"],
        "ttft_overhead_ms": (app["ttft_s"] - raw["ttft_s"]) * 1000,
        "start_ratio": app["start_s"] / raw["start_s"],
        "gap_start_ms": app["gap_start_ms"],
        "gap_stream_ms": app["gap_stream_ms"],
    }
    met = {
        "throughput_ratio": figures["throughput_ratio"] >= TARGETS["throughput_ratio_min"],
        "ttft_overhead_ms": figures["ttft_overhead_ms"] <= TARGETS["ttft_overhead_ms_max"],
        "start_ratio": figures["start_ratio"] <= TARGETS["start_ratio_max"],
        "gap_start_ms": figures["gap_start_ms"] <= TARGETS["gap_start_ms_max"],
        "gap_stream_ms": figures["gap_stream_ms"] <= TARGETS["gap_stream_ms_max"],
    }
    rows = [
        ("tokens/s", f"{raw['tokens_per_s']:.1f}", f"{app['tokens_per_s']:.1f}",
         f"ratio {figures['throughput_ratio']:.3f}", ">= 0.98", met["throughput_ratio"]),
        ("TTFT", f"{raw['ttft_s'] * 1000:.0f} ms", f"{app['ttft_s'] * 1000:.0f} ms",
         f"+{figures['ttft_overhead_ms']:.1f} ms", "<= 10 ms", met["ttft_overhead_ms"]),
        ("engine start", f"{raw['start_s']:.1f} s", f"{app['start_s']:.1f} s",
         f"ratio {figures['start_ratio']:.3f}", "<= 1.1", met["start_ratio"]),
        ("loop gap, starting", "-", f"{app['gap_start_ms']:.0f} ms", "", "<= 100 ms",
         met["gap_start_ms"]),
        ("loop gap, streaming", "-", f"{app['gap_stream_ms']:.0f} ms", "", "<= 33 ms",
         met["gap_stream_ms"]),
    ]  # fmt: skip
    print(f"\nEngine benchmark: {args.tokens} greedy tokens, {args.rounds} round(s), median")
    print(f"{'':<22}{'raw vLLM':>12}{'app path':>12}{'':>16}{'target':>11}  met")
    for name, r, a, d, t, ok in rows:
        print(f"{name:<22}{r:>12}{a:>12}{d:>16}{t:>11}  {'yes' if ok else 'NO'}")
    print(f"vLLM import (in a thread) took {apps[-1]['import_s']:.1f} s of the app's start")
    print("longest gaps while starting:")
    for gap in apps[-1]["start_gaps_attributed"]:
        print(f"  {gap['gap_ms']:>5} ms at {gap['at_s']:>6.2f} s ({gap['phase']})")
    if attribution:
        print("profiled run, C calls in progress and busy threads during each gap:")
        for gap in attribution:
            calls = "; ".join(gap["long_c_calls"]) or "(no long C call that holds the GIL)"
            print(f"  {gap['gap_ms']:>5} ms at {gap['at_s']:>6.2f} s ({gap['phase']}): {calls}")
            for stack in gap.get("busy_threads", []):
                print(f"        120 ms in, {stack}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "engine",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "model": "bundled/gemma-3-270m (bf16, CPU)",
        "prompt": PROMPT,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "raw_runs": raws,
        "app_runs": apps,
        "figures": figures,
        "targets": TARGETS,
        "met": met,
        "attribution": attribution,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    if args.api:
        bench_api(args.tokens)
    if args.gemma4 != "none":
        bench_gemma4(gemma4_sizes[args.gemma4])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
