"""Streaming Silero VAD on generated audio: speech gives events; silence, DTMF and music do not."""

from __future__ import annotations

import shutil
import subprocess
import wave

import numpy as np
import pytest
from faster_whisper.vad import get_vad_model

from scribe_libs import callaudio as ca
from scribe_libs.streaming import SpeechEventType, StreamingVad, VadConfig

RATE = 16000
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """~2.5 s of espeak-ng speech at 16 kHz (generated, not committed)."""
    path = tmp_path_factory.mktemp("vad") / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), "I would like to check the status of my order."],
        check=True,
    )
    with wave.open(str(path)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        rate = w.getframerate()
    audio = ca.resample(audio, rate)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0] : loud[-1] + 1]  # espeak pads with silence: keep the speech only


def dtmf(seconds: float = 3.0) -> np.ndarray:
    """Keypad digits: 150 ms dual tones (ITU-T Q.23 frequencies), 100 ms gaps."""
    pairs = [(697, 1209), (770, 1336), (852, 1477), (941, 1336), (697, 1633), (852, 1209)]
    out, i = [], 0
    while sum(len(x) for x in out) < seconds * RATE:
        lo, hi = pairs[i % len(pairs)]
        t = np.arange(int(0.15 * RATE)) / RATE
        out += [0.3 * (np.sin(2 * np.pi * lo * t) + np.sin(2 * np.pi * hi * t)), np.zeros(int(0.1 * RATE))]
        i += 1
    return np.concatenate(out).astype(np.float32)


def hold_music(seconds: float = 6.0) -> np.ndarray:
    """A tune of plucked harmonic notes with a fifth above (a stand-in for hold music)."""
    notes = [261.63, 329.63, 392.0, 523.25, 440.0, 349.23, 293.66, 392.0]
    out = []
    for i in range(int(seconds / 0.3)):
        t = np.arange(int(0.3 * RATE)) / RATE
        f = notes[i % len(notes)]
        tone = sum((0.5 / k) * np.sin(2 * np.pi * f * k * t) for k in range(1, 6))
        tone += sum((0.3 / k) * np.sin(2 * np.pi * 1.5 * f * k * t) for k in range(1, 4))
        out.append(0.3 * np.exp(-3 * t) * tone)
    return np.concatenate(out).astype(np.float32)


def run(vad: StreamingVad, audio: np.ndarray, seed: int = 0):
    rng = np.random.default_rng(seed)
    events, lo = [], 0
    while lo < len(audio):
        n = int(rng.integers(80, 4000))  # 5-250 ms chunks, not aligned to the 512-sample frames
        events += vad.process(audio[lo : lo + n])
        lo += n
    return events


def test_chunked_probabilities_equal_the_one_shot_model(speech):
    audio = np.concatenate([np.zeros(RATE // 2, np.float32), speech])
    audio = audio[: len(audio) // 512 * 512]
    one_shot = get_vad_model()(audio).reshape(-1)
    vad = StreamingVad()
    rng = np.random.default_rng(1)
    probs, lo = [], 0
    while lo < len(audio):
        n = int(rng.integers(1, 3000))
        probs.append(vad.probabilities(audio[lo : lo + n]))
        lo += n
    np.testing.assert_allclose(np.concatenate(probs), one_shot, atol=1e-6)


def test_speech_between_silences_gives_one_begin_and_one_end(speech):
    audio = np.concatenate([np.zeros(RATE, np.float32), speech, np.zeros(RATE, np.float32)])
    events = run(StreamingVad(VadConfig(endpointing_ms=500)), audio)
    assert [e.type for e in events] == [SpeechEventType.SPEECH_BEGIN, SpeechEventType.SPEECH_END]
    speech_end = 1.0 + len(speech) / RATE
    assert 0.9 <= events[0].time <= 1.3
    assert speech_end - 0.6 <= events[1].time <= speech_end + 0.1


def test_speech_through_8k_mulaw_is_still_speech(speech):
    audio = np.concatenate([np.zeros(RATE, np.float32), speech, np.zeros(RATE, np.float32)])
    decoder = ca.CallAudioDecoder("MULAW", 8000, 1)
    data = ca.encode_mulaw(audio, RATE)
    phone = np.concatenate([decoder.decode(data)[0], decoder.flush()[0]])
    events = run(StreamingVad(), phone)
    assert [e.type for e in events] == [SpeechEventType.SPEECH_BEGIN, SpeechEventType.SPEECH_END]


@pytest.mark.parametrize(
    "signal",
    [
        pytest.param(lambda: np.zeros(5 * RATE, np.float32), id="silence"),
        pytest.param(dtmf, id="dtmf"),
        pytest.param(hold_music, id="hold-music"),
        pytest.param(
            lambda: (0.01 * np.random.default_rng(3).standard_normal(5 * RATE)).astype(np.float32), id="noise"
        ),
    ],
)
def test_non_speech_gives_no_speech_event(signal):
    assert run(StreamingVad(), signal()) == []


def test_endpointing_silence_is_configurable(speech):
    # A 0.7 s pause splits the speech at 500 ms endpointing and does not at 1000 ms.
    audio = np.concatenate(
        [
            np.zeros(RATE // 2, np.float32),
            speech,
            np.zeros(int(0.7 * RATE), np.float32),
            speech,
            np.zeros(int(1.5 * RATE), np.float32),
        ]
    )
    short = run(StreamingVad(VadConfig(endpointing_ms=500)), audio)
    long = run(StreamingVad(VadConfig(endpointing_ms=1000)), audio)
    assert [e.type for e in short].count(SpeechEventType.SPEECH_BEGIN) == 2
    assert [e.type for e in long].count(SpeechEventType.SPEECH_BEGIN) == 1
    assert [e.type for e in long][-1] == SpeechEventType.SPEECH_END
