"""The microphone and the speakers, through PortAudio (sounddevice): record a question, play a clip.

Why sounddevice and not QtMultimedia: PySide6's multimedia module comes only
with PySide6-Addons (about 440 MB installed, against 2 MB for sounddevice and
cffi), and QtMultimedia 6.11 aborts the whole app when recording starts after
the user restarted PulseAudio or PipeWire, which people do to fix their
sound; PortAudio notices a dead or restarted server and records again after a
re-scan. PortAudio reaches PulseAudio and PipeWire through ALSA's pulse or
pipewire plugin (Debian: ``libportaudio2`` plus ``libasound2-plugins`` or
``pipewire-alsa``, both already on a desktop).

:class:`Recording` opens one mono input stream, only while the user records,
and asks for nothing else. PortAudio calls back on its own thread; the
callback only copies the block into a queue. The owner calls
:meth:`Recording.poll` about 20 times a second from its event loop: it
drains the queue, reports the level and the elapsed time, stops at the
limit (Gemma 4 hears 30 s of a clip) and notices a stream that died. So
nothing here touches the UI from another thread, and nothing here imports Qt.

Every failure the user can act on is a :class:`MicrophoneError` with a plain
reason and a hint: no PortAudio library, no input device (no sound server,
or no permission: the two look the same to every Linux audio API), a busy
device, a stream that stopped mid-recording.

:class:`AudioDevices` is the service the chat receives: it makes recordings
and plays clips back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.media import AUDIO_SAMPLE_RATE, MAX_CLIP_S

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: What Gemma's audio encoder takes.
SAMPLE_RATE = AUDIO_SAMPLE_RATE
#: Gemma 4 hears at most 30 s of one clip.
MAX_SECONDS = MAX_CLIP_S

_PA_INVALID_SAMPLE_RATE = -9997
_PA_DEVICE_UNAVAILABLE = -9985
_PA_INVALID_DEVICE = -9996

_ROUTE_HINT = (
    "Check that a microphone is connected and that PulseAudio or PipeWire runs for your "
    "user (Debian: the libasound2-plugins or pipewire-alsa package connects PortAudio to it). "
    "In a Flatpak, the app needs the PulseAudio socket."
)


class MicrophoneError(GemmaDesktopError):
    """Recording or playback cannot start, or stopped (reason and hint for the user)."""


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # libportaudio.so.2 is missing
        raise MicrophoneError(
            "Sound is unavailable: the PortAudio library was not found.",
            "Install it (Debian/Ubuntu: sudo apt install libportaudio2) and restart the app.",
        ) from exc
    except ImportError as exc:
        raise MicrophoneError(
            "Sound is unavailable: the sounddevice package is not installed.",
            "Reinstall Gemma Desktop (pip install gemma-desktop).",
        ) from exc
    return sounddevice


def _rescan(sd: Any) -> None:
    """Make PortAudio list the devices again (it lists them once, when it starts), so a sound
    server that started or restarted after the app is found. sounddevice has no public call
    for this; both functions exist in 0.4 and 0.5."""
    terminate, initialize = getattr(sd, "_terminate", None), getattr(sd, "_initialize", None)
    if terminate is None or initialize is None:
        return
    try:
        terminate()
        initialize()
    except Exception:  # PortAudio refuses while a stream is open: keep the old list
        log.debug("PortAudio re-scan failed", exc_info=True)


def _resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited FFT resampling, for a device that refuses 16 kHz."""
    import numpy as np

    if source_rate == target_rate or samples.size == 0:
        return samples
    n_out = round(samples.size * target_rate / source_rate)
    spectrum = np.fft.rfft(samples.astype(np.float64))
    out = np.zeros(n_out // 2 + 1, dtype=complex)
    keep = min(out.size, spectrum.size)
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, n_out) * (n_out / samples.size)).astype(np.float32)


@dataclass(frozen=True)
class CaptureLevel:
    """What :meth:`Recording.poll` saw since the last call."""

    #: RMS of the new samples, 0..1 (linear); 0 when none arrived.
    rms: float
    elapsed_s: float
    #: The limit was reached: the recording has stopped; :meth:`Recording.stop` returns it.
    limit_reached: bool = False


class Recording:
    """One recording from the default (or given) input device, 16 kHz mono float32.

    ``start()`` opens the stream (:class:`MicrophoneError` when it cannot);
    ``poll()`` from the event loop about every 50 ms; ``stop()`` returns the samples;
    ``cancel()`` throws them away.
    """

    def __init__(
        self,
        max_seconds: float = MAX_SECONDS,
        *,
        device: int | str | None = None,
        block_ms: int = 50,
        stall_timeout_s: float = 2.0,
    ) -> None:
        if not 0 < max_seconds <= MAX_SECONDS:
            raise ValueError(f"max_seconds must be in (0, {MAX_SECONDS}]")
        self.max_seconds = max_seconds
        self.device = device
        self.block_ms = block_ms
        self.stall_timeout_s = stall_timeout_s
        self._stream: Any = None
        self._queue: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        self._chunks: list[np.ndarray] = []
        self._frames = 0  # drained so far (event loop side)
        self._frames_cb = 0  # handed over by the callback (PortAudio thread only)
        self._last_callback = 0.0
        self._rate = SAMPLE_RATE
        self._max_frames = int(max_seconds * SAMPLE_RATE)
        self._result: np.ndarray | None = None
        self._error: MicrophoneError | None = None
        self._started_at = 0.0
        self._stop_marker: type[BaseException] = Exception
        self.device_name = ""

    @property
    def is_recording(self) -> bool:
        return self._stream is not None

    @property
    def elapsed_s(self) -> float:
        return self._frames / self._rate if self._rate else 0.0

    # -- start --------------------------------------------------------------------------

    def start(self) -> None:
        """Open the microphone; :class:`MicrophoneError` says why it cannot."""
        if self._stream is not None:
            raise MicrophoneError("Already recording.", "Stop the recording first.")
        sd = _sounddevice()
        self._stop_marker = sd.CallbackStop
        try:
            self._open(sd)
        except (sd.PortAudioError, MicrophoneError):
            # PortAudio lists devices once: a server may have gone or come back since.
            _rescan(sd)
            try:
                self._open(sd)
            except sd.PortAudioError as exc:
                raise self._explain(exc) from exc
        self._started_at = time.monotonic()

    def _device_info(self, sd: Any) -> dict[str, Any]:
        try:
            info = sd.query_devices(self.device, kind="input")
        except (sd.PortAudioError, ValueError) as exc:
            what = (
                "No microphone was found"
                if self.device is None
                else f"The input device {self.device!r} was not found"
            )
            raise MicrophoneError(
                f"{what} (no sound server, or no permission to use it).", _ROUTE_HINT
            ) from exc
        if int(info["max_input_channels"]) < 1:
            raise MicrophoneError(f"“{info['name']}” is not an input device.", _ROUTE_HINT)
        return dict(info)

    def _open(self, sd: Any) -> None:
        info = self._device_info(sd)
        self.device_name = str(info.get("name", ""))
        self._queue = queue.SimpleQueue()
        self._chunks = []
        self._frames = self._frames_cb = 0
        self._result = None
        self._error = None
        self._last_callback = time.monotonic()
        # 16 kHz if the device takes it, else its own rate (resampled afterwards).
        rates = list(dict.fromkeys([SAMPLE_RATE, int(info["default_samplerate"])]))
        for attempt, rate in enumerate(rates):
            self._rate = rate
            self._max_frames = round(self.max_seconds * rate)
            try:
                stream = sd.InputStream(
                    samplerate=rate,
                    channels=1,
                    dtype="float32",
                    device=self.device,
                    callback=self._callback,
                    blocksize=rate * self.block_ms // 1000,
                )
                stream.start()
            except sd.PortAudioError as exc:
                code = exc.args[1] if len(exc.args) > 1 else None
                if code == _PA_INVALID_SAMPLE_RATE and attempt + 1 < len(rates):
                    continue  # the device refuses 16 kHz: record at its rate, resample
                raise
            self._stream = stream
            return

    def _explain(self, exc: Any) -> MicrophoneError:
        code = exc.args[1] if len(exc.args) > 1 else None
        name = self.device_name or "the microphone"
        if code == _PA_DEVICE_UNAVAILABLE:
            return MicrophoneError(
                f"{name} is busy, or you may not use it.",
                "Close other programs that record, or add your user to the 'audio' group. "
                + _ROUTE_HINT,
            )
        if code == _PA_INVALID_SAMPLE_RATE:
            return MicrophoneError(
                f"{name} records at neither 16 kHz nor its own default rate.", _ROUTE_HINT
            )
        if code == _PA_INVALID_DEVICE:
            return MicrophoneError(f"{name} is not available any more.", _ROUTE_HINT)
        return MicrophoneError(f"{name} could not be opened: {exc}.", _ROUTE_HINT)

    # -- the PortAudio thread -----------------------------------------------------------

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        # On PortAudio's thread: copy and hand over, nothing else.
        take = min(frames, self._max_frames - self._frames_cb)
        if take > 0:
            self._queue.put(indata[:take, 0].copy())
            self._frames_cb += take
        self._last_callback = time.monotonic()
        if self._frames_cb >= self._max_frames:
            raise self._stop_marker

    # -- the event loop -----------------------------------------------------------------

    def _drain(self) -> list[np.ndarray]:
        got: list[np.ndarray] = []
        while True:
            try:
                got.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._chunks.extend(got)
        self._frames += sum(chunk.size for chunk in got)
        return got

    def poll(self) -> CaptureLevel:
        """What arrived since the last call. Raises :class:`MicrophoneError` when the stream
        died (the samples so far are lost: a cut-off question is not worth answering)."""
        import numpy as np

        if self._stream is None:
            if self._error is not None:
                raise self._error
            return CaptureLevel(0.0, self.elapsed_s, self._result is not None)
        got = self._drain()
        rms = float(np.sqrt(np.mean(np.square(np.concatenate(got))))) if got else 0.0
        if self._frames >= self._max_frames:
            self._finish()
            return CaptureLevel(rms, self.max_seconds, True)
        if not self._stream.active:
            self._fail(
                MicrophoneError(
                    "The microphone stopped while recording (the sound server stopped or "
                    "the device was unplugged).",
                    "Record again; " + _ROUTE_HINT,
                )
            )
        elif time.monotonic() - self._last_callback > self.stall_timeout_s:
            self._fail(
                MicrophoneError(
                    f"No sound arrived from the microphone for {self.stall_timeout_s:.0f} s.",
                    _ROUTE_HINT,
                )
            )
        return CaptureLevel(rms, self.elapsed_s)

    def _fail(self, error: MicrophoneError) -> None:
        self._close()
        self._chunks = []
        self._result = None
        self._error = error
        raise error

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()  # input only: nothing to flush
                stream.close()
            except Exception:  # the stream is already broken; what arrived is kept
                log.debug("closing the input stream failed", exc_info=True)

    def _finish(self) -> np.ndarray:
        import numpy as np

        self._close()
        self._drain()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        self._chunks = []
        audio = _resample(audio, self._rate, SAMPLE_RATE)[: int(self.max_seconds * SAMPLE_RATE)]
        self._result = audio
        return audio

    def stop(self) -> np.ndarray:
        """Stop and return the recording (16 kHz mono float32); after the limit was
        reached, the recording up to it."""
        if self._stream is not None:
            self._finish()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._result is None:
            raise MicrophoneError("Nothing was recorded.", "Press Record first.")
        result, self._result = self._result, None
        return result

    def cancel(self) -> None:
        """Stop and throw the recording away."""
        self._close()
        self._chunks = []
        self._result = None
        self._error = None


class AudioDevices:
    """The app's sound service: recordings from the microphone and playback of clips.

    Playback plays one clip at a time; a new one stops the one before.
    """

    def __init__(self, *, device: int | str | None = None) -> None:
        self.device = device
        self._playing: Path | None = None
        self._play_lock = threading.Lock()
        self._play_ends = 0.0

    def recording(self, max_seconds: float = MAX_SECONDS) -> Recording:
        """A new recording (not started)."""
        return Recording(max_seconds, device=self.device)

    @property
    def playing(self) -> Path | None:
        """The clip being played, or ``None``."""
        with self._play_lock:
            if self._playing is not None and time.monotonic() > self._play_ends:
                self._playing = None
            return self._playing

    def play(self, path: Path) -> float:
        """Play a sound file (WAV, FLAC, MP3, OGG); returns its length in seconds.

        Blocks while the file is decoded (a 30 s clip: milliseconds); run it off the UI
        thread. :class:`MicrophoneError` when there is no output device.
        """
        import soundfile

        sd = _sounddevice()
        try:
            samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as exc:
            raise MicrophoneError(
                f"{path.name} cannot be played: {exc}.", "The file may be damaged."
            ) from exc
        try:
            sd.play(samples, rate)
        except (sd.PortAudioError, ValueError):
            _rescan(sd)
            try:
                sd.play(samples, rate)
            except (sd.PortAudioError, ValueError) as exc:
                raise MicrophoneError(
                    f"{path.name} cannot be played: no sound output was found ({exc}).",
                    _ROUTE_HINT,
                ) from exc
        seconds = len(samples) / float(rate)
        with self._play_lock:
            self._playing = path
            self._play_ends = time.monotonic() + seconds
        return seconds

    def stop_playback(self) -> None:
        try:
            sd = _sounddevice()
        except MicrophoneError:
            return
        sd.stop()
        with self._play_lock:
            self._playing = None
