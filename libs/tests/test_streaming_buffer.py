"""The per-channel buffer: cut rules and bounded memory, on simulated calls of any length.

The simulated calls use audio whose every sample encodes its own stream position, a scripted VAD
(an object with the ONNX session's ``run`` signature) and a scripted decoder that "hears" the words
of a script inside the window it gets. So the tests see exactly what audio each decode received.
"""

from __future__ import annotations

import numpy as np
import pytest

from libs.tests.scripted import RATE, VOCAB, ScriptedVad, sample_index, spoken, timed_audio, word
from scribe_libs.streaming import AudioBuffer, ChannelStream, Result, SpeechEvent, StreamConfig, Word
from scribe_libs.streaming.policy import normalize


class ScriptedDecoder:
    """Hears the script's words lying wholly inside the window and inside speech."""

    def __init__(self, speech, garbage: bool = False):
        self.speech = speech
        self.garbage = garbage
        self.position = 0
        self.windows: list[tuple[float, float]] = []
        self.calls = 0

    async def __call__(self, audio: np.ndarray, prompt: str, final: bool = False) -> list[Word]:
        self.calls += 1
        self.position = sample_index(audio[0], self.position)
        t0 = self.position / RATE
        t1 = t0 + len(audio) / RATE
        self.windows.append((t0, t1))
        out = []
        k = max(0, int(t0 / 0.5) - 1)
        while word(k).end <= t1:
            w = word(k)
            if w.start >= t0 and self.speech(w.start) and self.speech(w.end):
                text = VOCAB[(k + 7 * self.calls) % len(VOCAB)] if self.garbage else w.text
                out.append(Word(w.start - t0, w.end - t0, text))
            k += 1
        return out


async def run_call(seconds: float, speech, chunk_s: float = 0.2, garbage=False, config=None, check=None):
    decoder = ScriptedDecoder(speech, garbage)
    stream = ChannelStream(decoder, channel=0, config=config or StreamConfig(), vad_session=ScriptedVad(speech))
    events: list = []
    step = int(chunk_s * RATE)
    for lo in range(0, int(seconds * RATE), step):
        events += await stream.push(timed_audio(lo, step))
        events += await stream.drain()  # a decoder that keeps up with the audio
        if check:
            check(stream, events)
    events += await stream.close()
    return stream, decoder, events


def finals(events) -> list[Result]:
    return [e for e in events if isinstance(e, Result) and e.is_final]


# --- AudioBuffer -----------------------------------------------------------------------------


def test_buffer_keeps_absolute_offsets_across_cuts():
    buf = AudioBuffer(RATE, max_seconds=2.0)
    buf.append(timed_audio(0, RATE))
    assert (buf.start, buf.end, buf.duration) == (0.0, 1.0, 1.0)
    assert buf.cut_to(0.25) == 0.25
    assert buf.start == 0.25 and buf.end == 1.0
    assert buf.audio()[0] == timed_audio(4000, 1)[0]
    np.testing.assert_array_equal(buf.audio(0.5, 0.75), timed_audio(8000, 4000))
    buf.append(timed_audio(RATE, RATE))
    assert buf.end == 2.0 and buf.duration == 1.75


def test_buffer_never_cuts_past_received_audio_nor_backwards():
    buf = AudioBuffer(RATE, max_seconds=2.0)
    buf.append(timed_audio(0, 8000))
    assert buf.cut_to(10.0) == 0.5  # clamped to the end: the audio not received yet is not skipped
    assert buf.start == 0.5 and buf.duration == 0.0
    buf.append(timed_audio(8000, 100))
    assert buf.cut_to(0.1) == 0.0 and buf.start == 0.5
    assert buf.audio()[0] == timed_audio(8000, 1)[0]


def test_buffer_refuses_to_grow_past_capacity():
    buf = AudioBuffer(RATE, max_seconds=1.0)
    buf.append(np.zeros(RATE, dtype=np.float32))
    with pytest.raises(OverflowError):
        buf.append(np.zeros(1, dtype=np.float32))


# --- the session's cut rules ------------------------------------------------------------------


def invariant_for(speech):
    def check(stream: ChannelStream, events) -> None:
        """No audio of a spoken word that is neither in a final nor committed is ever cut."""
        done = {w.text for r in finals(events) for w in r.words} | {w.text for w in stream.policy.committed_words}
        k = 0
        while word(k).end <= stream.buffer.end:
            w = word(k)
            if w.text not in done and speech(w.start) and speech(w.end):
                assert stream.buffer.start <= w.start + 1e-6, (w, stream.buffer.start)
            k += 1

    return check


async def test_utterances_with_pauses_give_one_final_each_with_every_word_once():
    def speech(t: float) -> bool:
        return (t % 6.0) < 4.0  # 4 s of speech, 2 s of silence

    stream, decoder, events = await run_call(36.0, speech, check=invariant_for(speech))
    got = finals(events)
    assert [r.result_id for r in got] == [f"0-{n}" for n in range(len(got))]
    assert len(got) == 6
    assert [w.text for r in got for w in r.words] == spoken(36.0, speech)
    begins = [e.time for e in events if isinstance(e, SpeechEvent) and e.type == "SPEECH_BEGIN"]
    assert begins == pytest.approx([6.0 * i for i in range(6)], abs=0.04)
    # silence is never decoded: every window overlaps speech
    assert all(any(speech(t) for t in np.arange(t0, t1, 0.05)) for t0, t1 in decoder.windows)


async def test_ten_minute_monologue_keeps_buffer_bounded_and_finals_coming():
    def speech(t: float) -> bool:
        return True

    stream, decoder, events = await run_call(600.0, speech, chunk_s=0.5, check=invariant_for(speech))
    cfg = stream.config
    assert stream.max_buffer_seen <= cfg.trim_buffer_s + 1.1  # trimmed at commits, well under the cap
    got = finals(events)
    assert len(got) >= 600 / cfg.max_utterance_s - 1  # a final at least every max_utterance_s
    assert all(r.end - r.start <= cfg.max_utterance_s + 1.0 for r in got)
    words = [w.text for r in got for w in r.words]
    assert words == spoken(600.0, speech)  # nothing lost or doubled over 24+ finals
    assert all(t1 - t0 <= cfg.max_buffer_s + 0.6 for t0, t1 in decoder.windows)  # fits Whisper's 30 s


async def test_speech_that_never_agrees_is_forced_final_at_the_buffer_cap():
    def speech(t: float) -> bool:
        return True

    stream, decoder, events = await run_call(120.0, speech, chunk_s=0.5, garbage=True)
    cfg = stream.config
    assert stream.max_buffer_seen <= cfg.max_buffer_s + 0.6
    got = finals(events)
    assert len(got) >= 4  # one per ~25 s
    # each forced final holds back the last word (the window edge may have cut it) and none repeats
    starts = [round(w.start, 3) for r in got for w in r.words]
    assert starts == sorted(set(starts))


async def test_hours_on_hold_cost_no_decode_and_no_memory():
    def speech(t: float) -> bool:
        return False

    stream, decoder, events = await run_call(900.0, speech, chunk_s=1.0)
    assert events == [] and decoder.calls == 0
    assert stream.buffer.duration <= stream.config.vad.speech_pad_ms / 1000 + 0.04
    assert stream.max_buffer_seen <= 1.1


async def test_interims_can_be_turned_off():
    def speech(t: float) -> bool:
        return t < 5.0

    _, _, events = await run_call(8.0, speech, config=StreamConfig(interim_results=False))
    results = [e for e in events if isinstance(e, Result)]
    assert results and all(r.is_final for r in results)
    assert [normalize(w.text) for r in results for w in r.words] == spoken(8.0, speech)
