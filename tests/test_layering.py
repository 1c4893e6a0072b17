"""The house's rules: ``gemma_desktop.core`` never imports Qt, no arrow runs back up
(core and ui never import the wiring above them), and the probe never imports torch or vLLM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gemma_desktop.core

CORE = Path(gemma_desktop.core.__file__).parent
PACKAGE = CORE.parent
#: The layers, top to bottom: a module may import from its own layer and the ones below.
WIRING = {
    "gemma_desktop.app",
    "gemma_desktop.launch",
    "gemma_desktop.cli",
    "gemma_desktop.commands",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``import x`` and ``from x import y``), lazy ones included."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def test_core_modules_do_not_import_qt() -> None:
    modules = sorted(_module_name(p) for p in CORE.rglob("*.py"))
    assert modules, "no core modules found"
    loaded = _imported_after("\n".join(f"import {m}" for m in modules))
    qt = sorted(m for m in loaded if m.split(".")[0] in {"PySide6", "PyQt5", "PyQt6", "qasync"})
    assert qt == [], f"core imports Qt: {qt}"


def test_core_sources_never_mention_qt_imports() -> None:
    offenders = [
        p.name
        for p in CORE.rglob("*.py")
        if any(
            line.strip().startswith(("import PySide6", "from PySide6", "import qasync"))
            for line in p.read_text(encoding="utf-8").splitlines()
        )
    ]
    assert offenders == []


def test_probe_does_not_import_torch_or_vllm() -> None:
    loaded = _imported_after(
        "from gemma_desktop.core.machine.probe import run_probe\n"
        "from gemma_desktop.core.settings import load_settings\n"
        "run_probe(load_settings())"
    )
    assert not {m for m in loaded if m.split(".")[0] in {"torch", "vllm", "transformers"}}


def test_no_arrow_runs_back_up() -> None:
    """core and ui never import the wiring (app, launch, cli, commands); core never imports ui."""
    offenders = []
    for layer in ("core", "ui"):
        for path in (PACKAGE / layer).rglob("*.py"):
            for name in _imports(path):
                upward = any(name == w or name.startswith(w + ".") for w in WIRING)
                if upward or (layer == "core" and name.startswith("gemma_desktop.ui")):
                    offenders.append(f"{_module_name(path)} imports {name}")
    assert offenders == []
