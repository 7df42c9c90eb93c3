"""``Transcriber.Decode``: low-latency decoding of streaming windows, batched across sessions.

The stream gateway sends one window (<= 30 s of 16 kHz audio) per call; many sessions call at
once. :class:`DecodeBatcher` collects the calls that are waiting (up to ``realtime_max_batch``,
waiting at most ``realtime_batch_wait_ms`` after the first) and decodes them together with
:func:`decode_windows`: one CTranslate2 ``encode`` over the stacked features, one ``generate``
with a prompt per window, one ``align`` for word times.

How a window is decoded (DESIGN.md, "Data flow (streaming)"):

- greedy search at temperature 0, no temperature fallback (a fallback on a window with a pause
  cost 7-28 s here) and no VAD (the gateway ran Silero already and only sends speech);
- the gateway's committed text is the prompt (``<|startofprev|>`` context, as faster-whisper's
  ``initial_prompt``), hotwords before it as faster-whisper does;
- a window the model scores as no speech (``no_speech_prob > 0.6`` and ``avg_logprob < -1``,
  faster-whisper's defaults ``no_speech_threshold``/``log_prob_threshold``) yields no words;
- word times come from the model's cross-attention alignment (``find_alignment``, the same as
  faster-whisper's ``word_timestamps``) without its segment-boundary heuristics, clamped to the
  window.

Why this runs ahead of batch jobs: batch decoding (engine.py) calls the same CTranslate2 model in
many short calls (one encode/generate/align per batch of chunks) from the default thread pool;
Decode batches run on their own single thread, so a Decode call waits at most for the model call
in progress (CTranslate2 queues calls on a replica in arrival order), never for a whole batch
job. The realtime model is shared with the batch model of the same name (one copy in memory).

CTranslate2 requires ``<|startoftranscript|>`` at the same position in every prompt of a
``generate`` batch, so windows are grouped by (language, has context) and the contexts within a
group are cut to the shortest one (keeping the most recent tokens).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from scribe.v1 import transcriber_pb2, transcript_pb2
from scribe_libs import metrics
from scribe_libs.errors import FailedPrecondition, InvalidArgument, Unavailable

log = logging.getLogger(__name__)

#: Whisper's input rate (Hz) and window (s) (openai/whisper audio.py SAMPLE_RATE, CHUNK_LENGTH).
SAMPLE_RATE = 16000
MAX_WINDOW_SECONDS = 30.0
#: Mel frames per second of audio (hop length 160 at 16 kHz).
FRAMES_PER_SECOND = 100
#: faster-whisper's defaults for skipping a silent window (TranscriptionOptions).
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
#: faster-whisper's default punctuation merged into neighbouring words.
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass
class Window:
    """One window to decode.

    Attributes:
        audio: float32 mono 16 kHz samples, at most 30 s.
        prompt: Previous text (context), may be empty.
        language: ISO 639-1 code; empty detects it (multilingual models) or English (``.en``).
        hotwords: Space-joined terms to bias towards, may be empty.
        word_timestamps: Align words (else only the text is returned).
    """

    audio: np.ndarray
    prompt: str = ""
    language: str = ""
    hotwords: str = ""
    word_timestamps: bool = True


@dataclass
class WindowResult:
    """What :func:`decode_windows` returns per window (times relative to the window start, s)."""

    text: str
    words: list[transcript_pb2.Word] = field(default_factory=list)
    language: str = ""
    language_probability: float = 0.0


def pcm16_to_float(data: bytes) -> np.ndarray:
    """LINEAR16 bytes (little-endian) to float32 in [-1, 1).

    Raises:
        InvalidArgument: ``INVALID_AUDIO`` for an odd byte count, empty audio or more than 30 s.
    """
    if len(data) == 0 or len(data) % 2:
        raise InvalidArgument("INVALID_AUDIO", "audio must be a non-empty LINEAR16 byte string", field="audio")
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if len(samples) > MAX_WINDOW_SECONDS * SAMPLE_RATE:
        raise InvalidArgument(
            "WINDOW_TOO_LONG", f"a window is at most {MAX_WINDOW_SECONDS:.0f} s (Whisper's window)", field="audio"
        )
    return samples


def _features(model, audio: np.ndarray) -> np.ndarray:  # noqa: ANN001 - faster_whisper.WhisperModel
    from faster_whisper.audio import pad_or_trim

    return pad_or_trim(model.feature_extractor(audio)[..., :-1])


def decode_windows(model, windows: Sequence[Window], beam_size: int = 1) -> list[WindowResult]:  # noqa: ANN001
    """Decode windows together (blocking; call from a worker thread).

    Args:
        model: A loaded ``faster_whisper.WhisperModel``.
        windows: The windows; decoded in one batch per (language, has context) group.
        beam_size: 1 = greedy (the streaming default: latency over a rarely better beam).

    Returns:
        One result per window, in order.
    """
    from faster_whisper.tokenizer import Tokenizer

    multilingual = model.model.is_multilingual
    languages: list[str] = [w.language or ("" if multilingual else "en") for w in windows]
    probabilities = [1.0 if lang else 0.0 for lang in languages]
    if any(not lang for lang in languages):
        # Detect per window on its own encoder output (multilingual model, language "auto").
        for i, w in enumerate(windows):
            if languages[i]:
                continue
            encoded = model.encode(_features(model, w.audio))
            lang_token, prob = model.model.detect_language(encoded)[0][0]
            languages[i], probabilities[i] = lang_token[2:-2], float(prob)
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
        prompts = []
        for i in members:
            context = contexts[i][len(contexts[i]) - shortest :] if shortest else []
            prompt = [tok.sot_prev, *context] if context else []
            prompts.append([*prompt, *tok.sot_sequence, tok.no_timestamps])
        for i, result in zip(members, _decode_group(model, tok, [windows[i] for i in members], prompts, beam_size),
                             strict=True):
            result.language, result.language_probability = lang, probabilities[i]
            results[i] = result
    return [r for r in results if r is not None]


def _decode_group(model, tok, windows: list[Window], prompts: list[list[int]], beam_size: int) -> list[WindowResult]:  # noqa: ANN001
    from faster_whisper.transcribe import get_suppressed_tokens, merge_punctuations

    encoded = model.encode(np.stack([_features(model, w.audio) for w in windows]))
    outputs = model.model.generate(
        encoded,
        prompts,
        beam_size=beam_size,
        max_length=model.max_length,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tok, [-1]),
        return_scores=True,
        return_no_speech_prob=True,
    )
    tokens: list[list[int]] = []
    for output in outputs:
        ids = output.sequences_ids[0]
        avg_logprob = output.scores[0] * len(ids) / (len(ids) + 1)
        silent = output.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD
        tokens.append([] if silent else [t for t in ids if t < tok.eot])
    results = [WindowResult(text=tok.decode(t).strip()) for t in tokens]
    aligned = [i for i, w in enumerate(windows) if w.word_timestamps and tokens[i]]
    if aligned:
        all_frames = [max(min(math.ceil(len(w.audio) / SAMPLE_RATE * FRAMES_PER_SECOND), 3000), 100) for w in windows]
        frames = [all_frames[i] for i in aligned]
        if len(aligned) == len(windows):
            alignments = model.find_alignment(tok, [tokens[i] for i in aligned], encoded, frames)
        else:
            # align() runs on the whole encoder batch; the windows without text get a one-word
            # placeholder whose alignment is thrown away.
            by_index = dict(zip(aligned, frames, strict=True))
            placeholder = tok.encode(" a")
            alignments_all = model.find_alignment(
                tok, [tokens[i] if i in by_index else placeholder for i in range(len(windows))], encoded,
                all_frames,
            )
            alignments = [alignments_all[i] for i in aligned]
        for i, alignment in zip(aligned, alignments, strict=True):
            merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
            duration = len(windows[i].audio) / SAMPLE_RATE
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
    return results


@dataclass
class _Pending:
    window: Window
    model: str
    future: asyncio.Future
    queued_at: float


class DecodeBatcher:
    """Serves Decode calls: collects concurrent windows and decodes them in batches.

    Args:
        engine: The transcriber's :class:`~scribe_transcriber.engine.Engine` (models by name).
        default_model: The realtime model (used when a request names none).
        worker_id: Reported in responses.
        max_batch: Windows decoded together at most (``realtime_max_batch``).
        batch_wait_s: After the first window arrives, wait this long for more (``realtime_batch_wait_ms``).
        beam_size: Beam width (1 = greedy).
    """

    def __init__(
        self,
        engine,  # noqa: ANN001 - scribe_transcriber.engine.Engine
        default_model: str,
        worker_id: str,
        max_batch: int = 4,
        batch_wait_s: float = 0.01,
        beam_size: int = 1,
    ):
        self.engine = engine
        self.default_model = default_model
        self.worker_id = worker_id
        self.max_batch = max(max_batch, 1)
        self.batch_wait_s = batch_wait_s
        self.beam_size = max(beam_size, 1)
        self.in_flight = 0
        """Windows queued or decoding now."""
        self.windows_decoded = 0
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self._task: asyncio.Task | None = None

    @property
    def capacity(self) -> int:
        """Windows decoded at once (the profile's ``realtime_capacity``)."""
        return self.max_batch

    def start(self) -> None:
        """Start the batching loop (on the running event loop)."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop after the batch in hand; fail what is still queued with UNAVAILABLE."""
        self._queue.put_nowait(None)
        if self._task is not None:
            _, pending = await asyncio.wait([self._task], timeout=30.0)
            for task in pending:
                task.cancel()
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item.future.done():
                item.future.set_exception(Unavailable("SHUTTING_DOWN", "the worker is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def decode(self, request: transcriber_pb2.DecodeRequest) -> transcriber_pb2.DecodeResponse:
        """Decode one window (queued into the next batch).

        Raises:
            InvalidArgument: bad audio (see :func:`pcm16_to_float`).
            FailedPrecondition: ``MODEL_NOT_LOADED`` when the model is not resident here.
        """
        audio = pcm16_to_float(request.audio)
        model = request.model or self.default_model
        if model not in self.engine.models:
            raise FailedPrecondition(
                "MODEL_NOT_LOADED", f"model {model!r} is not loaded on this worker ({', '.join(self.engine.models)})"
            )
        window = Window(
            audio=audio, prompt=request.prompt, language=request.language,
            hotwords=" ".join(h.strip() for h in request.hotwords if h.strip()),
            word_timestamps=request.word_timestamps,
        )
        future = asyncio.get_running_loop().create_future()
        self.in_flight += 1
        try:
            self._queue.put_nowait(_Pending(window, model, future, time.monotonic()))
            return await future
        finally:
            self.in_flight -= 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = loop.time() + self.batch_wait_s
            stop = False
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    if timeout <= 0:
                        item = self._queue.get_nowait()
                    else:
                        item = await asyncio.wait_for(self._queue.get(), timeout)
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            batch = [p for p in batch if not p.future.done()]  # callers that gave up
            by_model: dict[str, list[_Pending]] = defaultdict(list)
            for pending in batch:
                by_model[pending.model].append(pending)
            for model, items in by_model.items():
                await self._decode_batch(loop, model, items)
            if stop:
                return

    async def _decode_batch(self, loop: asyncio.AbstractEventLoop, model: str, items: list[_Pending]) -> None:
        started = time.monotonic()
        whisper = self.engine.models[model].model
        try:
            results = await loop.run_in_executor(
                self._executor, decode_windows, whisper, [p.window for p in items], self.beam_size
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
                )
            )
        log.debug("decoded batch", extra={"batch_size": len(items), "seconds": round(elapsed, 3)})


async def start_decoder(settings, engine, registry) -> DecodeBatcher:  # noqa: ANN001 - Settings, Engine, ModelRegistry
    """Make sure the realtime model is resident and start the batcher.

    The realtime model is ``settings.realtime_model`` or, when empty, the first of ``settings.models``;
    it is loaded here when it is not one of the batch models.

    Raises:
        scribe_libs.models.ModelUnavailable / RuntimeError: the realtime model cannot be loaded.
    """
    name = settings.realtime_model or settings.models[0]
    if name not in engine.models:
        path = await registry.resolve(name)
        await asyncio.to_thread(engine.load, name, path)
    batcher = DecodeBatcher(
        engine, name, settings.worker_id, max_batch=settings.realtime_max_batch,
        batch_wait_s=settings.realtime_batch_wait_ms / 1000, beam_size=settings.realtime_beam_size,
    )
    batcher.start()
    return batcher


async def serve_decode(
    batcher: DecodeBatcher | None, request: transcriber_pb2.DecodeRequest
) -> transcriber_pb2.DecodeResponse:
    """The Decode RPC body: UNAVAILABLE until the realtime model is loaded."""
    if batcher is None:
        raise Unavailable("NOT_READY", "the realtime model is not loaded yet")
    started = time.monotonic()
    try:
        return await batcher.decode(request)
    finally:
        metrics.decode_latency.record(time.monotonic() - started, {"model": request.model})
