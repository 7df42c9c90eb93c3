"""One live call: raw audio in, results out, and the finished call stored as a job.

A :class:`CallSession` runs a :class:`~scribe_libs.streaming.StreamSession` (the driver the unit
tests test: one decode in flight per channel, coalesced interims, closing decodes first) and turns
its events into responses on :attr:`CallSession.out` as they happen. Each channel's decode callable
sends a ``Transcriber.Decode`` (with the channel's session id and the window's priority) through
:class:`~scribe_stream_gateway.workers.WorkerPool`: first to the worker the session was admitted
on, failing over to others, so a failing worker never loses the channel's audio.

Text features (:mod:`scribe_stream_gateway.livetext`): glossary terms bias every window; results
sent to the caller get the glossary corrections and, with ``redact``, redaction (interims also hide
every digit, since half a number cannot be classified yet); the stored raw transcript is redacted
before it is written.

Storage (DESIGN.md: calls and files share one history): :meth:`CallSession.store` writes the finals
as ``results/<job_id>/raw.json`` (one segment per final, with its channel), creates the job record
(pool ``stream``, state POSTPROCESSING) and publishes the PostprocessTask, exactly the transcriber's
hand-off, so postprocess renders json/txt/srt/vtt and completes it. With ``retain_audio`` the call's
audio is recorded as it arrives to a temporary 16 kHz 16-bit WAV (on disk, so memory stays bounded, in
a per-call directory under ``<temp_dir>/scribe-stream-gateway``, removed when the call ends)
and uploaded as the job's original audio; otherwise no audio is written anywhere.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import datetime
import logging
import tempfile
import time
import typing
import wave
from pathlib import Path

import numpy as np

from scribe.v1 import jobs_pb2, streaming_pb2, transcriber_pb2, transcript_pb2
from scribe_libs import bus as busmod
from scribe_libs import metrics
from scribe_libs.audio import WHISPER_SAMPLE_RATE
from scribe_libs.callaudio import encode_linear16
from scribe_libs.formats import render
from scribe_libs.jobs import AUDIO_BUCKET, RESULTS_BUCKET, JobStore, audio_key, now_timestamp, raw_transcript_key
from scribe_libs.objectstore import ObjectStore
from scribe_libs.streaming import Result, SpeechEvent, SpeechEventType, StreamConfig, StreamSession, VadConfig, Word
from scribe_libs.tempdirs import OwnedTempDir
from scribe_libs.textproc import redact_transcript
from scribe_stream_gateway.livetext import LiveText, has_digit, mask_digits
from scribe_stream_gateway.options import SessionOptions
from scribe_stream_gateway.workers import Placement, WorkerPool

log = logging.getLogger(__name__)

R = streaming_pb2.StreamingRecognizeResponse
#: Silero speech threshold for telephone-band audio (<= 8 kHz, upsampled to 16 kHz). Without the
#: energy above 4 kHz Silero scores soft onsets lower: on jfk.flac as 8 kHz mu-law the default 0.5
#: started "ask not" 0.7 s late and the word "ask" was lost; 0.35 found it at the 16 kHz position
#: (DTMF and tones stay below 0.25, see scribe_libs.streaming.vad).
NARROWBAND_VAD_THRESHOLD = 0.35
#: Finals of a channel this close (s) are pieces of one utterance: one segment of the stored call,
#: up to MAX_SEGMENT_SECONDS (a VAD end of speech needs >= 0.5 s of silence, endpointing's default).
MERGE_GAP_SECONDS = 0.5
MAX_SEGMENT_SECONDS = 20.0
#: Words of a channel's previous finals kept as left context for glossary and redaction rules.
CONTEXT_WORDS = 8
_EVENT_TYPES = {
    SpeechEventType.SPEECH_BEGIN: streaming_pb2.SPEECH_EVENT_TYPE_SPEECH_BEGIN,
    SpeechEventType.SPEECH_END: streaming_pb2.SPEECH_EVENT_TYPE_SPEECH_END,
}


class CallSession:
    """The state of one StreamingRecognize call.

    Args:
        job_id: Id the stored call will get.
        options: The validated config.
        workers: Decode with failover.
        vad_session: Shared Silero ONNX session.
        max_utterance_seconds: See :class:`~scribe_libs.streaming.StreamConfig`.
        live_text: Glossary bias/corrections and redaction (None: neither).
        placement: The worker the session was admitted on (its windows go there first).
        temp: The gateway's own temporary directory; the recording (``retain_audio``) lives in a
            sub-directory of it, removed by :meth:`close` (None: the platform's temporary directory).
    """

    def __init__(  # noqa: D107, PLR0913
        self,
        job_id: str,
        options: SessionOptions,
        workers: WorkerPool,
        vad_session=None,  # noqa: ANN001 - onnxruntime session
        max_utterance_seconds: float = StreamConfig.max_utterance_s,
        live_text: LiveText | None = None,
        placement: Placement | None = None,
        min_decode_interval_seconds: float = StreamConfig.min_decode_interval_s,
        temp: OwnedTempDir | None = None,
    ):
        self.job_id = job_id
        self.options = options
        self.workers = workers
        self.live_text = live_text
        self.placement = placement
        threshold = NARROWBAND_VAD_THRESHOLD if options.sample_rate <= 8000 else VadConfig.threshold
        stream_config = StreamConfig(
            vad=VadConfig(endpointing_ms=options.endpointing_ms, threshold=threshold),
            interim_results=options.interim_results,
            max_utterance_s=max_utterance_seconds,
            min_decode_interval_s=min_decode_interval_seconds,
            hold_in_partial_finals=has_digit if options.config.redact else None,
        )
        self.out: asyncio.Queue[R] = asyncio.Queue()
        """Responses for the caller, in the order they happened (interims, finals, speech events)."""
        self.stream = StreamSession(
            [self._decoder_for(c) for c in range(options.channels)], options.encoding, options.sample_rate,
            options.channels, stream_config, vad_session, emit=self._emit, field_prefix="config.",
        )
        self.started = time.monotonic()
        self.start_timestamp = now_timestamp()
        self.finals: list[Result] = []
        self.decodes = 0
        self.retries = 0
        self.language = options.language
        self.model = options.model
        self.worker_ids: set[str] = set()
        self._arrivals: collections.deque[tuple[float, float]] = collections.deque(maxlen=4096)
        self._onset: dict[int, float] = {}
        self._context: dict[int, tuple[Word, ...]] = {}
        """Per channel: the last words of its previous finals (left context for the text rules)."""
        self._speech_end: dict[int, float] = {}
        self.owner = ""
        """Owner of the stored job (the caller's API key owner)."""
        self._recording: typing.IO[bytes] | None = None
        self._recording_dir = contextlib.ExitStack()
        self._wav: wave.Wave_write | None = None
        if options.config.retain_audio:
            if temp is None:
                temp = OwnedTempDir(tempfile.gettempdir(), "stream-gateway").open()
                self._recording_dir.callback(temp.close)
            folder = self._recording_dir.enter_context(temp.item("call-"))
            self._recording = (folder / "call.wav").open("w+b")  # noqa: SIM115 - closed in close()
            self._wav = wave.open(self._recording, "wb")  # noqa: SIM115 - closed in close()
            self._wav.setnchannels(options.channels)
            self._wav.setsampwidth(2)
            self._wav.setframerate(WHISPER_SAMPLE_RATE)

    @property
    def audio_seconds(self) -> float:
        """Call audio received per channel, seconds."""
        return self.stream.audio_seconds

    # --- the call ------------------------------------------------------------------------------

    async def audio(self, chunk: bytes) -> None:
        """Process a chunk of raw audio (its results arrive on :attr:`out` as they are decoded)."""
        per_channel = self.stream.decode_audio(chunk)
        # When audio up to this stream time arrived (wall clock), for the latency histograms.
        self._arrivals.append((self.stream.audio_seconds, time.monotonic()))
        if self._wav is not None and len(per_channel[0]):
            frames = np.stack(per_channel, axis=1) if len(per_channel) > 1 else per_channel[0]
            await asyncio.to_thread(self._wav.writeframes, encode_linear16(frames))
        await self.stream.push_samples(per_channel)

    def _arrived(self, stream_seconds: float) -> float | None:
        """Wall-clock (monotonic) time the audio up to ``stream_seconds`` had arrived, if still known."""
        index = bisect.bisect_left(self._arrivals, (stream_seconds, float("-inf")))
        return self._arrivals[index][1] if index < len(self._arrivals) else None

    def _observe(self, event) -> None:  # noqa: ANN001 - a SpeechEvent or Result
        """Record first-interim latency (after speech onset) and final latency (after end of speech)."""
        now = time.monotonic()
        if isinstance(event, SpeechEvent):
            if event.type is SpeechEventType.SPEECH_BEGIN:
                self._onset[event.channel] = event.time
            else:
                self._speech_end[event.channel] = event.time
            return
        onset = self._onset.pop(event.channel, None)
        arrived = self._arrived(onset) if onset is not None else None
        if arrived is not None:
            metrics.first_interim_latency.record(now - arrived)
        if event.is_final:
            end = self._speech_end.pop(event.channel, None)
            arrived = self._arrived(end) if end is not None else None
            if arrived is not None:
                metrics.final_latency.record(now - arrived)

    async def force_finalize(self) -> None:
        """Close the utterance in progress on every channel."""
        await self.stream.force_finalize()

    async def finish(self) -> None:
        """End of the caller's audio: flush the resamplers, close every channel (the last finals)."""
        await self.stream.close()

    def summary(self, job_id: str) -> R:
        """The end-of-stream summary."""
        return R(
            summary=streaming_pb2.StreamSummary(
                audio_seconds=round(self.audio_seconds, 3), job_id=job_id, final_results=len(self.finals),
                decodes=self.decodes, decode_retries=self.retries,
            )
        )

    async def cancel(self) -> None:
        """Stop the decodes in flight (the caller went away)."""
        await self.stream.cancel()

    def close(self) -> None:
        """Release the recording and the session's place on its worker (idempotent)."""
        if self.placement is not None:
            self.workers.release(self.placement)
            self.placement = None
        if self._wav is not None:
            with contextlib.suppress(Exception):
                self._wav.close()
            self._wav = None
        if self._recording is not None:
            with contextlib.suppress(Exception):
                self._recording.close()
            self._recording = None
        self._recording_dir.close()  # removes the recording's directory

    def _decoder_for(self, channel: int):  # noqa: ANN202 - the ChannelStream decode coroutine
        hotwords = self.live_text.hotwords if self.live_text is not None else self.options.hotwords
        session_id = f"{self.job_id}/{channel}"

        async def decode(audio: np.ndarray, prompt: str, final: bool) -> list[Word]:
            request = transcriber_pb2.DecodeRequest(
                audio=encode_linear16(audio), prompt=prompt, language=self.options.language,
                allowed_languages=self.options.allowed_languages,
                model=self.options.model, word_timestamps=True, hotwords=hotwords, session_id=session_id,
                priority=transcriber_pb2.DECODE_PRIORITY_FINAL if final else transcriber_pb2.DECODE_PRIORITY_INTERIM,
            )
            response, retries = await self.workers.decode(request, self.placement)
            self.decodes += 1
            self.retries += retries
            self.worker_ids.add(response.worker_id)
            if response.language and not self.language:
                self.language = response.language
            if response.model:
                self.model = response.model
            return [Word(w.start, w.end, w.word, w.probability) for w in response.words]

        return decode

    def _emit(self, events: list) -> None:
        for response in self._responses(events):
            self.out.put_nowait(response)

    def _responses(self, events: list) -> list[R]:
        out: list[R] = []
        for event in events:
            self._observe(event)
            if isinstance(event, SpeechEvent):
                out.append(R(speech_event=streaming_pb2.SpeechEvent(
                    type=_EVENT_TYPES[event.type], time=round(event.time, 3), channel=event.channel,
                    role=self.options.roles[event.channel],
                )))
                continue
            if event.is_final:
                self.finals.append(event)
            text, words = event.text, event.words
            if self.live_text is not None:
                context = self._context.get(event.channel, ())
                text, words = self.live_text.apply(text, words, context)
                if self.live_text.redacts and not event.is_final:
                    text, words = mask_digits(text, words)
                if event.is_final:
                    self._context[event.channel] = (*context, *event.words)[-CONTEXT_WORDS:]
            result = streaming_pb2.StreamingResult(
                result_id=event.result_id, is_final=event.is_final, stability=event.stability, text=text,
                channel=event.channel, role=self.options.roles[event.channel], language=self.language,
                start=round(event.start, 3), end=round(event.end, 3),
            )
            if self.options.word_timestamps:
                result.words.extend(
                    transcript_pb2.Word(start=round(w.start, 3), end=round(w.end, 3), word=w.text,
                                        probability=w.probability)
                    for w in words
                )
            out.append(R(result=result))
        return out

    # --- storing the call -----------------------------------------------------------------------

    def transcript(self) -> transcript_pb2.Transcript:
        """The finals as a Transcript, ordered by start time.

        Finals of one channel that follow each other within :data:`MERGE_GAP_SECONDS` (pieces of
        one utterance, sent early for latency) are one segment of at most
        :data:`MAX_SEGMENT_SECONDS`, so the stored call reads like a batch transcript and text
        rules (redaction of a number spoken across two finals) see the whole utterance.
        """
        segments: list[list[Result]] = []
        last: dict[int, list[Result]] = {}
        for f in sorted((f for f in self.finals if f.words), key=lambda f: (f.channel, f.start)):
            group = last.get(f.channel)
            if group is not None and f.start - group[-1].end < MERGE_GAP_SECONDS \
                    and f.end - group[0].start <= MAX_SEGMENT_SECONDS:
                group.append(f)
                continue
            last[f.channel] = [f]
            segments.append(last[f.channel])
        segments.sort(key=lambda g: (g[0].start, g[0].channel))
        return transcript_pb2.Transcript(
            job_id=self.job_id, language=self.language or "", duration=self.audio_seconds, model=self.model,
            worker_id=",".join(sorted(self.worker_ids)), processing_seconds=time.monotonic() - self.started,
            segments=[
                transcript_pb2.Segment(
                    id=i, start=g[0].start, end=g[-1].end, text=" ".join(f.text for f in g), channel=g[0].channel,
                    words=[transcript_pb2.Word(start=w.start, end=w.end, word=w.text, probability=w.probability)
                           for f in g for w in f.words],
                )
                for i, g in enumerate(segments)
            ],
        )

    async def store(self, bus: busmod.Bus, store: ObjectStore, pool: str, retention_days: int) -> str:
        """Store the call as a job (see the module docstring); returns the job id."""
        cfg = self.options.config
        transcript = self.transcript()
        if cfg.redact:
            # As the transcriber does: clear text never reaches the object store.
            transcript = await asyncio.to_thread(redact_transcript, transcript)
        await store.put_bytes(
            RESULTS_BUCKET, raw_transcript_key(self.job_id), *render(transcript, transcript_pb2.TRANSCRIPT_FORMAT_JSON)
        )
        key = ""
        if self._wav is not None and self._recording is not None:
            self._wav.close()
            self._wav = None
            key = audio_key(self.job_id)
            await store.put_file(AUDIO_BUCKET, key, Path(self._recording.name))
        labels = dict(cfg.labels)
        labels.setdefault("source", "stream")
        if any(self.options.roles):
            labels.setdefault("channel_roles", ",".join(self.options.roles))
        spec = jobs_pb2.JobSpec(
            config=transcript_pb2.RecognitionConfig(
                language=self.options.language, model=self.model, hotwords=self.options.hotwords,
                word_timestamps=True, vad_filter=True,
            ),
            labels=labels, filename="live call", retain_audio=cfg.retain_audio,
            glossary_ids=self.live_text.glossary_ids if self.live_text is not None else cfg.glossary_ids,
            redact=cfg.redact,
        )
        job = jobs_pb2.Job(
            job_id=self.job_id, state=jobs_pb2.JOB_STATE_POSTPROCESSING, spec=spec, pool=pool,
            audio_duration=self.audio_seconds, processed_seconds=self.audio_seconds, progress=1.0,
            language=transcript.language, audio_key=key, worker_id=",".join(sorted(self.worker_ids)),
            owner=self.owner,
        )
        job.start_time.CopyFrom(self.start_timestamp)
        expire = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=retention_days)
        job.expire_time.FromDatetime(expire)
        await JobStore(bus).create(job)
        await bus.publish(
            busmod.POSTPROCESS_SUBJECT,
            jobs_pb2.PostprocessTask(job_id=self.job_id, raw_key=raw_transcript_key(self.job_id)),
        )
        log.info(
            "call stored", extra={"job_id": self.job_id, "audio_seconds": round(self.audio_seconds, 3),
                                  "finals": len(self.finals)},
        )
        return self.job_id
