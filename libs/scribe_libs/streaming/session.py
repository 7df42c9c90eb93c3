"""The streaming driver: call audio -> VAD -> buffer -> decode -> LocalAgreement-2 -> results.

One :class:`ChannelStream` per channel of a session; :class:`StreamSession` decodes the call's raw
bytes (:class:`~scribe_libs.callaudio.CallAudioDecoder`) and feeds each channel. The decode itself
is the caller's ``decode(window_audio, prompt) -> list[Word]`` (sync or async; word times relative
to the window start), e.g. a ``Transcriber.Decode`` RPC at temperature 0.

When a window is decoded (DESIGN.md: every decode pays ~0.55 s for tiny.en whatever the window
length, and tiny.en writes "Thank you." into pauses, so silence is never decoded):

- while the VAD reports speech, once ``min_decode_interval_s`` of new audio arrived since the last
  decode: an interim decode of the whole buffer (LocalAgreement commits what two agree on);
- at the VAD's end of speech: one decode of the buffer up to the speech end plus the pad; its words
  complete the final;
- on :meth:`ChannelStream.force_finalize` and :meth:`ChannelStream.close`: one decode of the buffer,
  then a final.

Memory bound (the buffer cut rules). The buffer starts at the end of the last committed word or,
in silence, ``speech_pad_ms`` before the VAD's classified audio; it is cut only forward, only to
one of those points, so no audio the decoder has not heard (or the VAD has not judged non-speech)
is dropped:

- in silence: cut to ``max(committed_end, vad_time - pad)`` after every chunk (hold music, hours on
  hold: the buffer holds ``pad`` seconds);
- in speech, when the buffer is longer than ``trim_buffer_s`` (15 s, whisper_streaming's
  ``buffer_trimming_sec``): cut at the last committed word's end (the committed text goes on as
  the prompt);
- hard cap: when speech has run ``max_buffer_s`` (25 s, under Whisper's 30 s window) without a
  commit to cut at, the window is decoded and a final is forced with all its words but the last
  (which the window edge may have cut; its audio stays), and the buffer is cut at that final's
  end. If the decoder returned no word for the whole window (mumble, noise the VAD took for
  speech), the heard audio is dropped but the last second.
- finals on a monologue: once the committed-not-final words span ``max_utterance_s`` (25 s), they
  are sent as a final (the unconfirmed tail stays pending), so speech without pauses still gets
  finals and the policy's pending words stay bounded too.

So the buffer never exceeds ``max_buffer_s`` plus one push slice (0.512 s) on a call of any length.

Decode failures: the exception propagates out of ``push``; the buffer has not been cut, but the
chunk's remaining slices are not processed, so ``decode`` should do its own failover (retry on
another worker) rather than raise.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from scribe_libs.callaudio import TARGET_SAMPLE_RATE, CallAudioDecoder
from scribe_libs.streaming.buffer import AudioBuffer
from scribe_libs.streaming.policy import LocalAgreementPolicy
from scribe_libs.streaming.types import Result, SpeechEvent, SpeechEventType, Word
from scribe_libs.streaming.vad import FRAME_SAMPLES, StreamingVad, VadConfig

#: ``decode(window_audio float32[n] 16 kHz, prompt) -> words`` with times relative to the window.
Decoder = Callable[[np.ndarray, str], Sequence[Word] | Awaitable[Sequence[Word]]]
#: What a stream yields.
StreamEvent = Result | SpeechEvent

#: Audio is processed in slices of this many samples (16 VAD frames, 0.512 s), so a large chunk
#: (an accelerated replay) is decoded on the same schedule as real-time audio.
SLICE_SAMPLES = 16 * FRAME_SAMPLES


@dataclass(frozen=True)
class StreamConfig:
    """Per-session streaming parameters.

    Attributes:
        vad: VAD decision parameters (``endpointing_ms`` is the caller's endpointing silence).
        min_decode_interval_s: New audio (s) between two interim decodes during speech. 1.0 s: a
            decode costs ~0.55 s on tiny.en/2 cores (DESIGN.md), so decoding more often cannot
            keep up with real time.
        trim_buffer_s: Buffer length (s) past which it is cut at the last committed word.
        max_buffer_s: Hard cap (s) that forces a final; below Whisper's 30 s window.
        max_utterance_s: A final is sent once committed-not-final words span this long (s), so a
            monologue without pauses still gets finals (only agreed words go into it).
        interim_results: Emit interims (False: finals and speech events only).
    """

    vad: VadConfig = field(default_factory=VadConfig)
    min_decode_interval_s: float = 1.0
    trim_buffer_s: float = 15.0
    max_buffer_s: float = 25.0
    max_utterance_s: float = 25.0
    interim_results: bool = True


class ChannelStream:
    """VAD + buffer + LocalAgreement-2 for one channel, driven by pushes of 16 kHz audio.

    Args:
        decode: The window decoder (see :data:`Decoder`). A plain function runs in a worker thread
            (``asyncio.to_thread``) so the event loop never blocks; a coroutine function is awaited.
        channel: Channel index (result ids ``"<channel>-<n>"``, events' ``channel``).
        config: Parameters.
        vad_session: Silero ONNX session to share between channels (each channel keeps its own
            state); None: faster-whisper's bundled model.
    """

    def __init__(
        self,
        decode: Decoder,
        channel: int = 0,
        config: StreamConfig | None = None,
        vad_session=None,  # noqa: ANN001 - onnxruntime.InferenceSession
    ):
        self.config = config or StreamConfig()
        self.channel = channel
        self._decode = decode
        self.vad = StreamingVad(self.config.vad, session=vad_session, channel=channel)
        self.policy = LocalAgreementPolicy(channel)
        # Capacity: the cap plus one slice and a margin; reaching it would be a bug (OverflowError).
        self.buffer = AudioBuffer(TARGET_SAMPLE_RATE, self.config.max_buffer_s + 5.0)
        self._pad = self.config.vad.speech_pad_ms / 1000
        self._last_decode_end = 0.0
        self.decodes = 0
        """Decode calls made so far."""
        self.max_buffer_seen = 0.0
        """Longest buffer (s) held so far (for memory checks)."""

    @property
    def received_seconds(self) -> float:
        """Audio received on this channel, seconds."""
        return self.buffer.end

    async def push(self, samples: np.ndarray) -> list[StreamEvent]:
        """Process new audio.

        Args:
            samples: float32 mono 16 kHz, any length (long chunks are processed in 0.512 s slices).

        Returns:
            Speech events and results, in the order they happened.
        """
        samples = np.asarray(samples, dtype=np.float32)
        events: list[StreamEvent] = []
        for lo in range(0, len(samples), SLICE_SAMPLES):
            events += await self._push_slice(samples[lo : lo + SLICE_SAMPLES])
        return events

    async def force_finalize(self) -> list[StreamEvent]:
        """Close the current utterance now (the caller's force-finalize control message).

        Returns:
            The final (nothing when no word was heard since the last final).
        """
        if not self.vad.in_speech and not self.policy.pending_words:
            return []
        words, start, end = await self._decode_window(self.buffer.end)
        results = self.policy.force_finalize(words, start, end)
        self.buffer.cut_to(self.policy.committed_end)
        return list(results)

    async def close(self) -> list[StreamEvent]:
        """End of stream: end any speech in progress and return the last final."""
        events: list[StreamEvent] = []
        if self.vad.in_speech or self.policy.pending_words:
            if self.vad.speaking:
                events.append(SpeechEvent(SpeechEventType.SPEECH_END, self.buffer.end, self.channel))
            words, start, end = await self._decode_window(self.buffer.end)
            events += self.policy.end_of_speech(words, start, end)
            self.buffer.cut_to(self.policy.committed_end)
        return events

    # --- internals -----------------------------------------------------------------------------

    async def _push_slice(self, samples: np.ndarray) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        self.buffer.append(samples)
        self.max_buffer_seen = max(self.max_buffer_seen, self.buffer.duration)
        for event in self.vad.process(samples):
            events.append(event)
            if event.type is SpeechEventType.SPEECH_BEGIN:
                self._last_decode_end = max(self._last_decode_end, event.time)
            else:
                events += await self._end_of_speech(event.time)
        cfg = self.config
        speaking = self.vad.speaking
        if speaking and self.buffer.duration >= cfg.max_buffer_s:
            events += await self._cap()
        elif speaking and self.buffer.end - self._last_decode_end >= cfg.min_decode_interval_s:
            words, start, end = await self._decode_window(self.buffer.end)
            events += [r for r in self.policy.feed(words, start, end) if cfg.interim_results]
        first = self.policy.committed_start
        if speaking and first is not None and self.policy.committed_end - first >= cfg.max_utterance_s:
            events += self.policy.finalize_committed()
        self._trim()
        return events

    async def _end_of_speech(self, speech_end: float) -> list[StreamEvent]:
        end = min(speech_end + self._pad, self.buffer.end)
        words, start, end = await self._decode_window(end)
        results = self.policy.end_of_speech(words, start, end)
        self.buffer.cut_to(self.policy.committed_end)
        return list(results)

    async def _cap(self) -> list[StreamEvent]:
        words, start, end = await self._decode_window(self.buffer.end)
        results = self.policy.force_finalize(words, start, end, hold_last_word=True)
        self.buffer.cut_to(self.policy.committed_end)
        if self.buffer.duration > self.config.trim_buffer_s:
            # No word to cut at: the audio up to the held word (or the last second) was heard and
            # gave nothing (or only a loop that was cut).
            held = self.policy.held_word
            target = self.buffer.end - 1.0 if held is None else min(held.start, self.buffer.end - 1.0)
            self.buffer.cut_to(max(self.policy.committed_end, target))
        return list(results)

    def _trim(self) -> None:
        if not self.vad.in_speech:
            self.buffer.cut_to(max(self.policy.committed_end, self.vad.processed_time - self._pad))
        elif self.buffer.duration > self.config.trim_buffer_s:
            self.buffer.cut_to(self.policy.committed_end)

    async def _decode_window(self, end: float) -> tuple[list[Word], float, float]:
        start = self.buffer.start
        audio = self.buffer.audio(start, end)
        self._last_decode_end = max(self._last_decode_end, end)
        if len(audio) == 0:
            return [], start, end
        prompt = self.policy.prompt(before=start)
        self.decodes += 1
        if inspect.iscoroutinefunction(self._decode) or inspect.iscoroutinefunction(
            getattr(self._decode, "__call__", None)  # noqa: B004 - callable objects with async __call__
        ):
            words = await self._decode(audio, prompt)
        else:
            words = await asyncio.to_thread(self._decode, audio, prompt)
            if inspect.isawaitable(words):
                words = await words
        return list(words), start, end


class StreamSession:
    """A call: raw audio bytes in, per-channel results and speech events out.

    Args:
        decode: The window decoder shared by the channels (see :data:`Decoder`).
        encoding: ``"LINEAR16"``, ``"MULAW"`` or ``"ALAW"``.
        sample_rate: Hz.
        channels: 1 or 2 interleaved channels; each is recognised on its own.
        config: Streaming parameters.
        vad_session: Shared Silero session (None: faster-whisper's).

    Raises:
        InvalidArgument: Unsupported encoding, rate or channel count (see
            :func:`scribe_libs.callaudio.validate_format`).
    """

    def __init__(
        self,
        decode: Decoder,
        encoding: str,
        sample_rate: int,
        channels: int = 1,
        config: StreamConfig | None = None,
        vad_session=None,  # noqa: ANN001
    ):
        self.decoder = CallAudioDecoder(encoding, sample_rate, channels)
        self.channels = [ChannelStream(decode, c, config, vad_session) for c in range(channels)]

    @property
    def audio_seconds(self) -> float:
        """Seconds of call audio received (per channel)."""
        return self.decoder.input_seconds

    async def push(self, chunk: bytes) -> list[StreamEvent]:
        """Decode a chunk of raw bytes and process every channel; returns their events."""
        events: list[StreamEvent] = []
        for stream, samples in zip(self.channels, self.decoder.decode(chunk), strict=True):
            events += await stream.push(samples)
        return events

    async def force_finalize(self) -> list[StreamEvent]:
        """Force a final on every channel."""
        events: list[StreamEvent] = []
        for stream in self.channels:
            events += await stream.force_finalize()
        return events

    async def close(self) -> list[StreamEvent]:
        """End of stream: flush the resamplers and close every channel."""
        events: list[StreamEvent] = []
        for stream, samples in zip(self.channels, self.decoder.flush(), strict=True):
            events += await stream.push(samples)
            events += await stream.close()
        return events
