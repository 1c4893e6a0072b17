"""The microphone through PortAudio against a real PulseAudio server fed with espeak-ng speech:
the recording is the speech, the level meter moves, the limit stops it, and a missing or dying
sound server is said plainly."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from gemma_desktop.core.audio_capture import SAMPLE_RATE, AudioDevices, MicrophoneError, Recording
from tests.fixtures.pulse import PulseServer, best_correlation, reference_16k, rescan_portaudio


def poll_for(recording: Recording, seconds: float) -> list[float]:
    levels = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        levels.append(recording.poll().rms)
        time.sleep(0.05)
    return levels


def test_records_the_speech_the_server_plays(pulse_server: PulseServer) -> None:
    rescan_portaudio()
    wav = pulse_server.speak_to_wav("What is the capital of France?")
    reference = reference_16k(pulse_server, wav)
    recording = Recording()
    recording.start()
    try:
        levels = poll_for(recording, 0.2)  # silence first
        player = pulse_server.play(wav, wait=False)
        deadline = time.monotonic() + 30
        while player.poll() is None and time.monotonic() < deadline:
            levels.append(recording.poll().rms)
            time.sleep(0.05)
        levels += poll_for(recording, 0.4)  # the end of the speech, through the server
        audio = recording.stop()
    finally:
        recording.cancel()
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size > reference.size
    assert best_correlation(audio, reference) > 0.9
    assert max(levels) > 0.05 and min(levels) < 0.01  # the meter moves with the speech
    assert not recording.is_recording


def test_stops_at_the_limit_with_exactly_the_limit(pulse_server: PulseServer) -> None:
    rescan_portaudio()
    recording = Recording(max_seconds=0.5)
    recording.start()
    deadline = time.monotonic() + 10
    level = recording.poll()
    while not level.limit_reached and time.monotonic() < deadline:
        time.sleep(0.05)
        level = recording.poll()
    assert level.limit_reached and not recording.is_recording
    assert recording.stop().size == SAMPLE_RATE // 2


def test_no_sound_server_is_said_plainly(no_pulse_server: None) -> None:
    rescan_portaudio()
    with pytest.raises(MicrophoneError) as info:
        Recording().start()
    assert "No microphone was found" in info.value.reason
    assert "PulseAudio or PipeWire" in info.value.hint


def test_a_server_that_dies_while_recording(pulse_server: PulseServer) -> None:
    rescan_portaudio()
    recording = Recording(stall_timeout_s=1.0)
    recording.start()
    poll_for(recording, 0.3)
    pulse_server.kill_daemon()
    deadline = time.monotonic() + 10
    with pytest.raises(MicrophoneError) as info:
        while time.monotonic() < deadline:
            recording.poll()
            time.sleep(0.05)
    assert "microphone" in info.value.reason.lower() or "sound" in info.value.reason.lower()
    assert not recording.is_recording
    with pytest.raises(MicrophoneError):
        recording.stop()


def test_play_sounds_through_the_default_output(pulse_server: PulseServer) -> None:
    """A clip's Play goes to the system's default output: the null sink, whose monitor the
    test records; Stop silences it."""
    rescan_portaudio()
    wav = pulse_server.speak_to_wav("Play this back, please.")
    reference = reference_16k(pulse_server, wav)
    devices = AudioDevices()
    recording = Recording()
    recording.start()
    try:
        poll_for(recording, 0.2)
        seconds = devices.play(wav)
        assert seconds == pytest.approx(reference.size / SAMPLE_RATE, abs=0.05)
        assert devices.playing == wav
        poll_for(recording, seconds + 0.6)
        audio = recording.stop()
    finally:
        recording.cancel()
    assert best_correlation(audio, reference) > 0.9
    assert devices.playing is None  # over by itself

    long_wav = pulse_server.tmpdir / "long.wav"
    subprocess.run(["sox", str(wav), str(long_wav), "repeat", "5"], check=True)
    recording = Recording()
    recording.start()
    try:
        devices.play(long_wav)
        poll_for(recording, 0.8)
        devices.stop_playback()
        assert devices.playing is None
        poll_for(recording, 0.3)  # what was in the server's buffer
        after = poll_for(recording, 0.6)
    finally:
        recording.cancel()
    assert max(after) < 0.01, "the clip still plays after Stop"
