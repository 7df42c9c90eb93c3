"""``Transcriber.Decode``: streaming windows decoded at a cost that follows their audio.

The stream gateway sends one window (<= 30 s of 16 kHz audio) per call; many sessions call at
once. :class:`DecodeScheduler` queues the calls by priority (end-of-utterance windows first, then
interim windows in arrival order), decodes them on one dedicated thread (in batches of up to
``max_batch`` on devices where batching pays: GPUs; 1 on CPU, where 4 padded windows cost ~5x one
here) and tells batch jobs to yield while live windows wait (:class:`RealtimeGate`).

How a window is decoded (:func:`decode_windows`; DESIGN.md, "Data flow (streaming)"):

- right-sized encoder input: the window's log-mel frames plus ``input_padding_seconds`` of
  faster-whisper's own zero padding, not Whisper's full 3000 frames. CTranslate2's encoder takes
  fewer frames: 0.21 s per window against 0.46 s for 3000 frames on 2-11 s windows of the
  committed fixtures (tiny.en int8, 2 cores, measured here; see DEFAULT_INPUT_PADDING_SECONDS).
  Cut right at the audio's end the decoder loops, so the input is padded and guarded;
- guards: a token budget from the window length (``TOKENS_PER_SECOND`` x seconds +
  ``TOKEN_MARGIN``; Whisper writes ~3-5 tokens per second of English, more of Korean) and the loop
  rules of :func:`scribe_libs.streaming.policy.looks_looping`. A window whose short-input decode
  hits the budget or loops is decoded again on the full 30 s input (``fallback`` in the response);
- greedy search at temperature 0, no temperature fallback (a fallback on a window with a pause
  cost 7-28 s here) and no VAD (the gateway ran Silero already and only sends speech);
- the gateway's committed text is the prompt (``<|startofprev|>`` context, as faster-whisper's
  ``initial_prompt``), hotwords before it as faster-whisper does;
- a window the model scores as no speech (``no_speech_prob > 0.6`` and ``avg_logprob < -1``,
  faster-whisper's defaults ``no_speech_threshold``/``log_prob_threshold``) yields no words;
- word times come from the model's cross-attention alignment (``find_alignment``, the same as
  faster-whisper's ``word_timestamps``) without its segment-boundary heuristics, clamped to the
  window.

Parallel decodes: on CPU the model has one single-threaded CTranslate2 replica per core
(:func:`scribe_transcriber.engine.cpu_layout`) and the scheduler runs that many decodes at once
(two 1-thread replicas decoded 2.1x the windows per second of one 2-thread replica here).

Capacity (:func:`measure_capacity`): at start the worker decodes a bundled 7.7 s speech window
on every replica at once, three times, and takes the median device time per window ``c``. A live
session in speech asks for a decode every ``min_decode_interval`` and has at most one in flight,
so N sessions served in turn see a decode period of about N x c; the worker carries
``floor(target_period x utilization / c) x max_batch`` sessions (``realtime_target_period_seconds``,
``realtime_utilization``), which it advertises as ``realtime_capacity``.

CTranslate2 requires ``<|startoftranscript|>`` at the same position in every prompt of a
``generate`` batch, so windows are grouped by (language, has context) and the contexts within a
group are cut to the shortest one (keeping the most recent tokens).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import statistics
import threading
import time
import wave
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from faster_whisper.tokenizer import _LANGUAGE_CODES

from scribe.v1 import transcriber_pb2, transcript_pb2
from scribe_libs import metrics
from scribe_libs.audio import WHISPER_SAMPLE_RATE
from scribe_libs.callaudio import AudioEncoding, decode_samples
from scribe_libs.devices import RealtimeServing
from scribe_libs.errors import FailedPrecondition, InvalidArgument, Unavailable
from scribe_libs.recognition import MAX_HOTWORDS, MAX_PROMPT_CHARS
from scribe_libs.streaming.policy import PROMPT_CHARS, looks_looping

log = logging.getLogger(__name__)

#: Whisper's window, s (openai/whisper audio.py CHUNK_LENGTH); its rate is WHISPER_SAMPLE_RATE.
MAX_WINDOW_SECONDS = 30.0
#: Mel frames per second of audio (hop length 160 at 16 kHz); Whisper's full input is 3000 frames.
FRAMES_PER_SECOND = 100
FULL_FRAMES = 3000
#: faster-whisper's defaults for skipping a silent window (TranscriptionOptions).
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
#: Token budget of a short-input decode: generous for speech (English ~3-5 tokens/s, Korean up to
#: ~10), far below the 448 a loop runs to.
TOKENS_PER_SECOND = 12.0
TOKEN_MARGIN = 12
#: Default padding after the window's frames (s). On 16 growing windows (2-11 s) of jfk.flac and
#: the committed espeak fixtures (tiny.en int8, 2 cores): 1/2/3/6 s of padding cost 0.150/0.158/
#: 0.180/0.212 s per window against 0.459 s for the 30 s input, and their words differed from the
#: 30 s decode's by 10.8/9.0/9.6/10.2 % (growing windows of espeak speech disagree with each other
#: that much too). Streamed, 2 s made the decoder repeat the end of short windows ("Ask not. Ask
#: not."): jfk x3 finals WER 9.1 % against 3.0 % with 6 s (tools/bench_streaming.py, 1 session).
DEFAULT_INPUT_PADDING_SECONDS = 6.0
#: faster-whisper's default punctuation merged into neighbouring words.
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
#: A session (``DecodeRequest.session_id``) counts as live this long after its last Decode (s).
SESSION_IDLE_SECONDS = 10.0
#: Longest ``session_id`` accepted (characters).
MAX_SESSION_ID_CHARS = 128
#: Longest ``DecodeRequest.prompt`` (characters): the gateway's prompt is a stream's committed
#: text, at most ``scribe_libs.streaming.policy.PROMPT_CHARS`` (200) characters, so at most 800
#: UTF-8 bytes. Whisper keeps only the last 223 prompt tokens anyway; a longer prompt is only
#: tokenizer work (a 3.5 MB prompt took the worker's decode slot for seconds).
MAX_DECODE_PROMPT_CHARS = PROMPT_CHARS
#: ``DecodeRequest.hotwords``: at most this many terms, space-joined at most
#: ``MAX_DECODE_HOTWORDS_CHARS`` characters. The gateway sends a session's hotwords as
#: ``scribe_libs.recognition.validate_config`` checked them (100 terms, 1000 characters), merged
#: with glossary terms only up to 200 bytes in all (``scribe_libs.glossaries.biased``), so it
#: never exceeds these.
MAX_DECODE_HOTWORDS = MAX_HOTWORDS
MAX_DECODE_HOTWORDS_CHARS = MAX_PROMPT_CHARS
#: Languages a Decode may restrict detection to (the gateway validates against limits.MAX_ALLOWED_LANGUAGES).
MAX_DECODE_ALLOWED_LANGUAGES = 16
#: The capacity probe: 7.7 s of espeak-ng speech (a typical streaming window, under the ~10 s the
#: gateway's buffer trimming keeps windows to).
PROBE_WAV = Path(__file__).with_name("probe_speech.wav")


@dataclass
class Window:
    """One window to decode.

    Attributes:
        audio: float32 mono 16 kHz samples, at most 30 s.
        prompt: Previous text (context), may be empty.
        language: ISO 639-1 code; empty detects it (multilingual models) or English (``.en``).
        hotwords: Space-joined terms to bias towards, may be empty.
        word_timestamps: Align words (else only the text is returned).
        allowed_languages: With ``language`` empty, the codes detection may choose from (empty: any).
    """

    audio: np.ndarray
    prompt: str = ""
    language: str = ""
    hotwords: str = ""
    word_timestamps: bool = True
    allowed_languages: tuple[str, ...] = ()


@dataclass
class WindowResult:
    """What :func:`decode_windows` returns per window (times relative to the window start, s)."""

    text: str
    words: list[transcript_pb2.Word] = field(default_factory=list)
    language: str = ""
    language_probability: float = 0.0
    input_seconds: float = 0.0
    """Encoder input (s): window + padding, or 30 after a fallback."""
    fallback: bool = False
    """The short-input decode tripped a guard and the window was decoded on the full input."""


def window_samples(data: bytes) -> np.ndarray:
    """A Decode window's audio (LINEAR16 at 16 kHz, mono) as float32 in [-1, 1), checked.

    Raises:
        InvalidArgument: ``INVALID_AUDIO`` for empty audio or an odd byte count,
            ``WINDOW_TOO_LONG`` for more than 30 s (field ``audio``).
    """
    if len(data) == 0 or len(data) % 2:
        raise InvalidArgument("INVALID_AUDIO", "audio must be a non-empty LINEAR16 byte string", field="audio")
    samples = decode_samples(data, AudioEncoding.LINEAR16)
    if len(samples) > MAX_WINDOW_SECONDS * WHISPER_SAMPLE_RATE:
        raise InvalidArgument(
            "WINDOW_TOO_LONG", f"a window is at most {MAX_WINDOW_SECONDS:.0f} s (Whisper's window)", field="audio"
        )
    return samples


def token_budget(seconds: float) -> int:
    """Tokens a short-input decode of ``seconds`` of audio may write before the guard trips."""
    return int(math.ceil(seconds * TOKENS_PER_SECOND)) + TOKEN_MARGIN


def _mel(model, audio: np.ndarray) -> np.ndarray:  # noqa: ANN001 - faster_whisper.WhisperModel
    return model.feature_extractor(audio)[..., :-1]


def _input(mels: list[np.ndarray], frames: int) -> np.ndarray:
    from faster_whisper.audio import pad_or_trim

    return np.stack([pad_or_trim(m, frames) for m in mels])


def decode_windows(
    model,  # noqa: ANN001 - faster_whisper.WhisperModel
    windows: Sequence[Window],
    beam_size: int = 1,
    input_padding_seconds: float | None = DEFAULT_INPUT_PADDING_SECONDS,
) -> list[WindowResult]:
    """Decode windows together (blocking; call from a worker thread).

    Args:
        model: A loaded ``faster_whisper.WhisperModel``.
        windows: The windows; decoded in one batch per (language, has context) group.
        beam_size: 1 = greedy (the streaming default: latency over a rarely better beam).
        input_padding_seconds: Padding after the longest window of a group (s); None decodes on
            Whisper's full 30 s input (the padded decode the guards fall back to).

    Returns:
        One result per window, in order.
    """
    from faster_whisper.tokenizer import Tokenizer

    multilingual = model.model.is_multilingual
    mels = [_mel(model, w.audio) for w in windows]
    languages: list[str] = [w.language or ("" if multilingual else "en") for w in windows]
    probabilities = [1.0 if lang else 0.0 for lang in languages]
    for i, _ in enumerate(windows):
        if not languages[i]:
            # Detect per window on its full-input encoder output (multilingual model, "auto").
            # Restricted to the window's allowed languages when it names some (ranked best first).
            encoded = model.encode(_input([mels[i]], FULL_FRAMES))
            ranked = [(t[2:-2], p) for t, p in model.model.detect_language(encoded)[0]]
            allowed = windows[i].allowed_languages
            lang, prob = next(((t, p) for t, p in ranked if not allowed or t in allowed), ranked[0])
            languages[i], probabilities[i] = lang, float(prob)
    tokenizers = {
        lang: Tokenizer(model.hf_tokenizer, multilingual, task="transcribe", language=lang) for lang in set(languages)
    }
    groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
    contexts: list[list[int]] = []
    for i, w in enumerate(windows):
        tok = tokenizers[languages[i]]
        context = tok.encode(" " + w.hotwords.strip()) if w.hotwords.strip() else []
        if w.prompt.strip():
            context += tok.encode(" " + w.prompt.strip())
        contexts.append(context[-(model.max_length // 2 - 1) :])
        groups[(languages[i], bool(contexts[i]))].append(i)
    results: list[WindowResult | None] = [None] * len(windows)
    for (lang, _), members in groups.items():
        tok = tokenizers[lang]
        shortest = min(len(contexts[i]) for i in members)
        prompts = {}
        for i in members:
            context = contexts[i][len(contexts[i]) - shortest :] if shortest else []
            prompt = [tok.sot_prev, *context] if context else []
            prompts[i] = [*prompt, *tok.sot_sequence, tok.no_timestamps]
        group = _decode_group(model, tok, windows, mels, members, prompts, beam_size, input_padding_seconds)
        for i, result in group.items():
            result.language, result.language_probability = lang, probabilities[i]
            results[i] = result
    return [r for r in results if r is not None]


def _decode_group(  # noqa: PLR0913 - the group's parts
    model,  # noqa: ANN001
    tok,  # noqa: ANN001
    windows: Sequence[Window],
    mels: list[np.ndarray],
    members: list[int],
    prompts: dict[int, list[int]],
    beam_size: int,
    padding: float | None,
) -> dict[int, WindowResult]:
    from faster_whisper.transcribe import get_suppressed_tokens

    longest = max(mels[i].shape[-1] for i in members)
    frames = FULL_FRAMES if padding is None else min(FULL_FRAMES, longest + int(padding * FRAMES_PER_SECOND))
    frames += frames % 2  # the encoder's stride-2 convolution
    short = frames < FULL_FRAMES
    encoded = model.encode(_input([mels[i] for i in members], frames))
    budgets = [
        token_budget(len(windows[i].audio) / WHISPER_SAMPLE_RATE) if short else model.max_length for i in members
    ]
    outputs = model.model.generate(
        encoded,
        [prompts[i] for i in members],
        beam_size=beam_size,
        # CTranslate2 4.8.5 writes at most about max_length / 2 text tokens after a short prompt
        # (measured: max_length 20 -> 10 tokens with a 2- or 6-token prompt), so the limit leaves
        # room for the whole budget and the guard below compares the text against the budget.
        max_length=min(model.max_length,
                       max(len(prompts[i]) + 2 * b for i, b in zip(members, budgets, strict=True))),
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tok, [-1]),
        return_scores=True,
        return_no_speech_prob=True,
    )
    tokens: dict[int, list[int]] = {}
    redo: list[int] = []
    for i, budget, output in zip(members, budgets, outputs, strict=True):
        ids = output.sequences_ids[0]
        text_ids = [t for t in ids if t < tok.eot]
        if short and (len(text_ids) >= budget or looks_looping(tok.decode(text_ids))):
            redo.append(i)
            continue
        avg_logprob = output.scores[0] * len(ids) / (len(ids) + 1)
        silent = output.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD
        tokens[i] = [] if silent else text_ids
    kept = [i for i in members if i in tokens]
    results = {i: WindowResult(text=tok.decode(tokens[i]).strip(), input_seconds=frames / FRAMES_PER_SECOND)
               for i in kept}
    if kept:
        rows = [members.index(i) for i in kept]
        _align(model, tok, windows, kept, tokens, encoded, rows, frames, results)
    if redo:
        log.debug("short-input guard tripped; decoding on the full input", extra={"windows": len(redo)})
        again = _decode_group(model, tok, windows, mels, redo, prompts, beam_size, None)
        for i, result in again.items():
            result.fallback = True
            results[i] = result
    return results


def _align(  # noqa: PLR0913
    model, tok, windows, kept, tokens, encoded, rows, frames, results,  # noqa: ANN001
) -> None:
    """Word times for the kept windows (their rows of the group's encoder output)."""
    from faster_whisper.transcribe import merge_punctuations

    aligned = [i for i in kept if windows[i].word_timestamps and tokens[i]]
    if not aligned:
        return
    batch_rows = encoded.shape[0]
    placeholder = tok.encode(" a")
    row_tokens: list[list[int]] = [placeholder] * batch_rows
    row_frames: list[int] = [100] * batch_rows
    for i, row in zip(kept, rows, strict=True):
        if i in aligned:
            row_tokens[row] = tokens[i]
            seconds = len(windows[i].audio) / WHISPER_SAMPLE_RATE
            row_frames[row] = max(min(math.ceil(seconds * FRAMES_PER_SECOND), frames), 100)
    # align() runs on the whole encoder batch; rows without text get a placeholder thrown away.
    alignments = model.find_alignment(tok, row_tokens, encoded, row_frames)
    for i, row in zip(kept, rows, strict=True):
        if i not in aligned:
            continue
        alignment = alignments[row]
        merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
        duration = len(windows[i].audio) / WHISPER_SAMPLE_RATE
        for item in alignment:
            if not item["word"].strip():
                continue
            start = min(float(item["start"]), duration)
            end = min(max(float(item["end"]), start), duration)
            results[i].words.append(
                transcript_pb2.Word(
                    start=round(start, 3), end=round(end, 3), word=item["word"].strip(),
                    probability=float(item["probability"]),
                )
            )


class RealtimeGate:
    """Live windows first: batch jobs wait between their model calls while a live window waits.

    The scheduler marks each window queued or decoding (:meth:`enter`/:meth:`leave`); the batch
    engine calls :meth:`wait_clear` before each of its model calls (thread-safe). A batch job is
    held at most ``max_wait_s`` per call so a stream of live windows cannot starve it forever
    (admission by capacity keeps that stream below what the device decodes).
    """

    def __init__(self) -> None:  # noqa: D107
        self._live = 0
        self._cond = threading.Condition()

    @property
    def live(self) -> int:
        """Live windows queued or decoding now."""
        return self._live

    def enter(self) -> None:
        """A live window was queued."""
        with self._cond:
            self._live += 1

    def leave(self) -> None:
        """A live window was answered (or abandoned)."""
        with self._cond:
            self._live = max(self._live - 1, 0)
            if self._live == 0:
                self._cond.notify_all()

    def wait_clear(self, max_wait_s: float = 5.0) -> float:
        """Block until no live window waits (at most ``max_wait_s``); returns the seconds waited."""
        started = time.monotonic()
        with self._cond:
            self._cond.wait_for(lambda: self._live == 0, timeout=max_wait_s)
        return time.monotonic() - started


@dataclass(order=True)
class _Pending:
    rank: tuple[int, int]
    window: Window = field(compare=False)
    model: str = field(compare=False)
    future: asyncio.Future = field(compare=False)
    queued_at: float = field(compare=False)


class DecodeScheduler:
    """Serves Decode calls: a priority queue drained by one decode thread.

    Order: ``DECODE_PRIORITY_FINAL`` windows (they close an utterance: the caller waits for its
    final) before interim ones, each class in arrival order. The gateway keeps at most one
    window in flight per session and coalesces interims itself, so the queue holds at most one
    window per live session.

    Args:
        engine: The transcriber's :class:`~scribe_transcriber.engine.Engine` (models by name).
        default_model: The realtime model (used when a request names none).
        worker_id: Reported in responses.
        max_batch: Windows decoded together at most (1 on CPU).
        beam_size: Beam width (1 = greedy).
        input_padding_seconds: See :func:`decode_windows` (None: full 30 s input).
        gate: Tells batch jobs to yield while live windows wait.
        parallel: Decodes run at once (the model's CTranslate2 replicas: one per core on CPU).
    """

    def __init__(  # noqa: PLR0913
        self,
        engine,  # noqa: ANN001 - scribe_transcriber.engine.Engine
        default_model: str,
        worker_id: str,
        max_batch: int = 1,
        beam_size: int = 1,
        input_padding_seconds: float | None = DEFAULT_INPUT_PADDING_SECONDS,
        gate: RealtimeGate | None = None,
        parallel: int = 1,
    ):
        self.engine = engine
        self.parallel = max(parallel, 1)
        self.default_model = default_model
        self.worker_id = worker_id
        self.max_batch = max(max_batch, 1)
        self.beam_size = max(beam_size, 1)
        self.input_padding_seconds = input_padding_seconds
        self.gate = gate or RealtimeGate()
        self.capacity = 0
        """Live sessions this worker carries (set by :func:`measure_capacity`)."""
        self.window_cost_seconds = 0.0
        """Measured cost of one typical window (s)."""
        self.windows_decoded = 0
        self._heap: list[_Pending] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._sessions: dict[str, float] = {}
        self._stopping = False
        self._executor = ThreadPoolExecutor(self.parallel, thread_name_prefix="decode")
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    @property
    def in_flight(self) -> int:
        """Windows queued or decoding now."""
        return self.gate.live

    @property
    def live_sessions(self) -> int:
        """Sessions that sent a window in the last :data:`SESSION_IDLE_SECONDS`."""
        cutoff = time.monotonic() - SESSION_IDLE_SECONDS
        for key in [k for k, t in self._sessions.items() if t < cutoff]:
            del self._sessions[key]
        return len(self._sessions)

    def serving(self, target_period_s: float, utilization: float) -> RealtimeServing:
        """What the worker profile advertises: capacity, live sessions, window cost and how.

        Args:
            target_period_s: The capacity target (``realtime_target_period_seconds``), seconds.
            utilization: Share of the device the capacity plans for (``realtime_utilization``).
        """
        how = (
            f"measured: a {self.max_batch}-window decode of the 7.7 s probe costs {self.window_cost_seconds:.3f} s "
            f"of device time with {self.parallel} in parallel, "
            f"target period {target_period_s:g} s at {utilization:.0%} utilization"
            if self.window_cost_seconds
            else "configured"
        )
        return RealtimeServing(
            capacity=self.capacity,
            sessions=self.live_sessions,
            window_cost_seconds=self.window_cost_seconds,
            reason=f"realtime capacity {self.capacity} live sessions ({how}); "
            f"{self.max_batch} window(s) decoded together",
        )

    def start(self) -> None:
        """Start the decode loop (on the running event loop)."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop after the decode in hand; fail what is still queued with UNAVAILABLE."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            _, pending = await asyncio.wait([self._task], timeout=30.0)
            for task in pending:
                task.cancel()
        while self._heap:
            item = heapq.heappop(self._heap)
            if not item.future.done():
                item.future.set_exception(Unavailable("SHUTTING_DOWN", "the worker is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def window_from(self, request: transcriber_pb2.DecodeRequest) -> tuple[Window, str]:
        """Validate a request into a window and model name.

        Every limit is one the stream gateway's own windows stay within, so only a window that
        did not come through the gateway's validation is refused.

        Raises:
            InvalidArgument: bad audio (see :func:`window_samples`: empty, odd bytes, over
                ``MAX_WINDOW_SECONDS``), ``INVALID_SESSION_ID``, ``PROMPT_TOO_LONG`` (prompt over
                ``MAX_DECODE_PROMPT_CHARS``), ``TOO_MANY_HOTWORDS`` (over ``MAX_DECODE_HOTWORDS``
                terms or ``MAX_DECODE_HOTWORDS_CHARS`` characters), ``UNKNOWN_LANGUAGE`` (not ""
                and not a Whisper language code; the gateway sends validated codes).
            FailedPrecondition: ``MODEL_NOT_LOADED`` when the model is not resident here.
        """
        if len(request.prompt) > MAX_DECODE_PROMPT_CHARS:
            raise InvalidArgument(
                "PROMPT_TOO_LONG", f"prompt is at most {MAX_DECODE_PROMPT_CHARS} characters (the stream's committed "
                "text; Whisper keeps only its last 223 tokens)", field="prompt",
            )
        hotwords = [h.strip() for h in request.hotwords if h.strip()]
        if len(hotwords) > MAX_DECODE_HOTWORDS or len(" ".join(hotwords)) > MAX_DECODE_HOTWORDS_CHARS:
            raise InvalidArgument(
                "TOO_MANY_HOTWORDS", f"hotwords are at most {MAX_DECODE_HOTWORDS} terms and "
                f"{MAX_DECODE_HOTWORDS_CHARS} characters", field="hotwords",
            )
        if request.language and request.language not in _LANGUAGE_CODES:
            raise InvalidArgument("UNKNOWN_LANGUAGE", f"unknown language {request.language[:16]!r}", field="language")
        if len(request.allowed_languages) > MAX_DECODE_ALLOWED_LANGUAGES or any(
                code not in _LANGUAGE_CODES for code in request.allowed_languages):
            raise InvalidArgument(
                "UNKNOWN_LANGUAGE", f"allowed_languages must be at most {MAX_DECODE_ALLOWED_LANGUAGES} Whisper codes",
                field="allowed_languages",
            )
        audio = window_samples(request.audio)
        if len(request.session_id) > MAX_SESSION_ID_CHARS:
            raise InvalidArgument(
                "INVALID_SESSION_ID", f"session_id is at most {MAX_SESSION_ID_CHARS} characters", field="session_id"
            )
        model = request.model or self.default_model
        if model not in self.engine.models:
            raise FailedPrecondition(
                "MODEL_NOT_LOADED", f"model {model!r} is not loaded on this worker ({', '.join(self.engine.models)})"
            )
        window = Window(
            audio=audio, prompt=request.prompt, language=request.language,
            hotwords=" ".join(hotwords),
            word_timestamps=request.word_timestamps,
            allowed_languages=tuple(request.allowed_languages),
        )
        return window, model

    async def decode(self, request: transcriber_pb2.DecodeRequest) -> transcriber_pb2.DecodeResponse:
        """Queue one window by priority and wait for its result.

        Raises:
            InvalidArgument / FailedPrecondition: see :meth:`window_from`.
            Unavailable: ``SHUTTING_DOWN``.
        """
        if self._stopping:
            raise Unavailable("SHUTTING_DOWN", "the worker is shutting down")
        window, model = self.window_from(request)
        if request.session_id:
            self._sessions[request.session_id] = time.monotonic()
        final = request.priority == transcriber_pb2.DECODE_PRIORITY_FINAL
        future = asyncio.get_running_loop().create_future()
        pending = _Pending((0 if final else 1, next(self._order)), window, model, future, time.monotonic())
        self.gate.enter()
        try:
            heapq.heappush(self._heap, pending)
            self._wake.set()
            return await future
        finally:
            self.gate.leave()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if not self._heap or len(self._running) >= self.parallel:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = heapq.heappop(self._heap)
            if first.future.done():  # the caller gave up
                continue
            batch = [first]
            skipped = []
            while self._heap and len(batch) < self.max_batch:
                item = heapq.heappop(self._heap)
                if item.future.done():
                    continue
                (batch if item.model == first.model else skipped).append(item)
            for item in skipped:
                heapq.heappush(self._heap, item)
            task = asyncio.create_task(self._decode_batch(loop, first.model, batch))
            self._running.add(task)
            task.add_done_callback(self._finished)
        if self._running:
            await asyncio.wait(self._running, timeout=30.0)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._wake.set()

    async def _decode_batch(self, loop: asyncio.AbstractEventLoop, model: str, items: list[_Pending]) -> None:
        started = time.monotonic()
        whisper = self.engine.models[model].model
        try:
            results = await loop.run_in_executor(
                self._executor, decode_windows, whisper, [p.window for p in items], self.beam_size,
                self.input_padding_seconds,
            )
        except Exception as exc:  # noqa: BLE001 - each caller gets the error (INTERNAL)
            log.exception("decode batch failed", extra={"batch_size": len(items)})
            for pending in items:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        elapsed = time.monotonic() - started
        self.windows_decoded += len(items)
        for pending, result in zip(items, results, strict=True):
            if pending.future.done():
                continue
            pending.future.set_result(
                transcriber_pb2.DecodeResponse(
                    words=result.words, text=result.text, language=result.language,
                    language_probability=result.language_probability,
                    queue_seconds=round(started - pending.queued_at, 4), decode_seconds=round(elapsed, 4),
                    batch_size=len(items), model=model, worker_id=self.worker_id,
                    input_seconds=result.input_seconds, fallback=result.fallback,
                )
            )


def probe_audio() -> np.ndarray:
    """The bundled capacity probe (float32 16 kHz mono)."""
    with wave.open(str(PROBE_WAV)) as w:
        return decode_samples(w.readframes(w.getnframes()), AudioEncoding.LINEAR16)


def capacity_from_cost(cost_seconds: float, target_period_s: float, utilization: float, max_batch: int) -> int:
    """Sessions a worker carries when one window costs ``cost_seconds`` of its time.

    ``floor(target_period_s x utilization / cost_seconds) x max_batch``, at least 1 (a worker that
    serves Decode at all carries one session; slower than that is still the best it can do).
    ``cost_seconds`` is the device time per window: with parallel replicas, the wall time of
    ``parallel`` concurrent decodes divided by ``parallel`` (see :func:`measure_capacity`).
    """
    if cost_seconds <= 0:
        return max_batch
    return max(1, int(target_period_s * utilization / cost_seconds)) * max_batch


def measure_capacity(scheduler: DecodeScheduler, target_period_s: float, utilization: float, repeats: int = 3) -> int:
    """Decode the probe as the worker serves it and set the capacity (blocking; at start-up).

    Each round decodes ``parallel`` batches of ``max_batch`` probe windows at once (one per
    replica, from as many threads); ``scheduler.window_cost_seconds`` is the median round's wall
    time divided by ``parallel`` (device seconds per batch), and ``scheduler.capacity`` follows
    from :func:`capacity_from_cost`. Returns the capacity.
    """
    from concurrent.futures import ThreadPoolExecutor as Pool

    whisper = scheduler.engine.models[scheduler.default_model].model
    audio = probe_audio()
    windows = [Window(audio=audio, prompt="", language="en") for _ in range(scheduler.max_batch)]

    def one(_: int) -> None:
        decode_windows(whisper, windows, scheduler.beam_size, scheduler.input_padding_seconds)

    costs = []
    with Pool(scheduler.parallel) as pool:
        list(pool.map(one, range(scheduler.parallel)))  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(one, range(scheduler.parallel)))
            costs.append((time.perf_counter() - started) / scheduler.parallel)
    scheduler.window_cost_seconds = statistics.median(costs)
    scheduler.capacity = capacity_from_cost(scheduler.window_cost_seconds, target_period_s, utilization,
                                            scheduler.max_batch)
    log.info(
        "realtime capacity measured",
        extra={"window_cost_seconds": round(scheduler.window_cost_seconds, 3), "capacity": scheduler.capacity,
               "max_batch": scheduler.max_batch, "parallel": scheduler.parallel,
               "probe_seconds": round(len(audio) / WHISPER_SAMPLE_RATE, 2)},
    )
    return scheduler.capacity


async def start_decoder(settings, engine, registry) -> DecodeScheduler:  # noqa: ANN001 - Settings, Engine, ModelRegistry
    """Make sure the realtime model is resident, measure the capacity and start the scheduler.

    The realtime model is ``settings.realtime_model`` or, when empty, the first of ``settings.models``;
    it is loaded here when it is not one of the batch models. Windows decoded together: the
    device decision's realtime capacity (memory; 1 on CPU) capped by ``realtime_max_batch``.

    Raises:
        scribe_libs.models.ModelUnavailable / RuntimeError: the realtime model cannot be loaded.
    """
    name = settings.realtime_model or settings.models[0]
    if name not in engine.models:
        path = await registry.resolve(name)
        await asyncio.to_thread(engine.load, name, path)
    fitted = getattr(getattr(engine, "decision", None), "realtime_capacity", 0) or settings.realtime_max_batch
    padding = settings.realtime_input_padding_seconds
    scheduler = DecodeScheduler(
        engine, name, settings.worker_id, max_batch=min(settings.realtime_max_batch, fitted),
        beam_size=settings.realtime_beam_size, input_padding_seconds=padding if padding >= 0 else None,
        gate=engine.realtime_gate, parallel=getattr(getattr(engine, "loader", None), "num_workers", 1),
    )
    if settings.realtime_capacity > 0:
        scheduler.capacity = settings.realtime_capacity
    else:
        await asyncio.to_thread(
            measure_capacity, scheduler, settings.realtime_target_period_seconds, settings.realtime_utilization
        )
    scheduler.start()
    return scheduler


async def serve_decode(
    scheduler: DecodeScheduler | None, request: transcriber_pb2.DecodeRequest
) -> transcriber_pb2.DecodeResponse:
    """The Decode RPC body: UNAVAILABLE until the realtime model is loaded."""
    if scheduler is None:
        raise Unavailable("NOT_READY", "the realtime model is not loaded yet")
    started = time.monotonic()
    try:
        return await scheduler.decode(request)
    finally:
        metrics.decode_latency.record(time.monotonic() - started, {"model": request.model})
