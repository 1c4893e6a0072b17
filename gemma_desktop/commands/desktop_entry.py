"""``gemma-desktop install-desktop-entry`` and ``uninstall-desktop-entry``.

Installs, for the current user, a freedesktop ``.desktop`` file
(``$XDG_DATA_HOME/applications/gemma-desktop.desktop``) and the app icon in
the ``hicolor`` theme (scalable SVG plus PNG sizes), so Gemma Desktop appears
in the desktop's application menu and starts with a click, without a
terminal. The ``Exec`` line runs the ``gemma-desktop-gui`` script of the
virtual environment this command runs from (``sys.executable``'s ``bin``),
so the menu entry always starts this installation.

The files are written directly (the XDG base directory layout that
``xdg-desktop-menu install --mode user`` and ``xdg-icon-resource`` use);
the menu and icon caches are refreshed when their tools are installed.
Desktop entries are a Linux (freedesktop) feature: on Windows and macOS the
command explains what to do instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gemma_desktop import APP_ID, APP_NAME
from gemma_desktop.core.fsutil import atomic_copy, atomic_write
from gemma_desktop.core.paths import ICONS_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "packaging" / f"{APP_ID}.desktop.in"
ICON_SET = REPO_ROOT / "packaging" / "icons" / "hicolor"
ICON_SOURCE = ICONS_DIR / "app.svg"
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
#: Characters that make an ``Exec`` argument need quotes (Desktop Entry spec, "Exec key").
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")

EXIT_OK, EXIT_ERROR = 0, 1

FALLBACK_TEMPLATE = """[Desktop Entry]
Version=1.0
Type=Application
Name=Gemma Desktop
GenericName=Local AI Chat
Comment=Chat with Google's Gemma models on your own computer
Exec=@EXEC@
TryExec=@TRYEXEC@
Icon=gemma-desktop
Terminal=false
Categories=Utility;
Keywords=AI;LLM;Gemma;chat;vLLM;
StartupNotify=true
StartupWMClass=gemma-desktop
"""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--data-home",
        type=Path,
        default=None,
        help="install under this data directory instead of $XDG_DATA_HOME (~/.local/share)",
    )
    if command == "install-desktop-entry":
        parser.add_argument(
            "--exec",
            dest="exec_path",
            type=Path,
            default=None,
            help="the program the entry starts (default: gemma-desktop-gui of this environment)",
        )
        parser.add_argument(
            "--print",
            dest="print_only",
            action="store_true",
            help="print the desktop file instead of installing it",
        )


def data_home(override: Path | None = None) -> Path:
    if override is not None:
        return override.expanduser()
    value = os.environ.get("XDG_DATA_HOME", "").strip()
    return Path(value) if value else Path.home() / ".local" / "share"


def desktop_file_path(home: Path) -> Path:
    return home / "applications" / f"{APP_ID}.desktop"


def gui_program(python: str | None = None) -> list[str]:
    """How to start the GUI of the environment ``python`` belongs to.

    The ``gemma-desktop-gui`` script beside the interpreter (not resolving the
    venv's symlink, which would leave the venv), else ``python -m gemma_desktop``.
    """
    interpreter = Path(python or sys.executable)
    suffix = ".exe" if sys.platform == "win32" else ""
    script = interpreter.parent / f"{APP_ID}-gui{suffix}"
    if script.is_file():
        return [str(script.absolute())]
    return [str(interpreter.absolute()), "-m", "gemma_desktop", "gui"]


def quote_exec_arg(arg: str) -> str:
    """One ``Exec`` argument, quoted and escaped as the Desktop Entry spec requires."""
    arg = arg.replace("%", "%%")
    if arg and not _RESERVED.intersection(arg):
        quoted = arg
    else:
        inner = "".join("\\" + c if c in '"`$\\' else c for c in arg)
        quoted = f'"{inner}"'
    # The value is also a "string": backslashes are escaped once more.
    return quoted.replace("\\", "\\\\")


def render_entry(program: list[str], template: str | None = None) -> str:
    """The desktop file for ``program`` (argv), from the packaging template."""
    if template is None:
        template = TEMPLATE.read_text(encoding="utf-8") if TEMPLATE.is_file() else FALLBACK_TEMPLATE
    exec_line = " ".join(quote_exec_arg(a) for a in program)
    try_exec = program[0].replace("\\", "\\\\")
    return template.replace("@EXEC@", exec_line).replace("@TRYEXEC@", try_exec)


def icon_files() -> list[tuple[str, Path]]:
    """``(theme subfolder, file)`` pairs of the icon set: ``scalable`` and ``NxN`` PNGs."""
    found: list[tuple[str, Path]] = []
    if ICON_SET.is_dir():
        for path in sorted(ICON_SET.glob(f"*/apps/{APP_ID}.*")):
            found.append((path.parent.parent.name, path))
    elif ICON_SOURCE.is_file():
        found.append(("scalable", ICON_SOURCE))
    return found


def installed_icon_paths(home: Path) -> list[Path]:
    root = home / "icons" / "hicolor"
    return sorted(root.glob(f"*/apps/{APP_ID}.*")) if root.is_dir() else []


def install(home: Path, program: list[str]) -> list[Path]:
    """Write the desktop file and icons under ``home``; returns what was written."""
    written: list[Path] = []
    for size_dir, source in icon_files():
        target = home / "icons" / "hicolor" / size_dir / "apps" / f"{APP_ID}{source.suffix}"
        atomic_copy(source, target)
        written.append(target)
    entry = desktop_file_path(home)
    atomic_write(entry, render_entry(program))
    entry.chmod(0o755)  # some desktops only trust executable launchers on the desktop
    written.append(entry)
    _refresh_caches(home)
    return written


def uninstall(home: Path) -> list[Path]:
    """Remove the desktop file and icons from ``home``; returns what was removed."""
    removed: list[Path] = []
    for path in [desktop_file_path(home), *installed_icon_paths(home)]:
        if path.exists():
            path.unlink()
            removed.append(path)
    _refresh_caches(home)
    return removed


def _refresh_caches(home: Path) -> None:
    """Best effort: desktops also notice the files without these."""
    for tool, args in (
        ("update-desktop-database", ["-q", str(home / "applications")]),
        ("gtk-update-icon-cache", ["-q", "-t", "-f", str(home / "icons" / "hicolor")]),
    ):
        exe = shutil.which(tool)
        if exe is not None and (home / args[-1]).exists():
            subprocess.run([exe, *args], check=False, capture_output=True, timeout=30)


def _not_linux_message() -> str:
    from gemma_desktop.launch import platform_notice

    notice = platform_notice() or ""
    where = "the Start menu" if sys.platform == "win32" else "the Dock"
    return (
        f"Desktop entries are a Linux desktop feature; {APP_NAME} does not add itself to "
        f"{where}. {notice}"
    )


def run(args: argparse.Namespace) -> int:
    if not sys.platform.startswith("linux"):
        print(_not_linux_message(), file=sys.stderr)
        return EXIT_ERROR
    home = data_home(args.data_home)
    if args.command == "uninstall-desktop-entry":
        removed = uninstall(home)
        if removed:
            print(f"Removed {APP_NAME} from the application menu:")
            for path in removed:
                print(f"  {path}")
        else:
            print(f"{APP_NAME} had no desktop entry under {home}.")
        return EXIT_OK
    program = [str(args.exec_path.absolute())] if args.exec_path else gui_program()
    if args.print_only:
        print(render_entry(program), end="")
        return EXIT_OK
    if not Path(program[0]).is_file():
        print(
            f"{program[0]} does not exist: install Gemma Desktop into this environment first "
            "(pip install -e . or make run).",
            file=sys.stderr,
        )
        return EXIT_ERROR
    written = install(home, program)
    print(f"Added {APP_NAME} to the application menu. It starts: {' '.join(program)}")
    for path in written:
        print(f"  {path}")
    if not any(p.suffix == ".png" or p.suffix == ".svg" for p in written):
        print("  (no icon found: the entry uses the theme's default icon)")
    print(f"Remove it with: {APP_ID} uninstall-desktop-entry")
    return EXIT_OK
