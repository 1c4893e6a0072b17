"""Attachments decoded and sized for Gemma 4: the one answer for both engines and the CLI.

Images (:func:`load_image`) are opened with PIL, turned upright by their EXIF
orientation, converted to RGB (transparency over white) and, when larger than
:data:`MAX_IMAGE_SIDE` on a side, downscaled: never refused for their size.
Gemma 4's own image processor then fits them to its soft-token budget (at
most 1120 soft tokens, about 2.6 million pixels), so nothing it could use is
lost.

Audio (:func:`load_audio`) is decoded by soundfile (its wheel bundles
libsndfile: WAV, FLAC, OGG Vorbis and Opus, MP3), mixed to mono and resampled
to Gemma 4's :data:`AUDIO_SAMPLE_RATE` (16 kHz) by soxr, as float32. Gemma 4
hears at most :data:`MAX_CLIP_S` (30 s: 750 soft tokens of 40 ms) per clip, so
:func:`audio_clips` splits a longer recording into consecutive clips of at most
30 s, each sent as its own audio input; a recording longer than
:data:`MAX_AUDIO_S` is refused. vLLM is always handed 16 kHz: its own
resampler needs torchaudio, which the CPU build cannot install.

Every failure is a :class:`MediaError` (an
:class:`~gemma_desktop.core.engine.protocol.UnsupportedInputError`) with a
reason naming the file and a hint; nothing is sent when one is raised.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma_desktop.core.engine.protocol import (
    AudioPart,
    ChatMessage,
    EngineAbilities,
    ImagePart,
    UnsupportedInputError,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

#: The sample rate Gemma 4's audio encoder takes.
AUDIO_SAMPLE_RATE = 16_000
#: The longest clip Gemma 4 takes (its processor's 750 soft tokens of 40 ms).
MAX_CLIP_S = 30.0
#: The longest recording accepted (split into :data:`MAX_CLIP_S` clips).
MAX_AUDIO_S = 600.0
#: Images larger than this on a side are downscaled (Gemma 4 sees at most ~2.6 MP).
MAX_IMAGE_SIDE = 2048
#: Images with more pixels than this are refused (a decompression bomb, not a photo).
MAX_IMAGE_PIXELS = 400_000_000

IMAGE_FORMATS_HINT = "PNG, JPEG, WEBP, GIF, BMP or TIFF"
AUDIO_FORMATS_HINT = "WAV, FLAC, MP3 or OGG (Vorbis or Opus)"


class MediaError(UnsupportedInputError):
    """An attachment that cannot be sent (see the subclasses)."""


class UnreadableMediaError(MediaError):
    """The file is missing, unreadable or damaged."""


class UnsupportedMediaError(MediaError):
    """The file is not in a format the app can decode."""


class AudioTooLongError(MediaError):
    """A recording longer than :data:`MAX_AUDIO_S`."""


def _unreadable(path: Path, what: str, detail: str) -> UnreadableMediaError:
    return UnreadableMediaError(
        f"The {what} {path} cannot be read: {detail}.",
        "Check that the file exists, that you may read it and that it is complete; "
        "then attach it again.",
    )


def _check_readable(path: Path, what: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        raise _unreadable(path, what, "no such file") from None
    except IsADirectoryError:
        raise _unreadable(path, what, "it is a folder") from None
    except OSError as exc:
        raise _unreadable(path, what, exc.strerror or str(exc)) from None


# --- images --------------------------------------------------------------------------------


def load_image(path: Path | str, *, max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """The image at ``path``, upright, RGB, at most ``max_side`` pixels on a side."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    _check_readable(path, "image")
    try:
        with warnings.catch_warnings():
            # PIL warns above 89 MP; the limit that counts here is MAX_IMAGE_PIXELS.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            pixels = image.width * image.height
            if pixels > MAX_IMAGE_PIXELS:
                image.close()
                raise MediaError(
                    f"The image {path} is {image.width}x{image.height} pixels "
                    f"({pixels / 1e6:.0f} MP), too large to open safely.",
                    f"Scale it down below {MAX_IMAGE_PIXELS // 1_000_000} megapixels "
                    "and attach it again.",
                )
            # JPEG decodes at a reduced scale directly (much faster for camera photos).
            image.draft("RGB", (max_side, max_side))
            image.load()
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise UnsupportedMediaError(
            f"{path} is not an image the app can read.",
            f"Attach a {IMAGE_FORMATS_HINT} file, or convert it to PNG first.",
        ) from None
    except Image.DecompressionBombError:
        raise MediaError(
            f"The image {path} is too large to open safely.",
            f"Scale it down below {MAX_IMAGE_PIXELS // 1_000_000} megapixels and attach it again.",
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or damaged data
        raise _unreadable(path, "image", str(exc) or type(exc).__name__) from None
    upright: Image.Image = ImageOps.exif_transpose(image) or image
    rgb = _to_rgb(upright)
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def image_data_url(image: Image.Image) -> str:
    """``image`` as a ``data:image/png;base64,...`` URL (OpenAI's ``image_url`` part)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- audio ---------------------------------------------------------------------------------


def load_audio(path: Path | str, *, max_s: float = MAX_AUDIO_S) -> npt.NDArray[np.float32]:
    """The recording at ``path`` as 16 kHz mono float32 samples.

    Raises :class:`AudioTooLongError` beyond ``max_s`` seconds (checked before
    the samples are decoded), :class:`UnsupportedMediaError` for a format
    libsndfile does not know, :class:`UnreadableMediaError` otherwise.
    """
    import numpy as np
    import soundfile
    import soxr

    path = Path(path)
    _check_readable(path, "audio file")
    try:
        info = soundfile.info(str(path))
    except soundfile.LibsndfileError as exc:
        raise UnsupportedMediaError(
            f"{path} is not an audio file the app can decode ({exc.error_string}).",
            f"Attach a {AUDIO_FORMATS_HINT} file, or convert it first, e.g. "
            f"`ffmpeg -i {path.name} {path.stem}.wav`.",
        ) from None
    except (OSError, RuntimeError) as exc:
        raise _unreadable(path, "audio file", str(exc)) from None
    # MP3 reports no frame count up front on some files; then it is checked after decoding.
    if info.frames > 0 and info.samplerate > 0 and info.frames / info.samplerate > max_s:
        raise _too_long(path, info.frames / info.samplerate, max_s)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, OSError, RuntimeError) as exc:
        raise _unreadable(path, "audio file", str(exc)) from None
    if data.shape[0] == 0:
        raise UnreadableMediaError(
            f"The audio file {path} contains no sound.", "Attach a recording that is not empty."
        )
    if data.shape[0] / rate > max_s:
        raise _too_long(path, data.shape[0] / rate, max_s)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != AUDIO_SAMPLE_RATE:
        mono = soxr.resample(mono, rate, AUDIO_SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _too_long(path: Path, seconds: float, max_s: float) -> AudioTooLongError:
    return AudioTooLongError(
        f"The recording {path} is {seconds:.0f} s long; at most {max_s:.0f} s can be attached.",
        f"Cut it into parts of at most {max_s:.0f} s (e.g. `sox {path.name} part.wav trim 0 "
        f"{max_s:.0f} : newfile : restart`) and send them one at a time.",
    )


def split_clips(
    samples: npt.NDArray[np.float32], max_clip_s: float = MAX_CLIP_S
) -> list[npt.NDArray[np.float32]]:
    """``samples`` (16 kHz) cut into consecutive clips of at most ``max_clip_s`` seconds,
    of equal length (so no clip is a sliver)."""
    limit = int(max_clip_s * AUDIO_SAMPLE_RATE)
    count = max(1, math.ceil(len(samples) / limit))
    size = math.ceil(len(samples) / count)
    return [samples[start : start + size] for start in range(0, len(samples), size)]


def audio_clips(path: Path | str) -> list[npt.NDArray[np.float32]]:
    """The recording at ``path`` as Gemma 4's audio inputs: 16 kHz clips of at most 30 s."""
    return split_clips(load_audio(path))


def wav_bytes(samples: npt.NDArray[np.float32]) -> bytes:
    """``samples`` (16 kHz mono) as a 16-bit PCM WAV file, for a server's ``input_audio``."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, AUDIO_SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@dataclass(frozen=True)
class SoftTokenBudget:
    """How many prompt tokens an attachment can take once vLLM's processor expands its
    placeholder, read from a Gemma 4 checkpoint's ``processor_config.json``.

    ``image_tokens`` is an upper bound (the image processor's ``max_soft_tokens``:
    the exact count depends on the aspect ratio); :meth:`audio_tokens` is at
    least the processor's count. Both include the begin/end markers.
    """

    image_max_soft_tokens: int = 280
    audio_ms_per_token: int = 40
    audio_seq_length: int = 750

    @property
    def image_tokens(self) -> int:
        return self.image_max_soft_tokens + 2

    def audio_tokens(self, samples: int) -> int:
        soft = math.ceil(samples * 1000 / AUDIO_SAMPLE_RATE / self.audio_ms_per_token) + 1
        return min(soft, self.audio_seq_length) + 2

    @classmethod
    def from_model_folder(cls, folder: Path | str) -> SoftTokenBudget:
        """The budget in ``folder/processor_config.json`` (Gemma 4's defaults without one)."""
        import json

        try:
            config = json.loads((Path(folder) / "processor_config.json").read_text("utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(config, dict):
            return cls()
        image = config.get("image_processor")
        image = image if isinstance(image, dict) else {}
        default = cls()
        return cls(
            image_max_soft_tokens=int(
                image.get("max_soft_tokens")
                or config.get("image_seq_length")
                or default.image_max_soft_tokens
            ),
            audio_ms_per_token=int(config.get("audio_ms_per_token") or default.audio_ms_per_token),
            audio_seq_length=int(config.get("audio_seq_length") or default.audio_seq_length),
        )


# --- a conversation's attachments -------------------------------------------------------------


def refuse_unsupported(
    messages: Sequence[ChatMessage], abilities: EngineAbilities, model: str, hint: str = ""
) -> None:
    """Raise :class:`UnsupportedInputError` for the first attachment ``abilities`` rule out.

    Called before anything is decoded or sent; ``hint`` says what to do instead
    (the engine knows: turn text-only mode off, pick a Gemma 4 model...).
    """
    for message in messages:
        for part in message.attachments:
            if isinstance(part, ImagePart) and not abilities.images:
                kind = "images"
            elif isinstance(part, AudioPart) and not abilities.audio:
                kind = "audio"
            else:
                continue
            why = f" {abilities.why_not}" if abilities.why_not else ""
            raise UnsupportedInputError(
                f"{model} cannot take {kind} ({part.path.name}).{why}",
                hint or "Remove the attachment, or pick a Gemma 4 model (E2B or E4B).",
            )


@dataclass(frozen=True)
class DecodedMessage:
    """One message's attachments, decoded: images, then 16 kHz audio clips."""

    images: tuple[Any, ...] = ()
    clips: tuple[Any, ...] = ()


def decode_attachments(messages: Sequence[ChatMessage]) -> list[DecodedMessage]:
    """Every message's attachments decoded (:func:`load_image`, :func:`audio_clips`), in order.

    Blocking (file reads, decoding): run it off the event loop's thread.
    """
    decoded = []
    for message in messages:
        images: list[Any] = []
        clips: list[Any] = []
        for part in message.attachments:
            if isinstance(part, ImagePart):
                images.append(load_image(part.path))
            elif isinstance(part, AudioPart):
                clips.extend(audio_clips(part.path))
        decoded.append(DecodedMessage(tuple(images), tuple(clips)))
    return decoded
