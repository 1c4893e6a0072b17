"""Render the main window in its key states to PNG files.

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python tools/screenshots.py build/screenshots

States: the hardware check with injected GPU readings (ready) and on this
machine (skipped, with hints), the model picker with fit verdicts, a token
saved in a real Secret Service, a chat mid-stream with a code block (light and
dark), and an engine that failed to start. Everything runs in throw-away
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
        app.window.close()
        deadline = time.monotonic() + 30
        while not app.window.is_closed and time.monotonic() < deadline:
            await self.settle(0.05)
        await app.shutdown()
        app.close()


def gpu_reader() -> list[Any]:
    from gemma_desktop.core.machine.gpu import GpuInfo

    return [GpuInfo(0, "NVIDIA GeForce RTX 4090", 23.99, 22.7, "550.54.15", "12.4", (8, 9))]


async def scene_probe_ready(s: Shooter) -> None:
    """Injected GPU readings and the CUDA build of vLLM."""
    from gemma_desktop.core.machine import probe

    real = probe.vllm_distribution
    probe.vllm_distribution = lambda: ("cuda", "0.11.0")  # type: ignore[assignment]
    try:
        app = s.app(gpu_reader=gpu_reader)
        await app.startup()
        app.window.show_page(1)
        await s.shoot(app.window, "01-probe-ready")
        app.window.show_page(2)
        app.window.picker.select("google/gemma-4-E4B-it")
        await s.shoot(app.window, "02-models-gpu")
        await s.finish(app)
    finally:
        probe.vllm_distribution = real  # type: ignore[assignment]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(REPO / "build" / "screenshots"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gd-shots-") as tmp:
        isolate(Path(tmp))
        shooter = Shooter(Path(args.out))
        for scene in (
            scene_probe_ready,
            scene_probe_skipped,
            scene_token_saved,
            lambda s: scene_chat(s, dark=False),
            lambda s: scene_chat(s, dark=True),
            scene_crashed,
        ):
            shooter.run(scene(shooter))
        shooter.loop.close()
    print(f"{len(shooter.saved)} screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
