"""Attachments decoded for Gemma 4, on files made by real encoders (espeak-ng, sox, lame,
opusenc; Debian packages in the Makefile's TEST_DEBS) and by PIL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from gemma_desktop.core.engine.protocol import (
    AudioPart,
    ChatMessage,
    EngineAbilities,
    ImagePart,
    UnsupportedInputError,
)
from gemma_desktop.core.media import (
    AUDIO_SAMPLE_RATE,
    MAX_CLIP_S,
    MAX_IMAGE_SIDE,
    AudioTooLongError,
    MediaError,
    SoftTokenBudget,
    UnreadableMediaError,
    UnsupportedMediaError,
    audio_clips,
    decode_attachments,
    image_data_url,
    load_audio,
    load_image,
    refuse_unsupported,
    wav_bytes,
)

TOOLS = ("espeak-ng", "sox", "soxi", "lame", "opusenc")


def run(*args: str | Path) -> str:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"install the Debian packages for {missing} (make test does)"
    return subprocess.run(
        [str(a) for a in args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One spoken sentence in each format, each written by its own encoder."""
    folder = tmp_path_factory.mktemp("speech")
    wav = folder / "speech.wav"  # espeak-ng writes 22.05 kHz mono
    run("espeak-ng", "-w", wav, "Gemma Desktop reads sound files in every common format.")
    stereo = folder / "speech-44k-stereo.wav"
    run("sox", wav, "-r", "44100", "-c", "2", stereo)
    files = {"wav": wav, "wav44": stereo}
    files["flac"] = folder / "speech.flac"
    run("sox", wav, files["flac"])
    files["ogg"] = folder / "speech.ogg"
    run("sox", wav, files["ogg"])
    files["mp3"] = folder / "speech.mp3"
    run("lame", "--quiet", stereo, files["mp3"])
    files["opus"] = folder / "speech.opus"
    run("opusenc", "--quiet", wav, files["opus"])
    return files


@pytest.mark.parametrize("kind", ["wav", "wav44", "flac", "ogg", "mp3", "opus"])
def test_every_format_decodes_to_16khz_mono_float32(speech: dict[str, Path], kind: str) -> None:
    seconds = float(run("soxi", "-D", speech["wav"]))
    samples = load_audio(speech[kind])
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert samples.flags["C_CONTIGUOUS"]
    # the duration sox reports, at 16 kHz (lossy codecs may pad a few ms)
    assert abs(len(samples) / AUDIO_SAMPLE_RATE - seconds) < 0.06
    assert 0.05 < float(np.abs(samples).max()) <= 1.0


def test_resampling_keeps_the_signal(speech: dict[str, Path]) -> None:
    """44.1 kHz stereo and the original 22.05 kHz mono give the same 16 kHz signal."""
    a = load_audio(speech["wav"])
    b = load_audio(speech["wav44"])
    n = min(len(a), len(b))
    error = np.sqrt(np.mean((a[:n] - b[:n]) ** 2)) / np.sqrt(np.mean(a[:n] ** 2))
    assert error < 0.05


def test_a_long_recording_is_split_into_clips_of_at_most_30_s(tmp_path: Path) -> None:
    long = tmp_path / "long.flac"
    run("sox", "-n", "-r", "16000", "-c", "1", long, "synth", "75", "sine", "440")
    clips = audio_clips(long)
    assert len(clips) == 3
    assert all(len(c) <= MAX_CLIP_S * AUDIO_SAMPLE_RATE for c in clips)
    assert sum(len(c) for c in clips) == 75 * AUDIO_SAMPLE_RATE
    short = tmp_path / "short.wav"
    run("sox", "-n", "-r", "16000", "-c", "1", short, "synth", "30", "sine", "440")
    assert len(audio_clips(short)) == 1


def test_a_recording_over_the_limit_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "lecture.wav"
    run("sox", "-n", "-r", "8000", "-c", "1", path, "synth", "12", "sine", "300")
    with pytest.raises(AudioTooLongError) as info:
        load_audio(path, max_s=10)
    assert "12 s" in info.value.reason and "lecture.wav" in info.value.reason
    assert "trim" in info.value.hint
    assert isinstance(info.value, UnsupportedInputError)


def test_unreadable_and_unknown_audio_files_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(UnreadableMediaError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    noise = tmp_path / "notes.m4a"
    noise.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(range(256)) * 8)
    with pytest.raises(UnsupportedMediaError) as info:
        load_audio(noise)
    assert "WAV, FLAC, MP3 or OGG" in info.value.hint
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(UnreadableMediaError, match="no sound"):
        load_audio(empty)


def test_wav_bytes_round_trip_at_16khz(speech: dict[str, Path]) -> None:
    samples = load_audio(speech["flac"])
    data, rate = soundfile.read(__import__("io").BytesIO(wav_bytes(samples)), dtype="float32")
    assert rate == AUDIO_SAMPLE_RATE and len(data) == len(samples)
    assert float(np.abs(data - samples).max()) < 1e-3  # 16-bit PCM


def test_a_huge_image_is_downscaled_not_refused(tmp_path: Path) -> None:
    path = tmp_path / "panorama.png"
    Image.new("RGB", (6000, 4000), (30, 120, 200)).save(path)
    image = load_image(path)
    assert image.size == (MAX_IMAGE_SIDE, round(4000 * MAX_IMAGE_SIDE / 6000))
    assert image.mode == "RGB"
    assert image.getpixel((10, 10)) == (30, 120, 200)


def test_a_jpeg_photo_is_turned_upright_and_a_transparent_png_goes_on_white(
    tmp_path: Path,
) -> None:
    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was held rotated: display turned 90 degrees clockwise
    Image.new("RGB", (400, 300), (200, 10, 10)).save(photo, exif=exif, quality=95)
    assert load_image(photo).size == (300, 400)
    logo = tmp_path / "logo.png"
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(logo)
    assert load_image(logo).getpixel((5, 5)) == (255, 255, 255)
    url = image_data_url(load_image(logo))
    assert url.startswith("data:image/png;base64,")


def test_broken_and_foreign_image_files_raise_typed_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image at all", encoding="utf-8")
    with pytest.raises(UnsupportedMediaError) as info:
        load_image(text)
    assert "PNG, JPEG" in info.value.hint
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (500, 500), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(UnreadableMediaError):
        load_image(truncated)
    with pytest.raises(MediaError, match="folder"):
        load_image(tmp_path)


def test_attachments_a_model_cannot_take_are_refused_before_decoding(tmp_path: Path) -> None:
    missing = tmp_path / "never-read.png"  # refused before anyone opens it
    message = ChatMessage("user", "What is this?", (ImagePart(missing),))
    text_only = EngineAbilities(why_not="It reads text only.")
    with pytest.raises(UnsupportedInputError) as info:
        refuse_unsupported([message], text_only, "some-model", "Pick another model.")
    assert "images" in info.value.reason and "never-read.png" in info.value.reason
    assert "It reads text only." in info.value.reason
    assert info.value.hint == "Pick another model."
    refuse_unsupported([message], EngineAbilities(images=True), "gemma")
    audio = ChatMessage("user", "Listen", (AudioPart(missing),))
    with pytest.raises(UnsupportedInputError, match="audio"):
        refuse_unsupported([audio], EngineAbilities(images=True), "gemma")


def test_decoding_keeps_order_and_splits_clips(tmp_path: Path, speech: dict[str, Path]) -> None:
    picture = tmp_path / "p.png"
    Image.new("RGB", (32, 32)).save(picture)
    messages = [
        ChatMessage("user", "plain"),
        ChatMessage("user", "both", (AudioPart(speech["mp3"]), ImagePart(picture))),
    ]
    decoded = decode_attachments(messages)
    assert [(len(d.images), len(d.clips)) for d in decoded] == [(0, 0), (1, 1)]


def test_the_soft_token_budget_comes_from_the_processor_config(gemma4_checkpoint: Path) -> None:
    import json

    config = json.loads((gemma4_checkpoint / "processor_config.json").read_text("utf-8"))
    budget = SoftTokenBudget.from_model_folder(gemma4_checkpoint)
    assert budget.image_max_soft_tokens == config["image_processor"]["max_soft_tokens"]
    assert budget.audio_ms_per_token == config["audio_ms_per_token"]
    # 1 s of audio is 25 soft tokens (40 ms each) plus the markers: the bound covers it
    assert budget.audio_tokens(AUDIO_SAMPLE_RATE) >= 25 + 2
    assert SoftTokenBudget.from_model_folder(gemma4_checkpoint.parent / "nowhere").image_tokens
