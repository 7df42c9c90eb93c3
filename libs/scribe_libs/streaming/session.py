"""The streaming driver: call audio -> VAD -> buffer -> decode -> LocalAgreement-2 -> results.

One :class:`ChannelStream` per channel of a session; :class:`StreamSession` decodes the call's raw
bytes (:class:`~scribe_libs.callaudio.CallAudioDecoder`) and feeds each channel. It is what the
stream gateway runs (its ``CallSession`` adds storage and metrics around it). The decode itself is
the caller's ``decode(window_audio, prompt, final) -> list[Word]`` (sync or async; word times
relative to the window start), e.g. a ``Transcriber.Decode`` RPC at temperature 0.

Scheduling (DESIGN.md, "Data flow (streaming)": a session never has more than one decode in
flight, and a worker that is behind gets fewer interim decodes, never less audio):

- ``push`` never waits for a decode: it appends the audio, runs the VAD and starts a decode in
  the background when one is due and none is in flight. Results are handed to ``emit`` as soon
  as their decode returns (or collected and returned by the next ``push``/``drain``/``close``).
- Interim decodes are coalesced: while one is in flight, new audio only accumulates; when it
  returns, the next interim decode covers all the audio received by then (once
  ``min_decode_interval_s`` of new audio arrived). A slow worker thus costs interims, not words.
- Closing decodes go first: a VAD end of speech queues a *final* decode of the buffer up to the
  speech end plus the pad; queued finals run before any further interim, in order, and are sent
  with ``final=True`` (the worker serves them ahead of interim windows).
- Preemption: when a closing window becomes due while an interim decode is in flight, that
  interim is abandoned (its RPC cancelled; a worker skips a cancelled window still queued) and the
  closing decode starts at once.
- Speculative endpointing: once a pause inside speech has lasted ``speculate_after_s`` (less than
  the endpointing silence), the closing window (up to the pause plus the pad) is decoded with
  final priority. Its hypothesis feeds the interim; if the pause becomes the VAD's end of speech,
  the final uses it without decoding again (the final comes ``endpointing - speculate_after``
  sooner); if speech resumes, it was an interim.
- Silence is never decoded (tiny.en writes "Thank you." into pauses).

Memory bound (the buffer cut rules). The buffer starts at the end of the last committed word or,
in silence, ``speech_pad_ms`` before the VAD's classified audio; it is cut only forward, only to
one of those points, so no audio the decoder has not heard (or the VAD has not judged non-speech)
is dropped:

- in silence, with no final pending or decode in flight: cut to ``max(committed_end, vad_time -
  pad)`` after every slice (hold music, hours on hold: the buffer holds ``pad`` seconds);
- in speech, when the buffer is longer than ``trim_buffer_s``: cut at the last committed word's
  end (the committed text goes on as the prompt), so windows stay short;
- hard cap: when speech has run ``max_buffer_s`` (under Whisper's 30 s window) without a commit
  to cut at, the window is decoded and a final is forced with all its words but the last (which
  the window edge may have cut; its audio stays), and the buffer is cut at that final's end. If
  the decoder returned no word for the whole window, the heard audio is dropped but the last
  second. ``push`` waits for the decode in flight before the buffer would pass the cap
  (backpressure: the gateway stops reading, gRPC flow control stops the sender).
- finals on a monologue: once the committed-not-final words span ``max_utterance_s``, they are
  sent as a final (the unconfirmed tail stays pending).

Decode failures: the exception is kept and raised by the next ``push``/``drain``/``close``; the
buffer has not been cut for it. ``decode`` should do its own failover (retry on another worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from scribe_libs.audio import WHISPER_SAMPLE_RATE
from scribe_libs.callaudio import CallAudioDecoder
from scribe_libs.streaming.buffer import AudioBuffer
from scribe_libs.streaming.policy import LocalAgreementPolicy
from scribe_libs.streaming.types import Result, SpeechEvent, SpeechEventType, Word
from scribe_libs.streaming.vad import FRAME_SAMPLES, StreamingVad, VadConfig

#: ``decode(window_audio float32[n] 16 kHz, prompt, final) -> words`` with times relative to the
#: window; ``final`` is True for a window that closes an utterance.
Decoder = Callable[[np.ndarray, str, bool], Sequence[Word] | Awaitable[Sequence[Word]]]
#: What a stream yields.
StreamEvent = Result | SpeechEvent
#: Receives events as they happen (the gateway sends them to the caller).
Emit = Callable[[list[StreamEvent]], None]

#: Audio is processed in slices of this many samples (16 VAD frames, 0.512 s), so a large chunk
#: (an accelerated replay) is decoded on the same schedule as real-time audio.
SLICE_SAMPLES = 16 * FRAME_SAMPLES


@dataclass(frozen=True)
class StreamConfig:
    """Per-session streaming parameters.

    Attributes:
        vad: VAD decision parameters (``endpointing_ms`` is the caller's endpointing silence).
        min_decode_interval_s: New audio (s) between two interim decodes during speech (more
            when the worker is behind: interims are coalesced).
        trim_buffer_s: Buffer length (s) past which it is cut at the last committed word; keeps
            windows near 10 s (a short-input decode costs what its window costs).
        max_buffer_s: Hard cap (s) that forces a final; below Whisper's 30 s window.
        max_utterance_s: A final is sent once committed-not-final words span this long (s), so a
            monologue without pauses still gets finals (only agreed words go into it).
        interim_results: Emit interims (False: finals and speech events only).
        hold_in_partial_finals: Words a mid-utterance final (``max_utterance_s``) may not end on
            (see :meth:`LocalAgreementPolicy.finalize_committed`); None: any.
        speculate_after_s: Pause (s) after which the closing window is decoded speculatively;
            None: no speculation (the closing decode starts at the end of speech).
    """

    vad: VadConfig = field(default_factory=VadConfig)
    min_decode_interval_s: float = 1.0
    trim_buffer_s: float = 10.0
    max_buffer_s: float = 25.0
    max_utterance_s: float = 25.0
    interim_results: bool = True
    hold_in_partial_finals: Callable[[str], bool] | None = None
    speculate_after_s: float | None = 0.3


@dataclass(frozen=True)
class _Job:
    kind: str  # "interim", "speculative", "end" (VAD end of speech), "force", "close", "cap"
    end: float  # stream time (s) the window ends at
    pause: float | None = None  # "speculative"/"end": the pause's start (the SPEECH_END time)


@dataclass(frozen=True)
class _Speculation:
    pause: float
    start: float
    end: float
    words: list[Word]


class ChannelStream:
    """VAD + buffer + LocalAgreement-2 for one channel, driven by pushes of 16 kHz audio.

    Args:
        decode: The window decoder (see :data:`Decoder`). A plain function runs in a worker thread
            (``asyncio.to_thread``) so the event loop never blocks; a coroutine function is awaited.
        channel: Channel index (result ids ``"<channel>-<n>"``, events' ``channel``).
        config: Parameters.
        vad_session: Silero ONNX session to share between channels (each channel keeps its own
            state); None: faster-whisper's bundled model.
        emit: Receives events as they happen; None collects them for the next ``push``/``drain``/
            ``close`` to return.
    """

    def __init__(
        self,
        decode: Decoder,
        channel: int = 0,
        config: StreamConfig | None = None,
        vad_session=None,  # noqa: ANN001 - onnxruntime.InferenceSession
        emit: Emit | None = None,
    ):
        self.config = config or StreamConfig()
        self.channel = channel
        self._decode = decode
        self._emit_to = emit
        self.vad = StreamingVad(self.config.vad, session=vad_session, channel=channel)
        self.policy = LocalAgreementPolicy(channel)
        # Capacity: the cap plus one slice and a margin; reaching it would be a bug (OverflowError).
        self.buffer = AudioBuffer(WHISPER_SAMPLE_RATE, self.config.max_buffer_s + 5.0)
        self._pad = self.config.vad.speech_pad_ms / 1000
        self._last_decode_end = 0.0
        self._finals_due: deque[_Job] = deque()
        self._speculated: float | None = None  # pause a speculative closing decode was started for
        self._speculation: _Speculation | None = None
        self._interim_call: asyncio.Future | None = None
        self._preempted = False
        self.preempted = 0
        """Interim decodes abandoned because a closing window became due."""
        self._task: asyncio.Task | None = None
        self._error: BaseException | None = None
        self._ready: list[StreamEvent] = []
        self.decodes = 0
        """Decode calls made so far."""
        self.max_buffer_seen = 0.0
        """Longest buffer (s) held so far (for memory checks)."""

    @property
    def received_seconds(self) -> float:
        """Audio received on this channel, seconds."""
        return self.buffer.end

    async def push(self, samples: np.ndarray) -> list[StreamEvent]:
        """Process new audio (returns without waiting for decodes, except at the buffer cap).

        Args:
            samples: float32 mono 16 kHz, any length (long chunks are processed in 0.512 s slices).

        Returns:
            Events not handed to ``emit`` yet, in the order they happened.

        Raises:
            Exception: what a background decode raised.
        """
        self._raise_error()
        samples = np.asarray(samples, dtype=np.float32)
        for lo in range(0, len(samples), SLICE_SAMPLES):
            await self._push_slice(samples[lo : lo + SLICE_SAMPLES])
        return self._take()

    async def drain(self) -> list[StreamEvent]:
        """Wait until no decode is in flight or due; returns the events collected."""
        await self._settle()
        return self._take()

    async def force_finalize(self) -> list[StreamEvent]:
        """Close the current utterance now (the caller's force-finalize control message).

        Returns:
            Events collected, ending with the final (none when no word was heard since the last).
        """
        await self._settle()
        if self.vad.in_speech or self.policy.pending_words:
            await self._run(_Job("force", self.buffer.end))
        return self._take()

    async def close(self) -> list[StreamEvent]:
        """End of stream: end any speech in progress and return the last events and final."""
        await self._settle()
        if self.vad.in_speech or self.policy.pending_words:
            if self.vad.speaking:
                self._emit([SpeechEvent(SpeechEventType.SPEECH_END, self.buffer.end, self.channel)])
            await self._run(_Job("close", self.buffer.end))
        return self._take()

    async def cancel(self) -> None:
        """Stop the decode in flight (the call was cancelled); nothing more is emitted."""
        self._finals_due.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- internals -----------------------------------------------------------------------------

    def _emit(self, events: Sequence[StreamEvent]) -> None:
        if not events:
            return
        if self._emit_to is not None:
            self._emit_to(list(events))
        else:
            self._ready.extend(events)

    def _take(self) -> list[StreamEvent]:
        out, self._ready = self._ready, []
        return out

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def _settle(self) -> None:
        while self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)
        self._raise_error()

    async def _push_slice(self, samples: np.ndarray) -> None:
        cfg = self.config
        if self.buffer.duration + len(samples) / WHISPER_SAMPLE_RATE > cfg.max_buffer_s and self._task is not None:
            await self._settle()  # backpressure: the decode in flight decides where to cut
        self.buffer.append(samples)
        self.max_buffer_seen = max(self.max_buffer_seen, self.buffer.duration)
        events: list[StreamEvent] = []
        for event in self.vad.process(samples):
            events.append(event)
            if event.type is SpeechEventType.SPEECH_BEGIN:
                self._last_decode_end = max(self._last_decode_end, event.time)
            else:
                self._finals_due.append(_Job("end", min(event.time + self._pad, self.buffer.end), event.time))
        self._emit(events)
        call = self._interim_call
        if call is not None and not call.done() and (self._finals_due or self._speculation_due()):
            # A closing window is due: the interim in flight (often still queued at a busy worker)
            # is abandoned so the closing decode goes now; its audio is in the closing window.
            self._preempted = True
            call.cancel()
        if self.vad.speaking and self.buffer.duration >= cfg.max_buffer_s:
            await self._settle()
            if self.buffer.duration >= cfg.max_buffer_s:
                await self._run(_Job("cap", self.buffer.end))
        self._kick()
        self._trim()

    def _next_job(self) -> _Job | None:
        if self._finals_due:
            return self._finals_due.popleft()
        cfg = self.config
        if self._speculation_due():
            pause = self.vad.pause_start or 0.0
            self._speculated = pause
            return _Job("speculative", min(pause + self._pad, self.buffer.end), pause)
        if self.vad.speaking and self.buffer.end - self._last_decode_end >= cfg.min_decode_interval_s:
            return _Job("interim", self.buffer.end)
        return None

    def _speculation_due(self) -> bool:
        after, pause = self.config.speculate_after_s, self.vad.pause_start
        return (after is not None and pause is not None and self._speculated != pause
                and self.vad.processed_time - pause >= after)

    def _kick(self) -> None:
        if self._task is not None:
            return  # coalesced: the next interim decode covers everything received by then
        job = self._next_job()
        if job is not None:
            self._task = asyncio.create_task(self._work(job))

    async def _work(self, job: _Job | None) -> None:
        try:
            while job is not None:
                await self._run(job)
                job = self._next_job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - raised by the next push/drain/close
            self._error = exc
        finally:
            self._task = None

    async def _run(self, job: _Job) -> None:
        cfg = self.config
        spec = self._speculation
        if job.kind == "end" and spec is not None and spec.pause == job.pause and spec.start >= self.buffer.start:
            # The pause decoded speculatively is the end of speech: its hypothesis closes it.
            start, end, words = spec.start, spec.end, spec.words
        else:
            start = self.buffer.start
            end = min(job.end, self.buffer.end)
            audio = self.buffer.audio(start, end)
            self._last_decode_end = max(self._last_decode_end, end)
            words = []
            if len(audio):
                prompt = self.policy.prompt(before=start)
                self.decodes += 1
                if job.kind != "interim":
                    words = await self._call(audio, prompt, True)
                else:
                    self._interim_call = asyncio.ensure_future(self._call(audio, prompt, False))
                    try:
                        words = await self._interim_call
                    except asyncio.CancelledError:
                        if not self._preempted:
                            raise
                        self.preempted += 1
                        return
                    finally:
                        self._interim_call = None
                        self._preempted = False
        self._speculation = None
        if job.kind == "speculative":
            self._speculation = _Speculation(job.pause or 0.0, start, end, words)
        if job.kind in ("interim", "speculative"):
            results = [r for r in self.policy.feed(words, start, end) if cfg.interim_results]
            first = self.policy.committed_start
            if self.vad.speaking and first is not None and self.policy.committed_end - first >= cfg.max_utterance_s:
                results += self.policy.finalize_committed(cfg.hold_in_partial_finals)
        elif job.kind in ("end", "close"):
            results = self.policy.end_of_speech(words, start, end)
            self.buffer.cut_to(self.policy.committed_end)
        elif job.kind == "force":
            results = self.policy.force_finalize(words, start, end)
            self.buffer.cut_to(self.policy.committed_end)
        else:  # cap
            results = self.policy.force_finalize(words, start, end, hold_last_word=True)
            self.buffer.cut_to(self.policy.committed_end)
            if self.buffer.duration > cfg.trim_buffer_s:
                # No word to cut at: the audio up to the held word (or the last second) was heard
                # and gave nothing (or only a loop that was cut).
                held = self.policy.held_word
                target = self.buffer.end - 1.0 if held is None else min(held.start, self.buffer.end - 1.0)
                self.buffer.cut_to(max(self.policy.committed_end, target))
        self._emit(results)
        self._trim()

    def _trim(self) -> None:
        if not self.vad.in_speech:
            if not self._finals_due and self._task is None:
                self.buffer.cut_to(max(self.policy.committed_end, self.vad.processed_time - self._pad))
        elif self.buffer.duration > self.config.trim_buffer_s:
            self.buffer.cut_to(self.policy.committed_end)

    async def _call(self, audio: np.ndarray, prompt: str, final: bool) -> list[Word]:
        decode = self._decode
        if inspect.iscoroutinefunction(decode) or inspect.iscoroutinefunction(
            getattr(decode, "__call__", None)  # noqa: B004 - callable objects with async __call__
        ):
            words = await decode(audio, prompt, final)
        else:
            words = await asyncio.to_thread(decode, audio, prompt, final)
            if inspect.isawaitable(words):
                words = await words
        return list(words)


class StreamSession:
    """A call: raw audio bytes in, per-channel results and speech events out.

    Args:
        decode: The window decoder shared by the channels, or one per channel (see :data:`Decoder`).
        encoding: ``"LINEAR16"``, ``"MULAW"`` or ``"ALAW"``.
        sample_rate: Hz.
        channels: 1 or 2 interleaved channels; each is recognised on its own.
        config: Streaming parameters.
        vad_session: Shared Silero session (None: faster-whisper's).
        emit: Receives events as they happen (None: returned by push/drain/close).
        field_prefix: Prefix of the field named in a format error (``"config."`` in the gateway).

    Raises:
        InvalidArgument: Unsupported encoding, rate or channel count (see
            :func:`scribe_libs.callaudio.validate_format`).
    """

    def __init__(  # noqa: PLR0913
        self,
        decode: Decoder | Sequence[Decoder],
        encoding: str,
        sample_rate: int,
        channels: int = 1,
        config: StreamConfig | None = None,
        vad_session=None,  # noqa: ANN001
        emit: Emit | None = None,
        field_prefix: str = "",
    ):
        self.decoder = CallAudioDecoder(encoding, sample_rate, channels, field_prefix=field_prefix)
        decoders = list(decode) if isinstance(decode, Sequence) else [decode] * channels
        self.channels = [
            ChannelStream(decoders[c], c, config, vad_session, emit) for c in range(channels)
        ]

    @property
    def audio_seconds(self) -> float:
        """Seconds of call audio received (per channel)."""
        return self.decoder.input_seconds

    @property
    def decodes(self) -> int:
        """Decode calls made so far (all channels)."""
        return sum(c.decodes for c in self.channels)

    def decode_audio(self, chunk: bytes) -> list[np.ndarray]:
        """Raw bytes to one float32 16 kHz array per channel (no recognition yet)."""
        return self.decoder.decode(chunk)

    async def push_samples(self, per_channel: Sequence[np.ndarray]) -> list[StreamEvent]:
        """Process decoded audio on every channel; returns the events collected."""
        groups = await asyncio.gather(*(c.push(s) for c, s in zip(self.channels, per_channel, strict=True)))
        return [e for g in groups for e in g]

    async def push(self, chunk: bytes) -> list[StreamEvent]:
        """Decode a chunk of raw bytes and process every channel; returns the events collected."""
        return await self.push_samples(self.decode_audio(chunk))

    async def drain(self) -> list[StreamEvent]:
        """Wait for every channel's decodes; returns the events collected."""
        groups = await asyncio.gather(*(c.drain() for c in self.channels))
        return [e for g in groups for e in g]

    async def force_finalize(self) -> list[StreamEvent]:
        """Force a final on every channel."""
        groups = await asyncio.gather(*(c.force_finalize() for c in self.channels))
        return [e for g in groups for e in g]

    async def close(self) -> list[StreamEvent]:
        """End of stream: flush the resamplers and close every channel."""
        events = await self.push_samples(self.decoder.flush())
        groups = await asyncio.gather(*(c.close() for c in self.channels))
        return events + [e for g in groups for e in g]

    async def cancel(self) -> None:
        """Stop every channel's decode in flight."""
        await asyncio.gather(*(c.cancel() for c in self.channels))
