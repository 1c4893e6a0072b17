"""Render the main window in its key states to PNG files.

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python tools/screenshots.py build/screenshots

States: the hardware check and the Model page with injected GPU readings (a 12 GB,
a 24 GB and a two-GPU machine: which card, the memory estimate and the verdicts)
and on this machine (skipped, with hints), a token
saved in a real Secret Service, a chat mid-stream with a code block (light and
dark), an engine that failed to start, and (light and dark, on the small Gemma 4
test checkpoint so the window shows a model that takes images, audio and
thinking) a transcript with an image, the composer with an image and an audio
chip, the thinking block closed and open, and a recording in progress. Everything runs in throw-away
config/data/state directories; the user's own settings and keyring are never
touched.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
T = TypeVar("T")

STREAM_USER = "Write a Python function that returns the n-th Fibonacci number, and explain it."
STREAM_ANSWER = """## Fibonacci in Python

Here is an **iterative** version; it runs in linear time and constant memory:

```python
def fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
```

How it works:

1. `a` and `b` hold two consecutive numbers of the sequence.
2. Each step moves the pair one position forward.
3. After `n` steps, `a` is the n-th number, so
"""


def isolate(root: Path) -> None:
    """Point every directory the app writes at ``root`` and keep the real keyring out."""
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(root / sub)
    os.environ["HF_HOME"] = str(root / "hf")
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "ATOMR_INFER_GEMMA_MODEL"):
        os.environ.pop(name, None)
    os.environ["ATOMR_INFER_GEMMA_AUTO"] = "off"
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    models = REPO / "build" / "models"
    if models.is_dir():
        os.environ.setdefault("GEMMA_DESKTOP_MODELS_DIR", str(models))


class Shooter:
    """Builds an app per scene and saves window grabs."""

    def __init__(self, out: Path) -> None:
        from PySide6.QtWidgets import QApplication

        from gemma_desktop.ui import theme
        from gemma_desktop.ui.loop import create_loop

        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.qapp = QApplication.instance() or QApplication([sys.argv[0]])
        assert isinstance(self.qapp, QApplication)
        self.qapp.setQuitOnLastWindowClosed(False)
        theme.apply_theme(self.qapp, theme.LIGHT)
        self.loop = create_loop(self.qapp)
        self.loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="screenshots"))
        self.saved: list[Path] = []

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    async def settle(self, seconds: float = 0.3) -> None:
        # The loop processes Qt's events while it sleeps; calling processEvents()
        # from inside a task would re-enter other tasks.
        await asyncio.sleep(seconds)

    def app(self, **kwargs: Any) -> Any:
        from gemma_desktop.app import GemmaDesktopApp

        app = GemmaDesktopApp(loop=self.loop, crash_dialogs=False, **kwargs)
        app.window.resize(1280, 820)
        app.window.show()
        return app

    async def shoot(self, widget: Any, name: str) -> None:
        await self.settle()
        path = self.out / f"{name}.png"
        widget.grab().save(str(path))
        self.saved.append(path)
        print(f"wrote {path}")

    async def finish(self, app: Any) -> None:
        # The app's one way out: its quitter stops each service, then closes the window.
        app.quitter.request()
        deadline = time.monotonic() + 60
        while not (app.quitter.done and app.window.is_closed) and time.monotonic() < deadline:
            await self.settle(0.05)
        app.close()


def gpu_machines() -> dict[str, list[Any]]:
    """Real cards' NVML figures (tests/fixtures/nvml.py): an 8 GB, a 12 GB, a 24 GB and a
    two-GPU machine whose emptier card is the second."""
    from tests.fixtures.nvml import RTX_3060, RTX_3060_TI, RTX_4090

    return {
        "8gb": [RTX_3060_TI],
        "12gb": [RTX_3060],
        "24gb": [RTX_4090],
        "two-gpus": [
            RTX_3060.with_used(9_500),
            RTX_4090.at_bus(0x41, "GPU-c1f0d9e4-5b7a-4e62-a1d3-9f8e20b1abcd"),
        ],
    }


async def scene_gpu_machine(s: Shooter, name: str, number: int) -> None:
    """The hardware check and the Model page with injected GPU readings (the NVML stand-in)
    and the CUDA build of vLLM: which card, and the memory estimate per variant."""
    from gemma_desktop.core.machine import probe
    from gemma_desktop.core.machine.gpu import NvmlReader
    from tests.fixtures.nvml import FakeNvml

    cards = gpu_machines()[name]
    real = probe.vllm_distribution
    probe.vllm_distribution = lambda: ("cuda", "0.32.0")  # type: ignore[assignment]
    # A token in the environment, so the probe's outcome is about the hardware.
    os.environ["HF_TOKEN"] = "hf_" + "screenshotPlaceholder0123456789"
    try:
        app = s.app(gpu_reader=NvmlReader(FakeNvml(cards)).read)
        await app.startup()
        app.window.show_page(1)
        await s.shoot(app.window, f"{number:02d}-probe-{name}")
        app.window.show_page(2)
        app.window.picker.select("google/gemma-4-E4B-it")
        await s.shoot(app.window, f"{number + 1:02d}-models-{name}")
        await s.finish(app)
    finally:
        probe.vllm_distribution = real  # type: ignore[assignment]
        os.environ.pop("HF_TOKEN", None)


async def scene_probe_skipped(s: Shooter) -> None:
    """This machine as it is: usually no NVIDIA GPU."""
    app = s.app()
    await app.startup()
    app.window.show_page(1)
    await s.shoot(app.window, "03-probe-skipped")
    app.window.show_page(2)
    await s.shoot(app.window, "04-models-this-machine")
    await s.finish(app)


async def scene_token_saved(s: Shooter) -> None:
    """A token verified against a loopback hub and saved in a real Secret Service."""
    from tests.fixtures.fakehub import VALID_TOKEN, RunningHub, default_hub
    from tests.fixtures.keyring import secret_service_available, start_secret_service

    service = start_secret_service() if secret_service_available() else None
    import keyring

    if service is not None:
        from keyring.backends import SecretService

        os.environ.update(service.env)
        keyring.set_keyring(SecretService.Keyring())
    try:
        with RunningHub(default_hub(size_mb=0.1)) as hub:
            os.environ["HF_ENDPOINT"] = hub.url
            app = s.app()
            await app.startup()
            app.window.show_page(3)
            app.window.token_panel.field.setText(VALID_TOKEN)
            await app.window.token_panel.save()
            if service is None:  # no Secret Service: show the explicit choice instead
                await s.shoot(app.window, "05-token-no-keyring")
            else:
                await s.shoot(app.window, "05-token-saved")
            await s.finish(app)
            os.environ.pop("HF_ENDPOINT", None)
    finally:
        import keyring.backends.fail

        keyring.set_keyring(keyring.backends.fail.Keyring())
        if service is not None:
            service.stop()


async def scene_chat(s: Shooter, dark: bool) -> None:
    """A chat mid-stream: the view's public slots receive the answer's text deltas."""
    import re

    from gemma_desktop.core.engine.protocol import EngineState, EngineStatus
    from gemma_desktop.ui import theme

    theme.apply_theme(s.qapp, theme.DARK if dark else theme.LIGHT)
    app = s.app()
    app.host.set_variant("bundled/gemma-3-270m")
    chat = app.window.chat
    chat.transcript.apply_colors()
    chat.system_prompt.setPlainText("You are a concise programming assistant.")
    chat.transcript.add_user_message("What is vLLM?")
    chat.transcript.add_assistant_message(
        "vLLM is an open-source **inference engine** for large language models. It keeps "
        "the attention cache in pages (*PagedAttention*), so many requests share the GPU."
    )
    chat.transcript.add_notice("first token 68 ms · 22.4 tok/s · 41 tokens · finished")
    chat.transcript.add_user_message(STREAM_USER)
    chat.transcript.begin_answer()
    for piece in re.findall(r"\S+\s*|\s+", STREAM_ANSWER):
        chat.transcript.append_delta(piece)
    chat.transcript.flush()
    chat.stats_label.setText("first token 71 ms · 21.8 tok/s · 96 tokens")
    chat.stop_button.setEnabled(True)
    chat.composer.setPlainText("Now make it recursive with memoisation")
    app.window.indicator.show_status(
        EngineStatus(EngineState.GENERATING, "", "bundled/gemma-3-270m")
    )
    await s.shoot(app.window, "07-chat-streaming-dark" if dark else "06-chat-streaming")
    chat.transcript.end_answer()
    await s.finish(app)
    theme.apply_theme(s.qapp, theme.LIGHT)


async def scene_crashed(s: Shooter) -> None:
    """An engine whose model folder is missing: the real start-up failure path."""
    from gemma_desktop.core.engine.assembly import MachineFacts, local_config
    from gemma_desktop.core.engine.vllm_local import VllmEngine
    from gemma_desktop.core.settings import load_settings

    async def broken_factory(variant_id: str, progress: Callable[..., None]) -> Any:
        from gemma_desktop.core.models.catalog import VariantCatalog

        missing = Path(tempfile.mkdtemp()) / "gemma-3-270m"
        return VllmEngine(
            local_config(
                load_settings(), VariantCatalog().bundled, MachineFacts.cpu(), model_path=missing
            )
        )

    app = s.app(engine_factory=broken_factory)
    app.host.set_variant("bundled/gemma-3-270m")
    app.window.chat.transcript.add_user_message("Once upon a time,")
    await app.host.start()
    await s.shoot(app.window, "08-engine-crashed")
    await s.finish(app)


MEDIA_QUESTION = "What does this chart show? Keep it short."
MEDIA_THINKING = (
    "The picture is a bar chart with four bars, labelled Q1 to Q4. The bars grow from "
    "left to right; Q4 is the tallest, about twice Q1. The user wants a short answer, "
    "so one sentence about the trend and one about the largest quarter."
)
MEDIA_ANSWER = "Sales grow every quarter: **Q4 is the strongest**, at about twice the level of Q1."
SPOKEN_QUESTION = "And how does that compare with last year?"
SPOKEN_THINKING = (
    "The user asked by voice how this compares with last year. The chart shows only "
    "one year, so I cannot compare it directly; I should say so and"
)


def media_files(folder: Path) -> tuple[Path, Path]:
    """A bar chart picture and a 4-second clip, made here (no network, no user files)."""
    import numpy as np
    import soundfile
    from PIL import Image, ImageDraw, ImageFont

    chart = folder / "sales-chart.png"
    image = Image.new("RGB", (640, 420), "#ffffff")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 22)
    except OSError:
        font = ImageFont.load_default()
    draw.text((24, 16), "Sales by quarter", fill="#1d2026", font=font)
    for n, height in enumerate((120, 170, 205, 250)):
        x = 80 + n * 130
        draw.rectangle((x, 360 - height, x + 80, 360), fill=("#3b6fe0", "#4f8cff")[n % 2])
        draw.text((x + 22, 370), f"Q{n + 1}", fill="#5f6673", font=font)
    draw.line((60, 360, 600, 360), fill="#5f6673", width=2)
    image.save(chart)
    clip = folder / "question.wav"
    t = np.arange(16_000 * 4) / 16_000
    voice = 0.2 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    soundfile.write(str(clip), voice.astype(np.float32), 16_000)
    return chart, clip


async def gemma4_engine(s: Shooter) -> Any:
    """The small Gemma 4 test checkpoint on vLLM's CPU build, so the window shows the
    controls a model that takes images, audio and thinking gets (``None`` if it cannot
    start here; the scenes then show them switched off)."""
    import dataclasses

    from gemma_desktop.core.engine.assembly import MachineFacts, local_config
    from gemma_desktop.core.engine.vllm_local import VllmEngine
    from gemma_desktop.core.models.catalog import VariantCatalog
    from gemma_desktop.core.settings import load_settings
    from tests.fixtures.gemma4_checkpoint import cached_checkpoint

    if getattr(s, "gemma4", None) is not None:
        return s.gemma4
    try:
        checkpoint = cached_checkpoint("small", REPO / "build" / "gemma4")
        config = local_config(
            load_settings(),
            VariantCatalog().get("google/gemma-4-E2B-it"),
            MachineFacts.cpu(),
            model_path=checkpoint,
            dtype="float32",
        )
        config = dataclasses.replace(
            config, max_model_len=2048, kv_cache_memory_bytes=256 * 1024**2
        )
        engine = VllmEngine(config)
        await engine.start()
    except Exception as exc:  # the scenes still render, with the controls off
        print(f"no Gemma 4 engine for the screenshots: {exc}")
        return None
    s.gemma4 = engine  # type: ignore[attr-defined]
    return engine


async def media_app(s: Shooter, dark: bool) -> Any:
    from gemma_desktop.core.chat.attachments import prepare_file
    from gemma_desktop.ui import theme

    theme.apply_theme(s.qapp, theme.DARK if dark else theme.LIGHT)
    app = s.app()
    engine = await gemma4_engine(s)
    if engine is not None:
        app.host.adopt(engine)
    chat = app.window.chat
    chat.transcript.apply_colors()
    folder = Path(tempfile.mkdtemp(prefix="gd-media-"))
    chart, clip = media_files(folder)
    store = chat.attachment_store
    assert store is not None
    app.media = (  # type: ignore[attr-defined]
        store.put(prepare_file(chart)),
        store.put(prepare_file(clip)),
    )
    return app


async def scene_media(s: Shooter, dark: bool) -> None:
    """A transcript with an image, its answer's thinking closed and the next one's thinking
    streaming (open), and the composer with an image and an audio chip."""
    from gemma_desktop.ui.chat.attachments import CHIP_THUMB, load_thumbnail

    app = await media_app(s, dark)
    chat = app.window.chat
    picture, clip = app.media
    chat.transcript.add_user_message(MEDIA_QUESTION, [picture])
    chat.transcript.add_assistant_message(MEDIA_ANSWER, MEDIA_THINKING, thinking_s=2.4)
    chat.transcript.add_notice("first token 61 ms · 19.8 tok/s · 86 tokens · finished")
    chat.transcript.add_user_message("", [clip])
    chat.transcript.begin_answer()
    chat.transcript.append_thinking(SPOKEN_THINKING, 40)
    chat.transcript.flush()
    chat.think_toggle.setChecked(True)
    chat.tray.add(picture, load_thumbnail(picture.path, CHIP_THUMB))
    chat.tray.add(clip)
    chat.composer.setPlainText("Compare both quarters' growth")
    name = "10-chat-attachments-dark" if dark else "09-chat-attachments"
    await s.shoot(app.window, name)
    # The thinking block closed (the answer began) and opened again by its header.
    chat.transcript.append_delta("This chart shows one year only, so there is no")
    chat.transcript.flush()
    await s.shoot(app.window, f"{'12' if dark else '11'}-thinking-closed{'-dark' if dark else ''}")
    block = chat.transcript.thinking_blocks[-1]
    chat.transcript.toggle_thinking(block.id)
    await s.settle(0.1)
    bar = chat.transcript.verticalScrollBar()
    bar.setValue(bar.maximum())  # the answer below the opened thinking stays in view
    await s.shoot(app.window, f"{'14' if dark else '13'}-thinking-open{'-dark' if dark else ''}")
    chat.transcript.end_answer()
    await s.finish(app)
    from gemma_desktop.ui import theme

    theme.apply_theme(s.qapp, theme.LIGHT)


async def scene_recording(s: Shooter, dark: bool) -> None:
    """A question being recorded: level meter, time against the 30 s limit, Stop, Cancel."""
    from gemma_desktop.ui import theme

    app = await media_app(s, dark)
    chat = app.window.chat
    picture, _clip = app.media
    chat.transcript.add_user_message(MEDIA_QUESTION, [picture])
    chat.transcript.add_assistant_message(MEDIA_ANSWER, MEDIA_THINKING, thinking_s=2.4)
    bar = chat.recorder_bar
    # What the bar shows 7 s into a recording (its timer would poll a live microphone).
    bar.setVisible(True)
    bar.level.setValue(64)
    bar.time_label.setText("0:07 / 0:30")
    chat.record_button.setEnabled(False)
    await s.shoot(app.window, "16-recording-dark" if dark else "15-recording")
    bar.setVisible(False)
    await s.finish(app)
    theme.apply_theme(s.qapp, theme.LIGHT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(REPO / "build" / "screenshots"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gd-shots-") as tmp:
        isolate(Path(tmp))
        shooter = Shooter(Path(args.out))
        for scene in (
            lambda s: scene_gpu_machine(s, "8gb", 1),
            lambda s: scene_gpu_machine(s, "12gb", 1),
            lambda s: scene_gpu_machine(s, "24gb", 1),
            lambda s: scene_gpu_machine(s, "two-gpus", 1),
            scene_probe_skipped,
            scene_token_saved,
            lambda s: scene_chat(s, dark=False),
            lambda s: scene_chat(s, dark=True),
            scene_crashed,
            lambda s: scene_media(s, dark=False),
            lambda s: scene_media(s, dark=True),
            lambda s: scene_recording(s, dark=False),
            lambda s: scene_recording(s, dark=True),
        ):
            shooter.run(scene(shooter))
        engine = getattr(shooter, "gemma4", None)
        if engine is not None:
            shooter.run(engine.shutdown())
        shooter.loop.close()
    print(f"{len(shooter.saved)} screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
