"""faster-whisper models on one device: loaded and measured once, decoding batch jobs in a thread.

:class:`ModelLoader` loads a model at a compute type and measures the memory it takes (CPU:
resident set size before/after; CUDA: NVML used memory before/after); it is the ``measure``
callback of :func:`scribe_libs.devices.decide` at start-up, so the decision works on real numbers.
:class:`Engine` holds the models of the decision in effect.

Batch jobs go through faster-whisper's ``BatchedInferencePipeline`` (Silero VAD chunks decoded
``batch_size`` at a time; on 2 CPU cores this measured ~10x faster than sequential decoding).
The pipeline yields segments batch by batch; between them the engine reports progress and
checks the cancel flag, so a cancel stops the job at the next chunk boundary.

Long files in flat memory: the file is decoded incrementally
(:func:`scribe_libs.audio.stream_for_whisper`) into one buffer of ``piece_seconds`` (default
600 s, ``SCRIBE_TRANSCRIBER_PIECE_SECONDS``), and each piece goes through the pipeline (Silero
VAD, features, batches) on its own, with its segment and word times offset by the piece's start.
A piece ends at a silence: Silero VAD over the piece's last minute (:func:`cut_at_silence`), the
middle of its longest pause, so no word is split and no audio overlaps. A file shorter than one
piece is one piece (the same code). Peak memory is the model plus what one piece costs, whatever
the file's length: 38 MB of samples for 600 s, Silero's copies and outputs (most of it, ~250 MB
for 600 s, measured), the features of its speech. tools/bench_longfile.py (tiny.en int8, CPU):
peak RSS 608 MB for 10 min, 621 MB for 1 h, 651 MB for 2 h, 624 MB for 4 h; the whole file as one
piece (the old way: 64,000 bytes per audio second, and Silero over all of it) took 597 MB,
1,075 MB and 1,805 MB for 10 min, 1 h and 2 h.

Out of memory during a job (CTranslate2 raises ``RuntimeError: CUDA failed with error out of
memory``): the engine takes the next step down (:func:`scribe_libs.devices.oom_downgrade`:
lower precision, then a smaller model), reloads and runs the job again, at most
``MAX_OOM_DOWNGRADES`` (2) times; then the job fails with :class:`OutOfMemory`
(``FAILED_PRECONDITION``, reason ``OUT_OF_MEMORY``), which the worker records as FAILED.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scribe.v1 import transcript_pb2
from scribe_libs import metrics
from scribe_libs.audio import STREAM_BLOCK_SECONDS, WHISPER_SAMPLE_RATE, header_duration, probe, stream_for_whisper
from scribe_libs.devices import (
    MAX_OOM_DOWNGRADES,
    Decision,
    canonical_model,
    oom_downgrade,
)
from scribe_libs.devices.loader import (  # noqa: F401 - re-exported for the transcriber's modules
    LoadedModel,
    MemoryGauge,
    ModelFactory,
    ModelLoader,
    Resolve,
    is_out_of_memory,
    whisper_factory,
)
from scribe_libs.errors import FailedPrecondition
from scribe_libs.recognition import language_code
from scribe_transcriber.decode import RealtimeGate

log = logging.getLogger(__name__)

#: Whisper's window, seconds (openai/whisper audio.py CHUNK_LENGTH). With VAD off, audio is cut
#: into windows of this length (the batched pipeline needs clip boundaries).
CHUNK_SECONDS = 30.0
DEFAULT_BEAM_SIZE = 5
DEFAULT_PIECE_SECONDS = 600.0
"""Audio transcribed at once (seconds): ~40 MB of samples; 20 Whisper windows of speech, enough to
fill batches of 8-16 (the last batch of each piece may be partial)."""
CUT_SEARCH_SECONDS = 60.0
"""A piece ends at the longest pause of its last this-many seconds (at most half the piece)."""
CUT_MIN_SILENCE_MS = 160
"""Pauses the cut search sees: the batched pipeline's own VAD setting (``min_silence_duration_ms``
of ``BatchedInferencePipeline.transcribe``'s default ``VadOptions``)."""


class OutOfMemory(FailedPrecondition):
    """A job ran out of device memory after the allowed downgrades (reason ``OUT_OF_MEMORY``)."""

    def __init__(self, message: str, metadata: dict[str, str] | None = None):
        super().__init__("OUT_OF_MEMORY", message, metadata)


class Engine:
    """The models of the decision in effect, on one device; decodes batch jobs.

    Attributes:
        loader: Loads (and measured) the models.
        decision: The decision in effect (replaced by an out-of-memory downgrade).
        requested: The configured models (canonical names), to map a job's model onto the
            model that replaced it in a step down.
        models: Model name -> loaded model, for the decision in effect.
        piece_seconds: Audio transcribed at once (bounds a job's memory whatever the file's length).
    """

    def __init__(
        self,
        loader: ModelLoader,
        decision: Decision,
        requested: Iterable[str] = (),
        *,
        piece_seconds: float = DEFAULT_PIECE_SECONDS,
    ):
        self.loader = loader
        self.piece_seconds = piece_seconds
        """Audio transcribed at once, seconds (rounded up to whole 30 s windows; see :func:`pieces`)."""
        self.decision = decision
        self.realtime_gate = RealtimeGate()
        """Batch decoding yields to live Decode windows (shared with the DecodeScheduler)."""
        self.requested = [canonical_model(m) for m in requested] or list(decision.models)
        self.models: dict[str, LoadedModel] = {}
        self.oom_downgrades = 0
        self._aliases: set[str] = set()
        self._lock = threading.Lock()
        self.adopt(decision)

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda"``."""
        return self.decision.device

    @property
    def device_index(self) -> int:
        """CUDA index."""
        return self.decision.device_index

    @property
    def compute_type(self) -> str:
        """Effective compute type."""
        return self.decision.compute_type_effective

    def memory_used_by_models(self) -> int:
        """Measured bytes of the resident models (0 where the device's memory cannot be read)."""
        return sum(m.memory_bytes for m in {id(m): m for m in self.models.values()}.values())

    def adopt(self, decision: Decision) -> None:
        """Load the decision's resident models at its compute type; release the rest.

        Raises:
            MemoryError / RuntimeError: A model does not load (see :meth:`ModelLoader.load`).
        """
        ct = decision.compute_type_effective
        self.loader.keep_only((m, ct) for m in decision.resident_models)
        models = {m: self.loader.load(m, ct) for m in decision.resident_models}
        self.decision, self.models = decision, models
        for alias in self._aliases:
            models.setdefault(alias, models[self.model_for(alias)])

    def load(self, name: str, path: Path | None = None) -> LoadedModel:
        """Make ``name`` available in :attr:`models` (for callers that look models up by name).

        A configured model, or one the decision stepped down, is already resident: ``name``
        becomes an alias of the model serving it (kept across downgrades). Any other model is
        loaded at the effective compute type outside the decision (its memory was not planned:
        a warning).
        """
        try:
            target = self.model_for(name)
        except FailedPrecondition:
            log.warning("loading %s outside the device decision (its memory was not planned)", name)
            loaded = self.loader.load(name, self.compute_type, path)
            self.models[name] = loaded
            return loaded
        if name != target:
            self._aliases.add(name)
            self.models[name] = self.models[target]
        return self.models[name]

    def model_for(self, requested: str) -> str:
        """The resident model that serves a job asking for ``requested``.

        The model itself when resident; else, when ``requested`` is a configured model the
        decision stepped down, the model that replaced it (logged as a warning).

        Raises:
            FailedPrecondition: reason ``MODEL_NOT_LOADED``: this worker does not serve it.
        """
        name = canonical_model(requested) if requested else self.decision.batch_model
        if name in self.models:
            return name
        if name in self.requested:
            position = self.requested.index(name)
            replacement = self.decision.models[min(position, len(self.decision.models) - 1)]
            log.warning("model %s was stepped down on this worker; the job runs with %s", name, replacement)
            return replacement
        raise FailedPrecondition(
            "MODEL_NOT_LOADED",
            f"model {requested!r} is not loaded on this worker (it has {', '.join(self.models)})",
            {"model": requested},
        )

    def transcribe(
        self,
        audio_path: Path,
        config: transcript_pb2.RecognitionConfig,
        *,
        batch_size: int,
        on_progress: Callable[[float, float], None],
        cancelled: threading.Event,
    ) -> tuple[transcript_pb2.Transcript, bool]:
        """Decode ``audio_path`` with the model for ``config.model`` (blocking; run in a thread).

        The file is decoded and transcribed piece by piece (:func:`pieces`, ``piece_seconds``);
        segment ids run on across pieces, times are seconds from the start of the file.

        On out-of-memory: step down (:func:`oom_downgrade`), reload, decode the job again from
        its start (one model and compute type for the whole transcript); at most
        ``MAX_OOM_DOWNGRADES`` times per job.

        Args:
            audio_path: Any file PyAV decodes: several channels are mixed down to mono, or with
                ``config.enable_separate_recognition_per_channel`` each channel is decoded on its
                own and its segments carry ``channel`` and ``role`` (``channel_roles``, default
                ``ch0``, ``ch1``, ...), merged in time order.
            config: Validated recognition config (model set).
            batch_size: Chunks per batch.
            on_progress: Called with (processed seconds, total seconds) after each segment and
                each piece, and with (duration, duration) at the end. Total is the header's
                duration until the decoded audio passes it.
            cancelled: When set, decoding stops at the next chunk boundary (checked after each
                batch's segments and before each piece).

        Returns:
            (transcript, was_cancelled). A cancelled transcript holds what was decoded so far
            (its ``duration`` is the audio read so far). ``transcript.model`` and
            ``compute_type`` are what really ran.

        Raises:
            scribe_libs.errors.InvalidArgument: UNDECODABLE_AUDIO.
            FailedPrecondition: ``MODEL_NOT_LOADED``; :class:`OutOfMemory` (``OUT_OF_MEMORY``)
                after the allowed downgrades.
        """
        attempt = 0
        while True:
            with self._lock:
                decision = self.decision
                name = self.model_for(config.model)
                loaded = self.models[name]
            try:
                return self._decode(loaded, decision, audio_path, config, batch_size, on_progress, cancelled)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                attempt += 1
                self._downgrade(decision, attempt, exc)

    def _downgrade(self, decision: Decision, attempt: int, exc: BaseException) -> None:
        what = f"{' + '.join(decision.resident_models)} at {decision.compute_type_effective} on {decision.device}"
        log.warning("out of memory during a job (attempt %d): %s: %s", attempt, what, exc)
        metrics.out_of_memory.add(1, {"device": decision.device})
        with self._lock:
            if self.decision is not decision:  # another thread already stepped down
                return
            new = oom_downgrade(decision, attempt) if attempt <= MAX_OOM_DOWNGRADES else None
            if new is None:
                raise OutOfMemory(
                    f"out of memory on {decision.device} with {what} after {attempt - 1} downgrade(s) "
                    f"(at most {MAX_OOM_DOWNGRADES}): {exc}",
                    {"compute_type": decision.compute_type_effective, "models": ",".join(decision.resident_models)},
                ) from exc
            try:
                self.adopt(new)
            except MemoryError as load_exc:
                raise OutOfMemory(f"out of memory reloading after a downgrade: {load_exc}") from load_exc
            self.oom_downgrades += 1
            metrics.downgrades.add(1, {"cause": "out_of_memory", "device": new.device})
            log.warning(
                "stepped down after out of memory: %s",
                new.steps[-2] if len(new.steps) > 1 else new.steps[-1],
                extra={"compute_type": new.compute_type_effective, "models": new.resident_models},
            )

    def _decode(
        self,
        loaded: LoadedModel,
        decision: Decision,
        audio_path: Path,
        config: transcript_pb2.RecognitionConfig,
        batch_size: int,
        on_progress: Callable[[float, float], None],
        cancelled: threading.Event,
    ) -> tuple[transcript_pb2.Transcript, bool]:
        """One attempt at the whole job: a pass per channel (or one over the mix), merged by time."""
        started = time.monotonic()
        transcript = transcript_pb2.Transcript(
            model=loaded.name, compute_type=decision.compute_type_effective, device=decision.device
        )
        english_only = not _multilingual(loaded)
        if english_only and not config.language:
            transcript.notes.append(
                f"model {loaded.name} is English-only: no language detection was run and the audio "
                "was decoded as English; for other languages use a multilingual model"
            )
        channels = [None]
        if config.enable_separate_recognition_per_channel:
            count = probe(audio_path).channels
            channels = list(range(count)) if count > 1 else [None]
        roles = list(config.channel_roles) or [f"ch{c}" for c in range(len(channels))]
        stated = header_duration(audio_path) or 0.0
        done_seconds, read, was_cancelled = 0.0, 0.0, False
        by_language: dict[str, float] = {}
        for channel in channels:

            def progress(processed: float, total: float, before: float = done_seconds) -> None:
                on_progress(before + processed, max(stated, total) * len(channels))

            segments, read, was_cancelled, language, probability = self._decode_pass(
                loaded, audio_path, config, batch_size, progress, cancelled, channel, english_only
            )
            for segment in segments:
                if channel is not None:
                    segment.channel, segment.role = channel, roles[channel]
                by_language[segment.language] = by_language.get(segment.language, 0.0) + segment.end - segment.start
            transcript.segments.extend(segments)
            if not transcript.language:
                transcript.language, transcript.language_probability = language, probability
            done_seconds += read
            if was_cancelled:
                break
        if len(by_language) > 1:  # code-switching: the language with the most speech
            transcript.language = max(by_language, key=lambda lang: by_language[lang])
        ordered = sorted(transcript.segments, key=lambda seg: (seg.start, seg.channel))
        del transcript.segments[:]
        for index, segment in enumerate(ordered):
            segment.id = index
            transcript.segments.append(segment)
        transcript.duration = read
        if not was_cancelled:
            on_progress(done_seconds, done_seconds)
        transcript.processing_seconds = time.monotonic() - started
        return transcript, was_cancelled

    def _decode_pass(  # noqa: PLR0913 - one pass's parts
        self,
        loaded: LoadedModel,
        audio_path: Path,
        config: transcript_pb2.RecognitionConfig,
        batch_size: int,
        on_progress: Callable[[float, float], None],
        cancelled: threading.Event,
        channel: int | None,
        english_only: bool,
    ) -> tuple[list[transcript_pb2.Segment], float, bool, str, float]:
        """Decode one channel (None: the mix) piece by piece.

        Language: a fixed ``config.language`` (its Whisper code); else, with two or more
        ``allowed_languages`` on a multilingual model, each speech chunk's language is detected
        among them (:func:`detect_among`) and consecutive chunks of one language are decoded
        together (code-switching calls); else the first piece with speech decides (restricted to
        the one allowed language when there is one) and later pieces are told it. Every segment
        carries its language.

        Returns:
            (segments with file times, seconds read, cancelled, language, its probability)
        """
        vad = config.vad_filter if config.HasField("vad_filter") else True
        allowed = [language_code(tag) for tag in config.allowed_languages]
        fixed = language_code(config.language) or ("en" if english_only else "") or (
            allowed[0] if len(allowed) == 1 else "")
        switching = not fixed and len(allowed) > 1
        kwargs: dict = dict(
            language=fixed or None,
            beam_size=config.beam_size or DEFAULT_BEAM_SIZE,
            word_timestamps=config.word_timestamps,
            initial_prompt=config.initial_prompt or None,  # every window gets it (the pipeline
            hotwords=" ".join(config.hotwords) or None,  # never conditions on previous text)
            batch_size=max(batch_size, 1),
            vad_filter=vad,
        )
        # A copy per call: the pipeline keeps per-call state (last_speech_timestamp for word
        # timings) on the instance, and concurrent jobs share the model (faster-whisper 1.2.1).
        pipeline = copy.copy(loaded.pipeline)
        stated = header_duration(audio_path) or 0.0
        out: list[transcript_pb2.Segment] = []
        read, was_cancelled = 0.0, False
        language, probability = fixed, 1.0 if fixed else 0.0
        cut = cut_at_silence if vad else None
        for first, audio in pieces(audio_path, self.piece_seconds, cut, channel=channel):
            if cancelled.is_set():
                was_cancelled = True
                break
            offset, length = first / WHISPER_SAMPLE_RATE, len(audio) / WHISPER_SAMPLE_RATE
            read = (first + len(audio)) / WHISPER_SAMPLE_RATE
            total = max(stated, read)
            self.realtime_gate.wait_clear()  # features (and language detection) run the model
            runs = _language_runs(pipeline.model, audio, allowed, vad) if switching else [(language or None, None)]
            for run_language, clips in runs:
                call = dict(kwargs, language=run_language or kwargs["language"])
                if clips is not None:
                    call.update(clip_timestamps=clips, vad_filter=False)
                elif not vad:
                    call["clip_timestamps"] = [
                        {"start": t, "end": min(t + CHUNK_SECONDS, length)} for t in _frange(0.0, length, CHUNK_SECONDS)
                    ]
                segments, info = pipeline.transcribe(audio, **call)
                if not language and not switching and (getattr(info, "duration_after_vad", length) > 0):
                    # The first piece with speech decides the language; later pieces are told it.
                    language, probability = info.language, float(info.language_probability or 0.0)
                    kwargs["language"] = language
                elif switching and not language:
                    language, probability = info.language, float(info.language_probability or 0.0)
                iterator = iter(segments)
                while True:
                    # Live windows first: each next() runs one batch of model calls.
                    self.realtime_gate.wait_clear()
                    segment = next(iterator, None)
                    if segment is None:
                        break
                    converted = _segment(len(out), segment, offset)
                    converted.language = info.language or language
                    out.append(converted)
                    on_progress(min(offset + segment.end, total), total)
                    if cancelled.is_set():
                        was_cancelled = True
                        break
                if was_cancelled:
                    break
            if was_cancelled:
                break
            on_progress(read, total)
            _release_free_memory()
        if switching:
            out.sort(key=lambda seg: seg.start)
        return out, read, was_cancelled, language, probability


def _multilingual(loaded: LoadedModel) -> bool:
    """Whether the model decodes more than English (faster-whisper's ``model.is_multilingual``)."""
    model = getattr(loaded.pipeline, "model", None)
    return bool(getattr(model, "model", None) is None or getattr(model.model, "is_multilingual", True))


def detect_among(model: Any, chunk: np.ndarray, allowed: list[str]) -> tuple[str, float]:
    """The most probable of the ``allowed`` Whisper language codes for one chunk of speech.

    faster-whisper's ``WhisperModel.detect_language`` scores every language on the chunk's
    first 30 s; the ranking is restricted to ``allowed`` here, so a call known to be Korean or
    English is never decoded as Japanese.

    Returns:
        (language code, its probability among all languages).
    """
    _, _, scores = model.detect_language(audio=chunk)
    ranked = [(prob, lang) for lang, prob in scores if lang in allowed]
    if not ranked:
        return allowed[0], 0.0
    prob, lang = max(ranked)
    return lang, float(prob)


#: A chunk's detected language counts only at this probability or more (among all of Whisper's
#: languages); a chunk below it takes its neighbour's. Measured on ../shared/data/multilingual.mp3
#: with base (int8, CPU): the 22 chunks detected right scored 0.80-0.999; the two detected wrong
#: (a 0.7 s "Publish!" as German at 0.02, a 1.4 s German chunk as English at 0.37) scored below 0.4.
MIN_LANGUAGE_PROBABILITY = 0.5


def smooth_languages(
    detected: Sequence[tuple[str, float]], min_probability: float = MIN_LANGUAGE_PROBABILITY
) -> list[str]:
    """The language of each chunk of a code-switching call, from per-chunk detections.

    Whisper's language identification is unreliable on short or unclear chunks, which then score
    low for every allowed language. A chunk scoring at least ``min_probability`` keeps its
    detection; one below takes the language of the nearest confident chunk before it (a call
    switches language between utterances, not within one word), or after it when none comes
    before; with no confident chunk at all, each keeps its own detection.

    Args:
        detected: ``(language code, probability)`` per chunk in time order (:func:`detect_among`).
        min_probability: Probability below which a detection is not trusted, 0..1.

    Returns:
        One language code per chunk.
    """
    confident = [lang if prob >= min_probability else None for lang, prob in detected]
    if not any(confident):
        return [lang for lang, _ in detected]
    out: list[str] = []
    following = next(lang for lang in confident if lang)
    for lang in confident:
        if lang:
            out.append(lang)
        else:
            out.append(out[-1] if out else following)
    return out


def _language_runs(model: Any, audio: np.ndarray, allowed: list[str], vad: bool) -> list[tuple[str, list[dict]]]:
    """The piece's speech as runs of one language: ``[(code, clip_timestamps in seconds), ...]``.

    Speech chunks are Silero VAD's segments of at most 30 s (the batched pipeline's own VAD
    options), or fixed 30 s windows without VAD; each chunk's language comes from
    :func:`detect_among`, low-confidence ones smoothed (:func:`smooth_languages`); consecutive
    chunks of one language form a run, decoded in one call.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    rate = WHISPER_SAMPLE_RATE
    if vad:
        speech = get_speech_timestamps(
            audio, VadOptions(max_speech_duration_s=CHUNK_SECONDS, min_silence_duration_ms=CUT_MIN_SILENCE_MS)
        )
    else:
        step = int(CHUNK_SECONDS * rate)
        speech = [{"start": t, "end": min(t + step, len(audio))} for t in range(0, len(audio), step)]
    detected = [detect_among(model, audio[chunk["start"] : chunk["end"]], allowed) for chunk in speech]
    runs: list[tuple[str, list[dict]]] = []
    for chunk, lang in zip(speech, smooth_languages(detected), strict=True):
        clip = {"start": chunk["start"] / rate, "end": chunk["end"] / rate}
        if runs and runs[-1][0] == lang:
            runs[-1][1].append(clip)
        else:
            runs.append((lang, [clip]))
    return runs


def _segment(index: int, segment: Any, offset: float) -> transcript_pb2.Segment:
    """A faster-whisper segment of a piece starting at ``offset`` seconds, in file time."""
    return transcript_pb2.Segment(
        id=index,
        start=round(offset + segment.start, 3),
        end=round(offset + segment.end, 3),
        text=segment.text.strip(),
        avg_logprob=segment.avg_logprob,
        no_speech_prob=segment.no_speech_prob,
        compression_ratio=segment.compression_ratio,
        words=[
            transcript_pb2.Word(
                start=round(offset + w.start, 3), end=round(offset + w.end, 3), word=w.word, probability=w.probability
            )
            for w in (segment.words or [])
        ],
    )


Cut = Callable[[np.ndarray, int], int]
"""``cut(samples, earliest)``: where a piece of ``samples`` ends, in ``[earliest, len(samples)]``."""


def pieces(
    path: Path, piece_seconds: float, cut: Cut | None = None, channel: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """The audio of ``path`` (of one ``channel``, or the mix) as pieces: ``(first sample, 16 kHz float32)``.

    ``piece_seconds`` is rounded up to whole 30 s Whisper windows (so with VAD off, the windows
    of the pieces are the windows of the whole file). A piece is cut where ``cut`` says within
    its last ``min(CUT_SEARCH_SECONDS, piece / 2)`` seconds (at its full length without ``cut``);
    the audio after the cut starts the next piece (no overlap, no gap). The last piece holds the
    rest; a file shorter than a piece is one piece; an empty file is one empty piece.

    Memory: one buffer of ``piece + 30 s`` samples, reused: each yielded array is a view into it,
    valid until the next piece is asked for.

    Raises:
        InvalidArgument: ``UNDECODABLE_AUDIO`` (from :func:`stream_for_whisper`).
    """
    windows = max(int(np.ceil(piece_seconds / CHUNK_SECONDS - 1e-9)), 1)
    size = int(windows * CHUNK_SECONDS * WHISPER_SAMPLE_RATE)
    search = int(min(CUT_SEARCH_SECONDS * WHISPER_SAMPLE_RATE, size // 2))
    buffer = np.empty(size + int(STREAM_BLOCK_SECONDS * WHISPER_SAMPLE_RATE), dtype=np.float32)
    filled, start = 0, 0
    for block in stream_for_whisper(path, STREAM_BLOCK_SECONDS, channel):
        buffer[filled : filled + len(block)] = block
        filled += len(block)
        while filled >= size:
            end = size if cut is None else min(max(cut(buffer[:size], size - search), size - search), size)
            yield start, buffer[:end]
            buffer[: filled - end] = buffer[end:filled]
            filled -= end
            start += end
    if filled or start == 0:
        yield start, buffer[:filled]


def cut_at_silence(samples: np.ndarray, earliest: int) -> int:
    """Where to end a piece of ``samples``: the middle of the longest pause after ``earliest``.

    Silero VAD (faster-whisper's ``get_speech_timestamps``, pauses of ``CUT_MIN_SILENCE_MS`` or
    more, speech padded by 400 ms) runs over ``samples[earliest:]``; the pauses are the gaps
    between its speech segments, before the first and after the last. Between padded speech
    segments lies silence, so the cut splits no word (a speaker who never pauses for 160 ms in
    the whole search span is cut at the span's edge, as the whole-file VAD's 30 s limit would).
    Ties go to the later pause (a longer piece). No speech at all: the full length.

    Returns:
        The sample index of the cut, in ``[earliest, len(samples)]``.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    tail = samples[earliest:]
    speech = get_speech_timestamps(tail, VadOptions(min_silence_duration_ms=CUT_MIN_SILENCE_MS))
    if not speech:
        return len(samples)
    bounds = [0, *(t for s in speech for t in (s["start"], s["end"])), len(tail)]
    gaps = list(zip(bounds[::2], bounds[1::2], strict=True))
    low, high = max(gaps, key=lambda gap: (gap[1] - gap[0], gap[0]))
    return earliest + (low + high) // 2


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the system between pieces (glibc ``malloc_trim``).

    Each piece allocates and frees the same few hundred MB (Silero's copies, features, chunk
    arrays); glibc keeps freed heap pages resident and, once its dynamic mmap threshold has
    risen, serves later pieces' arrays from a fragmented heap, so the peak crept up over the
    first pieces (measured with tools/bench_longfile.py, pieces of 600 s: 598 MB for 10 min,
    689 MB for 1 h and for 2 h without the trim; 608, 621 and 651 MB with it). Not glibc: nothing
    to do.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def default_cpu_threads(configured: int) -> int:
    """CTranslate2 intra-op threads: the configured number, else the cores this process may use."""
    return configured or len(os.sched_getaffinity(0)) or 1


def cpu_layout(cpu_threads: int, cpu_replicas: int) -> tuple[int, int]:
    """``(threads per replica, replicas)`` of a CPU model.

    Default (both 0): one replica per core, each with as many threads as there are cores.
    Measured here (tiny.en int8, 2 cores): 16 streaming windows of 3-7 s decoded two at a time
    took 0.133 s per window with 2 replicas of 2 threads, 0.136 s with 2 of 1 thread, and 0.281 s
    on one 2-thread replica (intra-op threads barely speed up a small model's decode; parallel
    calls double throughput). The price is paid by batch jobs (one model call at a time):
    tools/bench_batch.py measured raw/platform 0.86-0.89 with two replicas against 0.96 with one
    (``SCRIBE_TRANSCRIBER_CPU_REPLICAS=1``, the right setting for a CPU pool that serves no calls).
    """
    cores = default_cpu_threads(0)
    replicas = cpu_replicas or (1 if cpu_threads else cores)
    threads = cpu_threads or cores
    return threads, max(replicas, 1)


def _frange(start: float, stop: float, step: float) -> list[float]:
    out, t = [], start
    while t < stop:
        out.append(t)
        t += step
    return out
