#!/usr/bin/env bash
# Demonstrates `gemma-desktop download` against the fake hub: live progress, a
# dropped connection that resumes, a kill mid-download and a resume that skips
# the finished files. Usage: tests/commands/demo_download.sh  (from the repo root)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
PORT=${PORT:-18931}
WORK=$(mktemp -d)
export HF_HOME="$WORK/hf" XDG_CONFIG_HOME="$WORK/config" XDG_STATE_HOME="$WORK/state"
export HF_ENDPOINT="http://127.0.0.1:$PORT" HF_TOKEN=hf_fakeValidToken0123456789
export PYTHON_KEYRING_BACKEND=keyring.backends.fail.Keyring

# 40 MB repo served at 4 MiB/s; the first shard's connection drops after 6 MB.
$PY -m tests.fixtures.fakehub --port "$PORT" --size-mb 40 --rate-mbps 4 \
    --drop-after 'model-00001*:6000000' --verbose >"$WORK/hub.log" 2>&1 &
HUB=$!
trap 'kill $HUB 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do grep -q READY "$WORK/hub.log" && break; sleep 0.1; done

echo "=== run 1: killed (SIGKILL) after 7 s ==="
$PY -m gemma_desktop download --variant google/gemma-4-E2B-it &
RUN=$!
sleep 7
kill -9 $RUN; wait $RUN 2>/dev/null || echo "run 1 exit status: $? (killed)"
echo "partial files left by run 1: $(find "$HF_HOME" -name '*.incomplete' | wc -l)"

echo; echo "=== run 2: resumes ==="
$PY -m gemma_desktop download --variant google/gemma-4-E2B-it
echo "exit status: $?"
echo "partial files left: $(find "$HF_HOME" -name '*.incomplete' | wc -l)"

echo; echo "=== file transfers the hub saw (GET /resolve) ==="
grep 'GET /google/gemma-4-E2B-it/resolve' "$WORK/hub.log" | sed 's#/google/gemma-4-E2B-it/resolve/[0-9a-f]*/##'

echo; echo "=== run 3: already downloaded ==="
$PY -m gemma_desktop download --variant google/gemma-4-E2B-it
