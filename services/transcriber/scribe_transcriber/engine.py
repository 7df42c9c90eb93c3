"""faster-whisper models on one device: loaded and measured once, decoding batch jobs in a thread.

:class:`ModelLoader` loads a model at a compute type and measures the memory it takes (CPU:
resident set size before/after; CUDA: NVML used memory before/after); it is the ``measure``
callback of :func:`scribe_libs.devices.decide` at start-up, so the decision works on real numbers.
:class:`Engine` holds the models of the decision in effect.

Batch jobs go through faster-whisper's ``BatchedInferencePipeline`` (Silero VAD chunks decoded
``batch_size`` at a time; on 2 CPU cores this measured ~10x faster than sequential decoding).
The pipeline yields segments batch by batch; between them the engine reports progress and
checks the cancel flag, so a cancel stops the job at the next chunk boundary.

Out of memory during a job (CTranslate2 raises ``RuntimeError: CUDA failed with error out of
memory``): the engine takes the next step down (:func:`scribe_libs.devices.oom_downgrade`:
lower precision, then a smaller model), reloads and runs the job again, at most
``MAX_OOM_DOWNGRADES`` (2) times; then the job fails with :class:`OutOfMemory`
(``FAILED_PRECONDITION``, reason ``OUT_OF_MEMORY``), which the worker records as FAILED.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from scribe.v1 import transcript_pb2
from scribe_libs import metrics
from scribe_libs.audio import WHISPER_SAMPLE_RATE, decode_for_whisper
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
from scribe_transcriber.decode import RealtimeGate

log = logging.getLogger(__name__)

#: Whisper's window, seconds (openai/whisper audio.py CHUNK_LENGTH). With VAD off, audio is cut
#: into windows of this length (the batched pipeline needs clip boundaries).
CHUNK_SECONDS = 30.0
DEFAULT_BEAM_SIZE = 5
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
    """

    def __init__(self, loader: ModelLoader, decision: Decision, requested: Iterable[str] = ()):
        self.loader = loader
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

        On out-of-memory: step down (:func:`oom_downgrade`), reload, decode again; at most
        ``MAX_OOM_DOWNGRADES`` times per job.

        Args:
            audio_path: Any file PyAV decodes.
            config: Validated recognition config (model set).
            batch_size: Chunks per batch.
            on_progress: Called with (processed seconds, total seconds) after each segment.
            cancelled: When set, decoding stops at the next chunk boundary.

        Returns:
            (transcript, was_cancelled). A cancelled transcript holds what was decoded so far.
            ``transcript.model`` and ``compute_type`` are what really ran.

        Raises:
            scribe_libs.errors.InvalidArgument: UNDECODABLE_AUDIO.
            FailedPrecondition: ``MODEL_NOT_LOADED``; :class:`OutOfMemory` (``OUT_OF_MEMORY``)
                after the allowed downgrades.
        """
        audio = decode_for_whisper(audio_path)
        attempt = 0
        while True:
            with self._lock:
                decision = self.decision
                name = self.model_for(config.model)
                loaded = self.models[name]
            try:
                return self._decode(loaded, decision, audio, config, batch_size, on_progress, cancelled)
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
        audio: Any,
        config: transcript_pb2.RecognitionConfig,
        batch_size: int,
        on_progress: Callable[[float, float], None],
        cancelled: threading.Event,
    ) -> tuple[transcript_pb2.Transcript, bool]:
        started = time.monotonic()
        duration = len(audio) / WHISPER_SAMPLE_RATE
        vad = config.vad_filter if config.HasField("vad_filter") else True
        kwargs: dict = dict(
            language=config.language or None,
            beam_size=config.beam_size or DEFAULT_BEAM_SIZE,
            word_timestamps=config.word_timestamps,
            initial_prompt=config.initial_prompt or None,
            hotwords=" ".join(config.hotwords) or None,
            batch_size=max(batch_size, 1),
            vad_filter=vad,
        )
        if not vad:
            kwargs["clip_timestamps"] = [
                {"start": t, "end": min(t + CHUNK_SECONDS, duration)} for t in _frange(0.0, duration, CHUNK_SECONDS)
            ]
        segments, info = loaded.pipeline.transcribe(audio, **kwargs)
        transcript = transcript_pb2.Transcript(
            language=info.language,
            language_probability=float(info.language_probability or 0.0),
            duration=duration,
            model=loaded.name,
            compute_type=decision.compute_type_effective,
            device=decision.device,
        )
        was_cancelled = False
        iterator = iter(segments)
        for index in itertools.count():
            # Live windows first: each next() runs one batch of model calls.
            self.realtime_gate.wait_clear()
            segment = next(iterator, None)
            if segment is None:
                break
            transcript.segments.append(
                transcript_pb2.Segment(
                    id=index,
                    start=segment.start,
                    end=segment.end,
                    text=segment.text.strip(),
                    avg_logprob=segment.avg_logprob,
                    no_speech_prob=segment.no_speech_prob,
                    compression_ratio=segment.compression_ratio,
                    words=[
                        transcript_pb2.Word(start=w.start, end=w.end, word=w.word, probability=w.probability)
                        for w in (segment.words or [])
                    ],
                )
            )
            on_progress(min(segment.end, duration), duration)
            if cancelled.is_set():
                was_cancelled = True
                break
        transcript.processing_seconds = time.monotonic() - started
        return transcript, was_cancelled


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
