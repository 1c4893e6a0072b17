"""The images and sound clips messages carry: checked, sized and kept as files on disk.

Attachments live in a content-addressed folder beside the history database
(``data_dir()/attachments/objects/<aa>/<sha256>.<ext>``): the same picture
attached twice is one file, and a file's name says what its bytes must hash
to. :class:`AttachmentStore` writes each file completely before anything may
refer to it (a temporary sibling, ``fsync``, ``rename``, ``fsync`` of the
folder), so a crash at any moment leaves either no file or the whole file,
never a partial one under its final name. The history commits a message's
reference to a file only after checking that the file is there, and removes
a file only after the last reference to it is gone; both happen under the
store's cross-process lock (:meth:`AttachmentStore.lock`), so the two can
never cross.

Files a draft or the conversation on screen still uses are *held*
(:meth:`AttachmentStore.hold`): deleting another conversation that shares
them leaves them alone.

What goes in: :func:`prepare_file` checks a file with the decoders the
engines send with (:mod:`gemma_desktop.core.media`): a picture larger than the
engines send is stored downscaled (a 100-megapixel photo is never refused), a
sound file's length is measured; :func:`prepare_recording` turns a recording
into a WAV file. Each refusal has a reason and a hint
(:class:`AttachmentError`, :class:`~gemma_desktop.core.media.MediaError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mimetypes
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gemma_desktop.core.engine.protocol import AudioPart, ImagePart
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.fsutil import FileLock, atomic_write
from gemma_desktop.core.media import MAX_CLIP_S

if TYPE_CHECKING:
    import numpy as np

Kind = Literal["image", "audio"]

#: Temporary files older than this are left-overs of a crash (swept on open).
STALE_TEMP_S = 3600.0
#: Unreferenced files older than this are left-overs too (a draft never sent, a crash
#: between a deletion and its clean-up); younger ones may be a draft of a running window.
STALE_ORPHAN_S = 24 * 3600.0

#: Picture formats stored as they are (the engines convert what a server may not take).
_IMAGE_MIMES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
_AUDIO_MIMES = {"WAV": "audio/wav", "FLAC": "audio/flac", "MP3": "audio/mpeg", "OGG": "audio/ogg"}
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
    "audio/wav": ".wav",
    "audio/flac": ".flac",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
}


class AttachmentError(GemmaDesktopError):
    """A file that cannot be attached (a folder, unreadable, neither picture nor sound)."""


@dataclass(frozen=True)
class StoredAttachment:
    """An attachment file in the store, and what the chat shows about it."""

    sha256: str
    kind: Kind
    mime: str
    #: The name the user knows it by (the file they picked, "Pasted image", a recording).
    name: str
    size: int
    path: Path
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None

    def part(self) -> ImagePart | AudioPart:
        """The engine protocol's part for this file."""
        if self.kind == "image":
            return ImagePart(self.path, self.mime)
        return AudioPart(self.path, self.mime)

    @property
    def meta(self) -> dict[str, Any]:
        """The size facts (pixels, seconds) worth keeping, for the history and exports."""
        facts: dict[str, Any] = {}
        if self.width is not None and self.height is not None:
            facts.update(width=self.width, height=self.height)
        if self.duration_s is not None:
            facts["duration_s"] = round(self.duration_s, 3)
        return facts

    @property
    def label(self) -> str:
        """A short description: ``photo.png · 1280×960`` or ``question.wav · 0:04``."""
        if self.kind == "audio" and self.duration_s is not None:
            return f"{self.name} · {format_duration(self.duration_s)}"
        if self.width and self.height:
            return f"{self.name} · {self.width}×{self.height}"
        return self.name


@dataclass(frozen=True)
class PreparedFile:
    """Bytes ready for the store, with what was learned while checking them."""

    data: bytes
    kind: Kind
    mime: str
    name: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    #: Said to the user when the file was changed on the way in (downscaled, converted).
    note: str = ""


def format_duration(seconds: float) -> str:
    """``0:04``, ``1:05``, ``1:02:03``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def extension_for(mime: str) -> str:
    return _EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"


# --- the store -------------------------------------------------------------------------


class AttachmentStore:
    """Content-addressed attachment files under ``root`` (see the module docstring).

    Blocking (disk, fsync); thread-safe.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self._held: Counter[str] = Counter()
        self._held_lock = threading.Lock()

    @property
    def scratch(self) -> Path:
        """A folder for bytes being checked before they are stored (:func:`prepare_data`)."""
        return self.root / "incoming"

    def path_for(self, sha256: str, mime: str) -> Path:
        return self.objects / sha256[:2] / f"{sha256}{extension_for(mime)}"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The cross-process lock under which references are added and files removed."""
        with FileLock(self.root / ".lock"):
            yield

    # -- writing -----------------------------------------------------------------------

    def put(self, prepared: PreparedFile) -> StoredAttachment:
        """Store ``prepared`` (fully on disk when this returns) and describe it."""
        sha = hashlib.sha256(prepared.data).hexdigest()
        target = self.path_for(sha, prepared.mime)
        self._write_once(target, prepared.data)
        return StoredAttachment(
            sha256=sha,
            kind=prepared.kind,
            mime=prepared.mime,
            name=prepared.name,
            size=len(prepared.data),
            path=target,
            width=prepared.width,
            height=prepared.height,
            duration_s=prepared.duration_s,
        )

    def _write_once(self, target: Path, data: bytes) -> None:
        if target.is_file() and target.stat().st_size == len(data):
            # Already there: the same bytes (its name is their hash). A fresh mtime tells the
            # orphan sweep that a draft uses it again.
            with contextlib.suppress(OSError):
                os.utime(target)
            return
        atomic_write(target, data)

    def is_complete(self, attachment: StoredAttachment) -> bool:
        """The file is where its name says, with its full size."""
        try:
            return attachment.path.stat().st_size == attachment.size
        except OSError:
            return False

    # -- holding and removing ----------------------------------------------------------

    def hold(self, attachments: Iterable[StoredAttachment]) -> None:
        """A draft or the conversation on screen uses these files: do not remove them."""
        with self._held_lock:
            self._held.update(a.sha256 for a in attachments)

    def release(self, attachments: Iterable[StoredAttachment]) -> None:
        with self._held_lock:
            self._held.subtract(a.sha256 for a in attachments)
            self._held += Counter()  # drop counts at zero

    def is_held(self, sha256: str) -> bool:
        with self._held_lock:
            return self._held[sha256] > 0

    def remove(self, sha256: str) -> bool:
        """Remove the file(s) of ``sha256`` unless held; call under :meth:`lock`, after the
        last reference is committed away."""
        if self.is_held(sha256):
            return False
        removed = False
        folder = self.objects / sha256[:2]
        for path in folder.glob(f"{sha256}.*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed = True
        return removed

    def sweep(self, referenced: set[str], now: float | None = None) -> int:
        """Remove crash left-overs: old temporary files and old files nothing refers to.

        Call under :meth:`lock` with the set of hashes the history refers to.
        """
        now = time.time() if now is None else now
        removed = 0
        if self.scratch.is_dir():
            for path in self.scratch.iterdir():
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > STALE_TEMP_S:
                        path.unlink()
                        removed += 1
        if not self.objects.is_dir():
            return removed
        for folder in self.objects.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                try:
                    age = now - path.stat().st_mtime
                except OSError:
                    continue
                sha = path.name.lstrip(".").split(".", 1)[0].split("-", 1)[0]
                stale_temp = path.name.startswith(".") and age > STALE_TEMP_S
                orphan = (
                    not path.name.startswith(".")
                    and sha not in referenced
                    and not self.is_held(sha)
                    and age > STALE_ORPHAN_S
                )
                if stale_temp or orphan:
                    with contextlib.suppress(OSError):
                        path.unlink()
                        removed += 1
        return removed


# --- checking what the user attaches ---------------------------------------------------


def prepare_data(data: bytes, name: str, scratch: Path) -> PreparedFile:
    """Like :func:`prepare_file`, for bytes that are not a file yet (a pasted picture);
    ``scratch`` is a folder for the moment they are checked."""
    scratch.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".incoming-", suffix=Path(name).suffix, dir=scratch)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return prepare_file(Path(tmp), name)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _kind_order(name: str) -> tuple[Kind, Kind]:
    guessed = mimetypes.guess_type(name)[0] or ""
    return ("audio", "image") if guessed.startswith("audio/") else ("image", "audio")


def prepare_file(source: Path, name: str | None = None) -> PreparedFile:
    """Check a file the user attached and get it ready for the store.

    Decoding is :mod:`gemma_desktop.core.media`'s (the same code the engines send
    with), so a file accepted here is one the engine can send. A picture larger than
    :data:`~gemma_desktop.core.media.MAX_IMAGE_SIDE` is stored downscaled (its note
    says so); a clip longer than 30 s is kept and sent as several clips. Raises
    :class:`AttachmentError` or :class:`~gemma_desktop.core.media.MediaError`.
    """
    from gemma_desktop.core import media

    name = name or source.name
    if source.is_dir():
        raise AttachmentError(f"{name} is a folder.", "Attach a picture or a sound file instead.")
    for kind in _kind_order(name):
        try:
            return _prepare_image(source, name) if kind == "image" else _prepare_audio(source, name)
        except media.UnsupportedMediaError:
            continue
    raise AttachmentError(
        f"{name} is neither a picture nor a sound file Gemma can take.",
        f"Attach a picture ({media.IMAGE_FORMATS_HINT}) or a sound file "
        f"({media.AUDIO_FORMATS_HINT}).",
    )


def _prepare_image(source: Path, name: str) -> PreparedFile:
    import warnings

    from PIL import Image

    from gemma_desktop.core import media

    image = media.load_image(source)  # refuses what cannot be sent (typed errors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source) as original:
            fmt = (original.format or "").upper()
            width, height = original.size
    if max(width, height) <= media.MAX_IMAGE_SIDE and fmt in _IMAGE_MIMES:
        return PreparedFile(
            read_source(source), "image", _IMAGE_MIMES[fmt], name, width=width, height=height
        )
    # Stored as the engine sends it (upright, at most MAX_IMAGE_SIDE on a side): a
    # 100-megapixel photo is downscaled, never refused.
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=92)
        mime = "image/jpeg"
    else:
        image.save(out, "PNG")
        mime = "image/png"
    note = (
        f"{name} is {width}×{height}; it is attached at {image.width}×{image.height}, "
        "which keeps everything Gemma can see."
        if (image.width, image.height) != (width, height)
        else ""
    )
    return PreparedFile(
        out.getvalue(), "image", mime, name, width=image.width, height=image.height, note=note
    )


def _prepare_audio(source: Path, name: str) -> PreparedFile:
    from gemma_desktop.core import media

    samples = media.load_audio(source)  # refuses what cannot be sent (typed errors)
    duration = len(samples) / media.AUDIO_SAMPLE_RATE
    mime = _audio_mime(source)
    note = ""
    if duration > MAX_CLIP_S:
        clips = len(media.split_clips(samples))
        note = (
            f"{name} is {format_duration(duration)} long; Gemma 4 hears {MAX_CLIP_S:.0f} s "
            f"at a time, so it is sent as {clips} clips."
        )
    return PreparedFile(read_source(source), "audio", mime, name, duration_s=duration, note=note)


def _audio_mime(source: Path) -> str:
    import soundfile

    try:
        fmt = str(soundfile.info(str(source)).format).upper()
    except (RuntimeError, soundfile.LibsndfileError):
        fmt = ""
    return _AUDIO_MIMES.get(fmt, mimetypes.guess_type(source.name)[0] or "audio/wav")


def read_source(source: Path) -> bytes:
    """The bytes of a file the user named; :class:`AttachmentError` when it cannot be read."""
    try:
        return source.read_bytes()
    except OSError as exc:
        raise AttachmentError(
            f"{source.name} cannot be read: {exc.strerror or exc}.",
            "Check that the file exists and that you may read it, then attach it again.",
        ) from exc


def prepare_recording(samples: np.ndarray, name: str) -> PreparedFile:
    """A microphone recording (16 kHz mono float32) as a WAV file for the store."""
    from gemma_desktop.core import media

    duration = len(samples) / media.AUDIO_SAMPLE_RATE
    if duration <= 0:
        raise AttachmentError(
            "The recording is empty.", "Record again and speak after the timer starts."
        )
    return PreparedFile(media.wav_bytes(samples), "audio", "audio/wav", name, duration_s=duration)
