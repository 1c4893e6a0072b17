"""The Gemma 4 adjustments in vllm_compat: each needed (shown with it off), each guarded by
version, and vLLM's Gemma 4 reasoning parser reached through the fence.

That audio kills the engine without ``gemma4-audio`` is shown on a real engine in
test_gemma4_local.py; here, the hook it installs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_desktop.core.engine import vllm_compat

LOAD_PROCESSOR = (
    "import sys\n"
    "from gemma_desktop.core.engine import vllm_compat\n"
    "print(vllm_compat.apply_engine_process_adjustments())\n"
    "from transformers import AutoProcessor\n"
    "processor = AutoProcessor.from_pretrained(sys.argv[1])\n"
    "print(type(processor).__name__, type(processor.image_processor).__name__)\n"
)


def run_fresh(code: str, *args: str, off: str = "") -> subprocess.CompletedProcess[str]:
    """``code`` in a new interpreter (nothing applied yet), adjustments in ``off`` left out."""
    env = dict(os.environ, **{vllm_compat.ADJUSTMENTS_OFF_ENV: off})
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_gemma4s_processor_loads_without_torchvision_only_with_the_adjustment(
    gemma4_checkpoint: Path,
) -> None:
    import importlib.util

    assert importlib.util.find_spec("torchvision") is None, "the CPU build has no torchvision"
    with_it = run_fresh(LOAD_PROCESSOR, str(gemma4_checkpoint))
    assert with_it.returncode == 0, with_it.stderr[-2000:]
    assert "Gemma4Processor Gemma4ImageProcessorPil" in with_it.stdout
    without = run_fresh(LOAD_PROCESSOR, str(gemma4_checkpoint), off="gemma4-processor")
    assert without.returncode != 0
    assert "torchvision" in without.stderr


def test_the_audio_adjustment_hands_linear_end_a_contiguous_tensor() -> None:
    """transformers' audio block feeds ``linear_end`` a transposed tensor; with the
    adjustment (applied in this process by now) the layer sees a contiguous one."""
    import torch
    from transformers.models.gemma4 import modeling_gemma4
    from transformers.models.gemma4.configuration_gemma4 import Gemma4AudioConfig

    assert vllm_compat.gemma4_audio_contiguous_input()
    config = Gemma4AudioConfig(hidden_size=32, num_attention_heads=2)
    block = modeling_gemma4.Gemma4AudioLightConv1d(config)
    seen: list[bool] = []
    block.linear_end.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous())
    )
    with torch.no_grad():
        block(torch.randn(1, 12, 32))
    assert seen == [True]
    # and without the hook the input is not contiguous: what vLLM's CPU kernel refuses
    hooks = block.linear_end._forward_pre_hooks
    ours = [k for k, h in hooks.items() if h is vllm_compat._contiguous_input]
    assert ours
    for key in ours:
        del hooks[key]
    seen.clear()
    with torch.no_grad():
        block(torch.randn(1, 12, 32))
    assert seen == [False]


def test_the_adjustments_are_guarded_by_version(monkeypatch: pytest.MonkeyPatch) -> None:
    # as in a process where nothing was applied yet
    monkeypatch.setattr(vllm_compat, "_applied", set())
    monkeypatch.setattr(vllm_compat, "installed_version", lambda: "0.33.0")
    assert vllm_compat.apply_engine_process_adjustments() == dict.fromkeys(
        vllm_compat.ADJUSTMENTS, False
    )
    with pytest.raises(vllm_compat.UnsupportedVllmError):
        vllm_compat.gemma4_reasoning_parser(None, thinking=True)
    monkeypatch.undo()
    monkeypatch.setattr(vllm_compat, "_applied", set())
    monkeypatch.setattr(vllm_compat, "transformers_line", lambda: (5, 20))
    applied = vllm_compat.apply_engine_process_adjustments()
    assert not applied["gemma4-processor"] and not applied["gemma4-audio"]
    assert vllm_compat._applied <= {"audio-resampler"}  # vLLM's own, not transformers'


RESAMPLE_44K = (
    "import numpy as np\n"
    "from gemma_desktop.core.engine import vllm_compat\n"
    "print(vllm_compat.apply_engine_process_adjustments())\n"
    "from vllm.multimodal.parse import MultiModalDataParser\n"
    "wave = np.sin(np.arange(44100) / 44100 * 2 * np.pi * 440).astype(np.float32)\n"
    "out = MultiModalDataParser(target_sr=16000).audio_resampler.resample(wave, orig_sr=44100)\n"
    "print('resampled', len(out))\n"
)


def test_audio_at_another_rate_resamples_only_with_the_adjustment() -> None:
    """What the local API and a CPU server do with a 44.1 kHz upload (here, with the
    adjustment applied in this process; without it, in a fresh one)."""
    import numpy as np
    from vllm.multimodal.parse import MultiModalDataParser

    assert vllm_compat.resample_audio_without_torchaudio()
    wave = np.sin(np.arange(44100) / 44100 * 2 * np.pi * 440).astype(np.float32)
    resampler = MultiModalDataParser(target_sr=16000).audio_resampler
    assert len(resampler.resample(wave, orig_sr=44100)) == 16000
    without = run_fresh(RESAMPLE_44K, off="audio-resampler")
    assert without.returncode != 0
    assert "torchaudio" in without.stderr or "vllm" in without.stderr


def test_the_switch_names_only_known_adjustments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vllm_compat.ADJUSTMENTS_OFF_ENV, "gemma4-audio, other")
    assert vllm_compat.adjustment_off("gemma4-audio")
    assert not vllm_compat.adjustment_off("gemma4-processor")
    assert set(vllm_compat.ADJUSTMENTS) == {"gemma4-processor", "gemma4-audio", "audio-resampler"}


def test_the_reasoning_parser_is_vllms_gemma4_parser(gemma4_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    parser = vllm_compat.gemma4_reasoning_parser(
        AutoTokenizer.from_pretrained(gemma4_checkpoint), thinking=True
    )
    assert type(parser).__name__ == "Gemma4ParserReasoningAdapter"


WHAT_IS_APPLIED = (
    "import sys\n"
    "from gemma_desktop.core.engine import vllm_compat\n"
    "print(vllm_compat.apply_engine_process_adjustments())\n"
    "print(sorted(m for m in sys.modules if m.startswith('transformers.models.gemma4')))\n"
)


def test_the_gemma4_adjustments_stay_out_of_other_models_engines(
    gemma4_checkpoint: Path, bundled_model_path: Path
) -> None:
    """The app tells the engine's processes the model's type; for another model they import
    none of transformers' Gemma 4 modules (0.4 s of held interpreter in the app's process)."""
    assert vllm_compat.model_type_of(str(gemma4_checkpoint)) == "gemma4"
    other = vllm_compat.model_type_of(str(bundled_model_path))
    assert other is not None and other not in vllm_compat.GEMMA4_MODEL_TYPES
    assert vllm_compat.model_type_of(str(bundled_model_path / "missing")) is None

    def applied(model_type: str | None) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != vllm_compat.MODEL_TYPE_ENV}
        if model_type is not None:
            env[vllm_compat.MODEL_TYPE_ENV] = model_type
        result = subprocess.run(
            [sys.executable, "-c", WHAT_IS_APPLIED],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.strip().splitlines()

    gemma4_modules = ("modeling_gemma4", "configuration_gemma4", "image_processing_pil_gemma4")
    flags, modules = applied(other)
    assert "'gemma4-processor': False" in flags and "'gemma4-audio': False" in flags
    assert not [m for m in gemma4_modules if f"transformers.models.gemma4.{m}'" in modules]
    for model_type in ("gemma4", None):  # a Gemma 4 engine, or a server started by hand
        flags, modules = applied(model_type)
        assert "'gemma4-processor': True" in flags and "'gemma4-audio': True" in flags
        assert all(f"transformers.models.gemma4.{m}'" in modules for m in gemma4_modules)
