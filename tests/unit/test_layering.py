"""``gemma_desktop.core`` never imports Qt; the probe never imports torch or vLLM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gemma_desktop.core

CORE = Path(gemma_desktop.core.__file__).parent


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def test_core_modules_do_not_import_qt() -> None:
    modules = sorted(
        f"gemma_desktop.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__"
    )
    assert modules, "no core modules found"
    loaded = _imported_after("\n".join(f"import {m}" for m in modules))
    qt = sorted(m for m in loaded if m.split(".")[0] in {"PySide6", "PyQt5", "PyQt6", "qasync"})
    assert qt == [], f"core imports Qt: {qt}"


def test_core_sources_never_mention_qt_imports() -> None:
    offenders = [
        p.name
        for p in CORE.glob("*.py")
        if any(
            line.strip().startswith(("import PySide6", "from PySide6", "import qasync"))
            for line in p.read_text(encoding="utf-8").splitlines()
        )
    ]
    assert offenders == []


def test_probe_does_not_import_torch_or_vllm() -> None:
    loaded = _imported_after(
        "from gemma_desktop.core.probe import run_probe\n"
        "from gemma_desktop.core.settings import load_settings\n"
        "run_probe(load_settings())"
    )
    assert not {m for m in loaded if m.split(".")[0] in {"torch", "vllm", "transformers"}}
