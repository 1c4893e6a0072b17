"""Chat view figures: rendering cost per token over a long answer, ingest rate, and
event-loop gaps while an answer streams into the real window.

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/bench_view.py [--no-engine]

1. Per-token cost at the start and at the end of a 20 000-token Markdown answer
   (headings, paragraphs, lists, code blocks), refreshing after *every* token
   (the most demanding case; a real stream refreshes at most ~30 times a second).
   CPU time of the UI thread, median over 1 000 tokens.
2. Ingest: tokens/s the view takes while Qt's event loop runs its 30 Hz refresh.
3. Longest event-loop gap (a 5 ms Qt timer heartbeat) while 20 000 tokens stream into
   the real main window at 5 000 tokens/s, while a 1 MB paste lands in the composer,
   and (unless ``--no-engine``) while the real engine on the bundled model streams
   256 tokens into the window.

Prints a table and writes ``bench/results/view.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "view.json"
ANSWER_TOKENS = 20_000
WINDOW = 1_000

SECTION = """## Section {n}

This paragraph explains step {n} with **bold** words, `inline code` and a [link](https://example.com).
It continues on a second line so the paragraph has some length to it.

- first point of section {n}
- second point, with *emphasis*
- third point

```python
def step_{n}(values: list[int]) -> int:
    total = 0
    for value in values:
        total += value * {n}
    return total
```

"""


def answer_tokens(count: int) -> list[str]:
    """Markdown split like a tokenizer would (words with their spacing)."""
    text = "".join(SECTION.format(n=i) for i in range(1, 400))
    tokens = re.findall(r"\s*\S+|\s+", text)
    while len(tokens) < count:
        tokens += tokens
    return tokens[:count]


class Heartbeat:
    """A 5 ms Qt timer; records the longest time between two ticks."""

    def __init__(self, interval_ms: int = 5) -> None:
        from PySide6.QtCore import QTimer

        self.interval = interval_ms / 1000
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last = 0.0
        self.longest = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last:
            self.longest = max(self.longest, now - self.last)
        self.last = now

    def start(self) -> None:
        self.last, self.longest = 0.0, 0.0
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return self.longest * 1000


def per_token_cost(view: Any, tokens: list[str]) -> dict[str, float]:
    """Median CPU ms per token (append + refresh) for the first and last WINDOW tokens."""

    def measure(chunk: list[str]) -> list[float]:
        costs = []
        for token in chunk:
            began = time.thread_time()
            view.append_delta(token)
            view.flush()
            costs.append((time.thread_time() - began) * 1000)
        return costs

    view.begin_answer()
    start = measure(tokens[:WINDOW])
    middle = tokens[WINDOW:-WINDOW]
    for i in range(0, len(middle), 50):  # fast-forward at a realistic refresh rate
        for token in middle[i : i + 50]:
            view.append_delta(token)
        view.flush()
    end = measure(tokens[-WINDOW:])
    view.end_answer()
    return {
        "start_ms_median": statistics.median(start),
        "end_ms_median": statistics.median(end),
        "start_ms_p95": statistics.quantiles(start, n=20)[18],
        "end_ms_p95": statistics.quantiles(end, n=20)[18],
        "end_over_start": statistics.median(end) / statistics.median(start),
        "document_chars": view.document().characterCount(),
    }


async def ingest(view: Any, tokens: list[str]) -> dict[str, float]:
    """Push tokens as fast as the view takes them, with its own 30 Hz refresh running."""
    view.begin_answer()
    began = time.perf_counter()
    for i, token in enumerate(tokens):
        view.append_delta(token)
        if i % 200 == 199:
            await asyncio.sleep(0)  # let the loop run timers, as a real stream does
    view.end_answer()
    elapsed = time.perf_counter() - began
    return {"tokens": len(tokens), "seconds": elapsed, "tokens_per_s": len(tokens) / elapsed}


async def stream_into_window(window: Any, tokens: list[str], rate: float) -> dict[str, float]:
    """Deltas at ``rate`` tokens/s into the real window's chat view; heartbeat gap."""
    view = window.chat.transcript
    window.chat.transcript.add_user_message("Explain every step.")
    beat = Heartbeat()
    beat.start()
    view.begin_answer()
    began = time.perf_counter()
    per_tick = max(1, int(rate / 200))  # deliver every 5 ms
    for i in range(0, len(tokens), per_tick):
        for token in tokens[i : i + per_tick]:
            view.append_delta(token)
        target = began + (i + per_tick) / rate
        await asyncio.sleep(max(0.0, target - time.perf_counter()))
    view.end_answer()
    await asyncio.sleep(0.1)
    gap = beat.stop()
    return {
        "tokens": len(tokens),
        "rate_tokens_per_s": rate,
        "seconds": time.perf_counter() - began,
        "longest_gap_ms": gap,
        "refreshes": view.refresh_count,
    }


async def paste(window: Any) -> dict[str, float]:
    from PySide6.QtCore import QMimeData

    payload = ("lorem ipsum dolor sit amet " * 40 + "\n") * 970
    data = QMimeData()
    data.setText(payload)
    beat = Heartbeat()
    beat.start()
    await asyncio.sleep(0.05)
    began = time.perf_counter()
    window.chat.composer.insertFromMimeData(data)
    took = time.perf_counter() - began
    await asyncio.sleep(0.2)
    gap = beat.stop()
    window.chat.composer.clear()
    return {"bytes": len(payload), "insert_ms": took * 1000, "longest_gap_ms": gap}


async def engine_stream(app: Any) -> dict[str, Any]:
    """The real engine (bundled model) streaming into the real window."""
    from gemma_desktop.core.engine.protocol import EngineState

    began = time.perf_counter()
    await app.host.start()
    start_s = time.perf_counter() - began
    if app.host.status.state is not EngineState.READY:
        return {"skipped": f"engine did not start: {app.host.status.detail}"}
    chat = app.window.chat
    chat.temperature.setValue(0.0)
    chat.max_tokens.setValue(256)
    chat.composer.setPlainText("Once upon a time,")
    beat = Heartbeat()
    beat.start()
    chat.send()
    while chat.streaming:
        await asyncio.sleep(0.05)
    gap = beat.stop()
    stats = chat.last_stats
    await app.host.shutdown()
    return {
        "engine_start_s": start_s,
        "tokens": stats.completion_tokens if stats else 0,
        "tokens_per_s": stats.tokens_per_second if stats else 0.0,
        "time_to_first_token_ms": (stats.time_to_first_token_s or 0) * 1000 if stats else None,
        "longest_gap_ms": gap,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chat view figures.")
    parser.add_argument("--no-engine", action="store_true", help="skip the real-engine stream")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="gd-bench-view-")
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        os.environ[var] = os.path.join(tmp, var.lower())
    os.environ["HF_HOME"] = os.path.join(tmp, "hf")
    os.environ["ATOMR_INFER_GEMMA_AUTO"] = "off"
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    if (REPO / "build" / "models").is_dir():
        os.environ.setdefault("GEMMA_DESKTOP_MODELS_DIR", str(REPO / "build" / "models"))
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PySide6.QtWidgets import QApplication

    from gemma_desktop.app import GemmaDesktopApp
    from gemma_desktop.ui import theme
    from gemma_desktop.ui.chat.transcript import TranscriptView
    from gemma_desktop.ui.loop import create_loop

    qapp = QApplication.instance() or QApplication([sys.argv[0]])
    assert isinstance(qapp, QApplication)
    qapp.setQuitOnLastWindowClosed(False)
    theme.apply_theme(qapp, theme.LIGHT)
    loop = create_loop(qapp)
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="bench"))
    tokens = answer_tokens(ANSWER_TOKENS)
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "answer_tokens": ANSWER_TOKENS,
    }

    view = TranscriptView()
    view.resize(900, 700)
    view.show()
    results["per_token"] = per_token_cost(view, tokens)
    view.clear_transcript()
    results["ingest"] = loop.run_until_complete(ingest(view, tokens))
    view.close()

    app = GemmaDesktopApp(loop=loop, crash_dialogs=False)
    app.window.resize(1280, 820)
    app.window.show()
    results["window_stream"] = loop.run_until_complete(stream_into_window(app.window, tokens, 5000))
    results["paste_1mb"] = loop.run_until_complete(paste(app.window))
    if not args.no_engine:
        app.window.chat.new_chat()
        app.host.set_variant("bundled/gemma-3-270m")
        results["engine_stream"] = loop.run_until_complete(engine_stream(app))
    app.window.close()
    loop.run_until_complete(asyncio.sleep(0.5))
    app.close()

    pt, ing, ws, pa = (
        results["per_token"],
        results["ingest"],
        results["window_stream"],
        results["paste_1mb"],
    )
    rows = [
        ("per-token cost, tokens 1-1000 (median)", f"{pt['start_ms_median']:.3f} ms"),
        ("per-token cost, tokens 19001-20000 (median)", f"{pt['end_ms_median']:.3f} ms"),
        ("end / start", f"{pt['end_over_start']:.2f}x"),
        ("per-token cost p95 start / end", f"{pt['start_ms_p95']:.3f} / {pt['end_ms_p95']:.3f} ms"),
        ("ingest (30 Hz refresh, loop running)", f"{ing['tokens_per_s']:,.0f} tokens/s"),
        (
            "longest loop gap, 20k tokens at 5k tok/s in window",
            f"{ws['longest_gap_ms']:.1f} ms ({ws['refreshes']} refreshes)",
        ),
        (
            "1 MB paste: insert / longest gap",
            f"{pa['insert_ms']:.0f} / {pa['longest_gap_ms']:.0f} ms",
        ),
    ]
    es = results.get("engine_stream")
    if es and "skipped" not in es:
        rows += [
            (
                "real engine -> window: tokens, tok/s",
                f"{es['tokens']}, {es['tokens_per_s']:.1f}",
            ),
            ("real engine -> window: longest loop gap", f"{es['longest_gap_ms']:.1f} ms"),
        ]
    elif es:
        rows.append(("real engine -> window", es["skipped"]))
    width = max(len(name) for name, _ in rows)
    print(f"Chat view ({results['machine']})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
