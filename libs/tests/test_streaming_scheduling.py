"""The session driver's scheduling: one decode in flight, coalesced interims, finals first, push never waits.

The decoder is a fake of known cost (``await asyncio.sleep(cost)`` stands for the decode time) that
"hears" a script of words by absolute stream time, as in ``test_streaming_buffer``: every audio
sample encodes its own stream position, so the fake knows exactly which audio each call received.
The VAD is scripted too (an object with the Silero ONNX session's ``run`` signature), so speech
and silence are deterministic without the model. Audio is fed in real-time pacing, accelerated by
``SPEED`` (the decode cost is given in audio seconds and scaled the same way), so each test runs
in a few seconds of wall time; where the order of events matters the decoder is gated by events
instead of timed.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from libs.tests.scripted import RATE, VOCAB, ScriptedVad, sample_index, spoken, timed_audio, word
from scribe_libs.streaming import ChannelStream, Result, SpeechEvent, StreamConfig, Word
from scribe_libs.streaming.policy import normalize
from scribe_libs.streaming.session import SLICE_SAMPLES
from scribe_libs.streaming.types import SpeechEventType

SLICE_S = SLICE_SAMPLES / RATE
#: Wall clock runs this many times faster than the audio (pacing and decode costs alike).
SPEED = 5.0


class Call:
    """One decode call as the fake saw it."""

    def __init__(self, t0: float, t1: float, final: bool, received: float):
        self.t0, self.t1, self.final, self.received = t0, t1, final, received
        self.started = time.monotonic()
        self.returned: float | None = None


class FakeDecoder:
    """Hears the script's words lying wholly inside the window and inside speech, at a known cost.

    ``cost`` is in audio seconds (the wall time slept is ``cost / SPEED``). With ``gated`` each call
    waits until the test sets its event (``release()``), so the test decides when a decode returns.
    """

    def __init__(self, speech, cost: float = 0.0, gated: bool = False):
        self.speech = speech
        self.cost = cost
        self.gated = gated
        self.position = 0
        self.stream: ChannelStream | None = None
        self.calls: list[Call] = []
        self.active = 0
        self.max_active = 0
        self.gates: list[asyncio.Event] = []
        self.entered = asyncio.Event()

    def release(self) -> None:
        self.gates[-1].set()

    async def __call__(self, audio: np.ndarray, prompt: str, final: bool = False) -> list[Word]:
        self.position = sample_index(audio[0], self.position)
        t0 = self.position / RATE
        t1 = t0 + len(audio) / RATE
        received = self.stream.received_seconds if self.stream is not None else float("nan")
        call = Call(t0, t1, final, received)
        self.calls.append(call)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gated:
                gate = asyncio.Event()
                self.gates.append(gate)
                self.entered.set()
                await gate.wait()
            elif self.cost:
                await asyncio.sleep(self.cost / SPEED)
        finally:
            self.active -= 1
            call.returned = time.monotonic()
        out = []
        k = max(0, int(t0 / 0.5) - 1)
        while word(k).end <= t1:
            w = word(k)
            if w.start >= t0 and self.speech(w.start) and self.speech(w.end):
                out.append(Word(w.start - t0, w.end - t0, w.text))
            k += 1
        return out


def make_stream(decoder: FakeDecoder, config: StreamConfig | None = None, emit=None) -> ChannelStream:
    stream = ChannelStream(decoder, channel=0, config=config or StreamConfig(), vad_session=ScriptedVad(decoder.speech),
                           emit=emit)
    decoder.stream = stream
    return stream


async def paced_call(stream: ChannelStream, seconds: float, chunk_s: float = 0.1, check=None) -> list:
    """Feed ``seconds`` of audio in ``chunk_s`` chunks at ``SPEED`` x real time, then close."""
    events: list = []
    step = int(chunk_s * RATE)
    started = time.monotonic()
    for n, lo in enumerate(range(0, int(seconds * RATE), step)):
        events += await stream.push(timed_audio(lo, step))
        if check:
            check(stream)
        # real-time pacing: the chunk after this one is due at its stream time (scaled)
        delay = started + (n + 1) * chunk_s / SPEED - time.monotonic()
        await asyncio.sleep(max(delay, 0.0))
    events += await stream.close()
    return events


def finals(events) -> list[Result]:
    return [e for e in events if isinstance(e, Result) and e.is_final]


def final_words(events) -> list[str]:
    return [normalize(w.text) for r in finals(events) for w in r.words]


def two_utterances(t: float) -> bool:
    return 0.3 <= t < 4.3 or 5.6 <= t < 9.6


# --- one decode in flight ----------------------------------------------------------------------


async def test_at_most_one_decode_in_flight_even_when_the_decoder_is_slower_than_real_time():
    decoder = FakeDecoder(two_utterances, cost=1.8)  # 1.8 s per call, an interim due every 1 s
    stream = make_stream(decoder)
    events = await paced_call(stream, 10.0)
    assert len(decoder.calls) >= 3
    assert decoder.max_active == 1
    # calls never overlap in time either: each starts after the previous one returned
    for before, after in zip(decoder.calls, decoder.calls[1:], strict=False):
        assert after.started >= before.returned
    assert final_words(events) == spoken(10.0, two_utterances)


# --- coalescing --------------------------------------------------------------------------------


async def test_a_slow_decoder_gets_fewer_interims_each_on_the_newest_audio_and_no_word_is_lost():
    fast = FakeDecoder(two_utterances, cost=0.0)
    fast_events = await paced_call(make_stream(fast), 10.0)
    slow = FakeDecoder(two_utterances, cost=2.0)  # twice the 1 s interval: interims must coalesce
    slow_stream = make_stream(slow)
    slow_events = await paced_call(slow_stream, 10.0)

    fast_interims = [c for c in fast.calls if not c.final]
    slow_interims = [c for c in slow.calls if not c.final]
    print(f"decodes: fast {len(fast.calls)} ({len(fast_interims)} interim), "
          f"slow {len(slow.calls)} ({len(slow_interims)} interim)")
    assert len(slow.calls) < len(fast.calls)
    # each interim covers all the audio received when it started (not a backlog of old windows)
    assert slow_interims
    for call in slow_interims:
        assert call.t1 == pytest.approx(call.received, abs=1e-6), (call.t0, call.t1, call.received)
    # every word spoken is in a final exactly once, with either decoder
    assert final_words(slow_events) == spoken(10.0, two_utterances)
    assert final_words(fast_events) == spoken(10.0, two_utterances)
    assert len(finals(slow_events)) == len(finals(fast_events)) == 2


# --- finals first ------------------------------------------------------------------------------


async def test_end_of_speech_during_an_interim_decode_preempts_it_and_closes_first():
    def speech(t: float) -> bool:
        return 0.3 <= t < 3.0 or 3.8 <= t < 8.0

    decoder = FakeDecoder(speech, gated=True)
    stream = make_stream(decoder)
    events: list = []
    position = 0
    step = int(0.1 * RATE)

    async def feed_until(seconds: float) -> None:
        nonlocal position, events
        while position < int(seconds * RATE):
            events += await stream.push(timed_audio(position, step))
            position += step
            await asyncio.sleep(0)  # let a decode task start

    # first utterance: feed until an interim decode is in flight, then keep it in flight
    while not decoder.calls:
        await feed_until(position / RATE + 0.1)
    in_flight = decoder.calls[0]
    assert not in_flight.final and in_flight.t1 < 3.0
    # the utterance pauses, ends (500 ms of silence) and the next one begins, while that decode
    # is still blocked: the pause makes the closing window due, the interim is abandoned for it
    await feed_until(6.0)
    kinds = [e.type for e in events if isinstance(e, SpeechEvent)]
    assert kinds == [SpeechEventType.SPEECH_BEGIN, SpeechEventType.SPEECH_END, SpeechEventType.SPEECH_BEGIN]
    assert stream.preempted == 1
    assert len(decoder.calls) == 2 and decoder.active == 1  # the abandoned interim, then the closing one
    closing = decoder.calls[1]
    # the next decode is the closing one: final=True, ending before the second utterance starts
    assert closing.final
    assert 3.0 <= closing.t1 <= 3.8, closing.t1
    decoder.entered.clear()
    decoder.release()
    await asyncio.wait_for(decoder.entered.wait(), 2.0)
    events += stream._take()
    assert final_words(events) == spoken(3.0, speech)  # nothing of the abandoned interim is lost
    # only then an interim of the second utterance, on the newest audio (from the first final's end on)
    nxt = decoder.calls[2]
    assert not nxt.final and nxt.t1 == pytest.approx(6.0, abs=0.01)
    assert nxt.t0 >= finals(events)[0].words[-1].end - 1e-6
    decoder.gated = False
    decoder.release()
    await feed_until(9.0)
    events += await stream.close()
    assert final_words(events) == spoken(8.0, speech)


# --- push never waits --------------------------------------------------------------------------


async def test_push_returns_without_waiting_for_the_decode_in_flight():
    def speech(t: float) -> bool:
        return t >= 0.2

    decoder = FakeDecoder(speech, cost=4.0 * SPEED)  # 4 s of wall time per decode
    stream = make_stream(decoder)
    step = int(0.1 * RATE)
    timings = []
    for lo in range(0, int(4.0 * RATE), step):
        started = time.perf_counter()
        await stream.push(timed_audio(lo, step))
        timings.append((time.perf_counter() - started, decoder.active))
        await asyncio.sleep(0.005)
    while_decoding = [t for t, active in timings if active]
    assert decoder.active == 1 and len(while_decoding) >= 20
    print(f"slowest push while a 4 s decode was in flight: {max(while_decoding) * 1000:.1f} ms")
    assert max(while_decoding) < 0.05
    await stream.cancel()


# --- backpressure ------------------------------------------------------------------------------


@pytest.mark.parametrize("cost", [0.2, 1.5])
async def test_buffer_never_exceeds_the_cap_plus_one_slice(cost):
    def speech(t: float) -> bool:
        return True  # a monologue

    class Babbler(FakeDecoder):
        """Never the same words twice: nothing is ever agreed, so nothing is committed to cut at."""

        async def __call__(self, audio, prompt, final=False):
            words = await super().__call__(audio, prompt, final)
            n = len(self.calls)
            return [Word(w.start, w.end, VOCAB[(n * 7 + i) % len(VOCAB)]) for i, w in enumerate(words)]

    cfg = StreamConfig(max_buffer_s=6.0, trim_buffer_s=3.0, max_utterance_s=6.0)
    decoder = Babbler(speech, cost=cost)
    stream = make_stream(decoder, cfg)
    seen = []

    def check(s: ChannelStream) -> None:
        seen.append(s.buffer.duration)
        assert s.buffer.duration <= cfg.max_buffer_s + SLICE_S + 1e-6

    # a fast replay (the gateway's accelerated mode) of 20 s, 0.5 s chunks, no pacing
    events: list = []
    for lo in range(0, 20 * RATE, RATE // 2):
        events += await stream.push(timed_audio(lo, RATE // 2))
        check(stream)
    events += await stream.close()
    print(f"cost {cost}: max buffer {stream.max_buffer_seen:.2f} s, {len(decoder.calls)} decodes")
    assert stream.max_buffer_seen <= cfg.max_buffer_s + SLICE_S + 1e-6
    assert max(seen) > cfg.trim_buffer_s  # the cap was actually approached
    assert len(finals(events)) >= 2  # forced finals at the cap keep the call moving
