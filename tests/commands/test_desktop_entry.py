"""Double-click launch: the desktop entry, its Exec line under Xvfb, start-up errors, the bundle."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from gemma_desktop import __version__
from gemma_desktop.cli import main as cli_main
from gemma_desktop.commands import desktop_entry
from gemma_desktop.launch import platform_notice

REPO = Path(__file__).resolve().parents[2]

needs_validator = pytest.mark.skipif(
    shutil.which("desktop-file-validate") is None,
    reason="desktop-file-validate is not installed (Debian package desktop-file-utils)",
)


def _validate(path: Path) -> None:
    result = subprocess.run(
        ["desktop-file-validate", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def exec_argv(value: str) -> list[str]:
    """Split an ``Exec`` value as a launcher does (Desktop Entry spec, "Exec key")."""
    value = value.replace("\\\\", "\\")  # the string-level escape first
    args: list[str] = []
    current, quoted, escaped, started = "", False, False, False
    for char in value:
        if escaped:
            current += char
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
            started = True
        elif char == " " and not quoted:
            if started or current:
                args.append(current)
            current, started = "", False
        else:
            current += char
    if started or current:
        args.append(current)
    return [a.replace("%%", "%") for a in args if not re.fullmatch(r"%[fFuUick]", a)]


def _entry_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith("["):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@needs_validator
def test_install_and_uninstall_per_user(isolated_dirs: Path, capsys: Any) -> None:
    data_home = isolated_dirs / "data"
    assert cli_main(["install-desktop-entry"]) == 0
    entry = data_home / "applications" / "gemma-desktop.desktop"
    _validate(entry)
    values = _entry_values(entry)
    assert values["Version"] == "1.0" and values["Terminal"] == "false"
    # It starts this virtual environment's GUI script, not whatever is on PATH.
    expected = Path(sys.executable).parent / "gemma-desktop-gui"
    assert exec_argv(values["Exec"]) == [str(expected.absolute())]
    assert values["TryExec"] == str(expected.absolute())
    icons = sorted(p.relative_to(data_home / "icons") for p in (data_home / "icons").rglob("*.*"))
    assert Path("hicolor/scalable/apps/gemma-desktop.svg") in icons
    assert Path("hicolor/48x48/apps/gemma-desktop.png") in icons
    assert values["Icon"] == "gemma-desktop"
    assert "Added Gemma Desktop" in capsys.readouterr().out

    assert cli_main(["uninstall-desktop-entry"]) == 0
    assert not entry.exists()
    assert not list((data_home / "icons").rglob("gemma-desktop.*"))
    assert cli_main(["uninstall-desktop-entry"]) == 0
    assert "had no desktop entry" in capsys.readouterr().out


@needs_validator
def test_exec_quoting_survives_odd_paths(tmp_path: Path) -> None:
    odd = ['/opt/My Apps/gemma $HOME/100% "real"/bin/gemma-desktop-gui', "--flag=a`b\\c"]
    text = desktop_entry.render_entry(odd)
    entry = tmp_path / "odd.desktop"
    entry.write_text(text, encoding="utf-8")
    _validate(entry)
    assert exec_argv(_entry_values(entry)["Exec"]) == odd
    assert desktop_entry.quote_exec_arg("/usr/bin/app") == "/usr/bin/app"


def test_other_platforms_say_what_they_need(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    assert "WSL" in (platform_notice("win32") or "")
    assert "remote" in (platform_notice("darwin") or "")
    assert platform_notice("linux") is None
    monkeypatch.setattr(sys, "platform", "win32")
    assert cli_main(["install-desktop-entry"]) == 1
    err = capsys.readouterr().err
    assert "Linux desktop feature" in err and "WSL" in err


def _wait_window(display: Any, title: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if title in display.windows():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.25)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for child in children:
                child.kill()
            proc.kill()
            proc.wait()


@needs_validator
@pytest.mark.display
def test_launch_through_the_exec_line_under_xvfb(
    xvfb_display: Any, isolated_dirs: Path, tmp_path: Path
) -> None:
    data_home = isolated_dirs / "data"
    assert cli_main(["install-desktop-entry"]) == 0
    entry = data_home / "applications" / "gemma-desktop.desktop"
    argv = exec_argv(_entry_values(entry)["Exec"])
    env = {
        **xvfb_display.env,
        **{k: os.environ[k] for k in os.environ if k.startswith("XDG_") or k == "HF_HOME"},
        "ATOMR_INFER_GEMMA_AUTO": "off",  # no engine: this checks the launch only
    }
    env.pop("QT_QPA_PLATFORM", None)  # as from a desktop session: Qt picks xcb
    # Started from a menu: no terminal, stdin closed.
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_window(xvfb_display, '"Gemma Desktop', proc, timeout=120), (
            f"no Gemma Desktop window (exit code {proc.poll()})"
        )
    finally:
        _stop(proc)
    assert proc.returncode in (0, -signal.SIGINT)


@pytest.mark.display
def test_startup_error_goes_to_a_log_and_a_dialog(
    xvfb_display: Any, isolated_dirs: Path, tmp_path: Path
) -> None:
    env = {**xvfb_display.env, "HF_TOKEN": "hf_secretStartupToken123"}
    env.update({k: os.environ[k] for k in os.environ if k.startswith("XDG_")})
    code = (
        "from gemma_desktop.launch import guarded\n"
        "def broken():\n"
        "    raise RuntimeError('settings exploded hf_secretStartupToken123')\n"
        "raise SystemExit(guarded(broken))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_window(xvfb_display, "Gemma Desktop could not start", proc, timeout=60)
    finally:
        proc.kill()
        proc.wait()
    log = (isolated_dirs / "state" / "gemma-desktop" / "startup.log").read_text(encoding="utf-8")
    assert "RuntimeError: settings exploded" in log
    assert "hf_secretStartupToken123" not in log

    # No display at all: Qt would abort; the launcher says why and exits 1.
    bare = {k: v for k, v in env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=bare,
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 1
    log = (isolated_dirs / "state" / "gemma-desktop" / "startup.log").read_text(encoding="utf-8")
    assert "No graphical display was found" in log


def test_bundle_recipe_builds_a_relocatable_launcher(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            "bash",
            str(REPO / "packaging" / "build_bundle.sh"),
            "--no-deps",
            "--out",
            str(out),
            "--python",
            sys.executable,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WHEEL_PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr
    name = f"gemma-desktop-{__version__}-linux-{os.uname().machine}"
    tarball = out / f"{name}.tar.gz"
    assert tarball.is_file()
    # Unpack somewhere else and remove the build: the bundle must not need it.
    elsewhere = tmp_path / "moved here"
    with tarfile.open(tarball) as archive:
        archive.extractall(elsewhere, filter="tar")
    shutil.rmtree(out)
    bundle = elsewhere / name
    for launcher in ("gemma-desktop", "gemma-desktop-gui", "install-desktop-entry.sh"):
        assert os.access(bundle / launcher, os.X_OK)
    version = subprocess.run(
        [str(bundle / "gemma-desktop"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.strip() == f"gemma-desktop {__version__}"
    home = tmp_path / "share"
    installed = subprocess.run(
        [str(bundle / "install-desktop-entry.sh"), "--data-home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    entry = home / "applications" / "gemma-desktop.desktop"
    assert exec_argv(_entry_values(entry)["Exec"]) == [str(bundle / "gemma-desktop-gui")]
    if shutil.which("desktop-file-validate"):
        _validate(entry)
    assert (home / "icons" / "hicolor" / "scalable" / "apps" / "gemma-desktop.svg").is_file()
